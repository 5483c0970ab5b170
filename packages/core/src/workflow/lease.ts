/**
 * The migration's lease in a deployment. Locally one command claims the migration for its whole
 * execution (runner.ts). In AWS no process lives that long, so each task holds the lease (the store's
 * `claim`: a DynamoDB item with a TTL, renewed while held) for as long as it runs. Step Functions does
 * not stop a Lambda invocation or a Fargate task when it stops waiting for it (an execution stopped by
 * Slack's rollback, a state's timeout): such a task, or a crashed one whose lease has not lapsed yet,
 * keeps the next execution's task out (MigrationBusyError, which the state machine tries again: see
 * BUSY_RETRY in states.ts) instead of both acting on the migration at once. No I/O but the store's.
 */
import { MigrationBusyError } from '../errors';
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

/** The store's calls that change something: refused to a task whose lease was lost. */
const STORE_WRITES = new Set<string>([
  'create',
  'put',
  'updateSecrets',
  'removeSecrets',
  'correlate',
  'putTaskToken',
  'takeTaskToken',
  'putPlan',
  'appendLag',
]);

/**
 * `store`, but every write throws MigrationBusyError once `lost()` says why the lease is gone: the
 * task that held it changes nothing more (every step records itself before it acts: the freeze, the
 * switch, a drop), and the state machine tries it again once the new holder is done.
 */
export function leaseGuardedStore<S extends MigrationStore>(store: S, id: string, lost: () => string | undefined): S {
  return new Proxy(store, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver);
      if (typeof value !== 'function' || typeof property !== 'string' || !STORE_WRITES.has(property)) return value;
      return (...args: unknown[]) => {
        const why = lost();
        if (why !== undefined)
          throw new MigrationBusyError(`${why}: this task changes nothing more of migration ${id}`, {
            migrationId: id,
            hint: `another task or process holds the migration now; \`pgferry status --id ${id}\` shows where it stands`,
          });
        return value.apply(target, args);
      };
    },
  });
}

/**
 * Runs `work` holding migration `input.migrationId`'s lease as `holder` (a person reads it in the
 * conflict's message), when the task takes one: another holder's live lease throws MigrationBusyError
 * before anything is done. Released before this returns or throws, so the next state, entered once
 * the result is sent, finds it free; a release that fails is only logged (the lease lapses by itself).
 * Released at once when `signal` aborts: the worker's execution is gone (its heartbeat refused) or out
 * of reach (heartbeats failing), its work is stopping, and what it still does must not keep that
 * execution's rollback out for hours. `work` is given the store to use: one that refuses every write
 * once the lease is lost (it lapsed while its renewals failed, and another holder took it), when
 * `options.onLost` is also told.
 */
export async function withTaskLease<T, S extends MigrationStore>(
  store: S,
  task: TaskName,
  input: TaskInput,
  holder: string,
  work: (store: S) => Promise<T>,
  options: { log: (message: string) => void; signal?: AbortSignal; onLost?: (message: string) => void },
): Promise<T> {
  let lost: string | undefined;
  const onLost = (message: string) => {
    lost = message;
    options.log(`${message}: this task changes nothing more of migration ${input.migrationId}`);
    options.onLost?.(message);
  };
  const claimed = takesLease(task, input) ? await store.claim?.(input.migrationId, holder, { onLost }) : undefined;
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
    return await work(claimed ? leaseGuardedStore(store, input.migrationId, () => lost) : store);
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    await release();
  }
}
