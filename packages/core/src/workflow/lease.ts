/**
 * The migration's lease in a deployment. Locally one command claims the migration for its whole
 * execution (runner.ts). In AWS no process lives that long, so each task holds the lease (the store's
 * `claim`: a DynamoDB item with a TTL, renewed while held) for as long as it runs. Step Functions does
 * not stop a Lambda invocation or a Fargate task when it stops waiting for it (an execution stopped by
 * Slack's rollback, a state's timeout): such a task, or a crashed one whose lease has not lapsed yet,
 * keeps the next execution's task out (MigrationBusyError, which the state machine tries again: see
 * BUSY_RETRY in states.ts) instead of both acting on the migration at once. No I/O but the store's.
 */
import type { MigrationStore } from '../model';
import { IGNORED_ERRORS } from './failure';
import { type TaskInput, type TaskName, type TaskSpec, WORKFLOW_TASKS } from './tasks';

/** How long a lease lasts unless its holder renews it (the store renews it every third of that). */
export const LEASE_SECONDS = 60;

/**
 * Whether `task` takes the lease: not inside the bulk load (its coordinator holds it for the whole
 * load), and not "Record failure" of a failure the policy leaves alone (another actor has the
 * migration: nothing is recorded, and waiting for that actor's lease would only delay the stop).
 */
export function takesLease(task: TaskName, input: TaskInput): boolean {
  if ((WORKFLOW_TASKS[task] as TaskSpec).insideLoad) return false;
  if (task === 'recordFailure') {
    const error = (input.error as { Error?: unknown } | undefined)?.Error;
    return !(typeof error === 'string' && IGNORED_ERRORS.includes(error));
  }
  return true;
}

/**
 * Runs `work` holding migration `input.migrationId`'s lease as `holder` (a person reads it in the
 * conflict's message), when the task takes one: another holder's live lease throws MigrationBusyError
 * before anything is done. Released before this returns or throws, so the next state, entered once
 * the result is sent, finds it free; a release that fails is only logged (the lease lapses by itself).
 * Released at once when `signal` aborts: the worker's execution is gone (its heartbeat refused) or out
 * of reach (heartbeats failing), its work is stopping, and what it still does must not keep that
 * execution's rollback out for hours.
 */
export async function withTaskLease<T>(
  store: Pick<MigrationStore, 'claim'>,
  task: TaskName,
  input: TaskInput,
  holder: string,
  work: () => Promise<T>,
  options: { log: (message: string) => void; signal?: AbortSignal },
): Promise<T> {
  const claimed = takesLease(task, input) ? await store.claim?.(input.migrationId, holder) : undefined;
  let released: Promise<void> | undefined;
  const release = () =>
    (released ??= (claimed?.() ?? Promise.resolve()).catch((err: unknown) =>
      options.log(
        `warning: the lease on migration ${input.migrationId} was not released (${(err as Error)?.message ?? err}); it lapses by itself`,
      ),
    ));
  const onAbort = () => {
    options.log(`the lease on migration ${input.migrationId} is given up: its execution is gone (or out of reach)`);
    void release();
  };
  if (claimed && options.signal) {
    if (options.signal.aborted) onAbort();
    else options.signal.addEventListener('abort', onAbort, { once: true });
  }
  try {
    return await work();
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    await release();
  }
}
