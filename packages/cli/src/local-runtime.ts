/**
 * `migrate`, `resume`, `cutover` and `rollback` as executions of the workflow definition
 * (local-workflow.ts), each task run in-process by `runWorkflowTask`, the very function the Lambda
 * handlers and the worker call. One session (two pools) serves a whole execution. The execution's
 * history, state by state, is kept next to the migration's state for `pgferry status`.
 */
import { chmodSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  BULK_LOAD_STATES,
  errorMessage,
  type GateState,
  MIGRATION_ID,
  type MigrationState,
  PgferryError,
  STATE,
  TASK_TIMEOUT_SECONDS,
  type TaskInput,
  type TaskName,
  type TaskOutput,
  WORKFLOW_TASKS,
  type WorkflowInput,
} from '@pgferry/core';
import { onSignalStop, openSession, runWorkflowTask, type Session, sleep, type TaskDeps } from '@pgferry/postgres';
import { LocalTaskCallbacks } from './local-callbacks';
import type { ExecutionOutcome, HistoryEntry } from './local-workflow';
import type { Runtime } from './runner';
import { makeDirectory } from './store';

/** What `pgferry status` shows of the last execution. */
export interface ExecutionRecord {
  migrationId: string;
  /** Which command started it. */
  command: string;
  input: WorkflowInput;
  startedAt: string;
  endedAt?: string;
  /** `awaiting-approval`: stopped at "Await cutover approval" (locally, `pgferry cutover` goes on). */
  status: 'running' | 'awaiting-approval' | ExecutionOutcome['status'];
  /** Where a failed or stopped execution ended, and why. */
  lastState?: string;
  error?: string;
  /** Oldest first; at most HISTORY_KEPT (the catch-up loop repeats its states). */
  states: HistoryEntry[];
  /**
   * Where a suspended execution waits (status `awaiting-approval`): the callback state, its task
   * token (kept in the store for whoever approves) and the input the state was entered with. `pgferry
   * cutover` completes the token and continues this execution from here.
   */
  waiting?: { state: string; task: TaskName; token: string; since: string; input: unknown };
  /** The commands that continued this execution after it waited (`pgferry cutover`). */
  continued?: { command: string; at: string }[];
  /**
   * The executions this one went on in ("Continue in a new execution", before Step Functions' history
   * limit; locally in the same process): `states` runs on through them.
   */
  continuedIn?: { name: string; number: number; at: string }[];
}

/** States kept per execution: a long catch-up repeats "Wait", "Check lag", "Caught up?" every sample. */
export const HISTORY_KEPT = 300;
/** The history is written at most this often (and when the execution ends). */
const FLUSH_EVERY_MS = 1000;
/**
 * Callback states an event completes while the execution runs on (not a person): locally the execution
 * waits in them for the completion instead of stopping there.
 */
const EVENT_COMPLETED: ReadonlySet<TaskName> = new Set(['awaitDumpUpload']);
const EVENT_POLL_MS = 200;

export function executionFile(stateDir: string, id: string): string {
  if (!MIGRATION_ID.test(id)) throw new PgferryError(`not a migration id: ${id}`, { field: '--id' });
  // Not `.json`: the file store lists every `<id>.json` as a migration.
  return join(stateDir, `${id}.execution`);
}

export function readExecution(stateDir: string, id: string): ExecutionRecord | undefined {
  try {
    return JSON.parse(readFileSync(executionFile(stateDir, id), 'utf8')) as ExecutionRecord;
  } catch {
    return undefined;
  }
}

export function writeExecution(stateDir: string, record: ExecutionRecord) {
  const file = executionFile(stateDir, record.migrationId);
  makeDirectory(stateDir);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}

/** What an execution ended with, for the command that started it. */
export interface LocalResult {
  outcome: ExecutionOutcome;
  state: MigrationState;
  /** The error a task threw that ended the execution (its class gives the exit code). */
  error?: unknown;
}

/**
 * Run one execution of the workflow for a stored (and claimed) migration. Callback states run with a
 * task token of the local registry (local-callbacks.ts): a worker task completes its own token, as the
 * Fargate worker does, and the state's result is read from the completion. A state whose token nobody
 * has completed when its task returns ("Await cutover approval": a person completes it) suspends the
 * execution: it is recorded as waiting there, with its token and input, and the command returns.
 * `continueFrom` (`pgferry cutover`, the token completed) continues that same execution at that state.
 */
export async function executeLocally(
  rt: Runtime,
  input: WorkflowInput,
  command: string,
  continueFrom?: ExecutionRecord,
): Promise<LocalResult> {
  const { runLocalWorkflow } = await import('./local-workflow');
  const id = input.migrationId;
  const registry = new LocalTaskCallbacks(rt.stateDir);
  const waited = continueFrom?.waiting;
  // A new execution: tokens of earlier ones complete nothing any more.
  if (!waited) registry.clear(id);
  // Opened before the execution, as the commands always did: servers that do not answer fail the
  // command with nothing recorded, instead of a task failure the failure policy would act on.
  const session: Session = await openSession(rt.store, id, {
    listener: rt.events,
    artifactDir: join(rt.stateDir, 'artifacts', id),
    faults: rt.faults,
    connectionSwitch: rt.connectionSwitch,
    dumpStore: rt.dumpStore,
  });
  const thrown = new Map<string, unknown>();
  const key = (name: string, message: string) => `${name}\u0000${message}`;
  const deps: TaskDeps = {
    store: rt.store,
    log: (m) => rt.events.log(m),
    phase: (p, e, s) => rt.events.phase(p, e, s),
    progress: rt.events.progress,
    faults: rt.faults,
    session: async () => session,
    thrown: (e) => thrown.get(key(e.Error, e.Cause)),
    awaitDumpUpload: rt.awaitDumpUpload,
  };
  const record: ExecutionRecord = continueFrom
    ? {
        ...continueFrom,
        status: 'running',
        endedAt: undefined,
        waiting: undefined,
        continued: [...(continueFrom.continued ?? []), { command, at: new Date().toISOString() }],
      }
    : { migrationId: id, command, input, startedAt: new Date().toISOString(), status: 'running', states: [] };
  let flushed = 0;
  const flush = (force = false) => {
    if (!force && Date.now() - flushed < FLUSH_EVERY_MS) return;
    flushed = Date.now();
    try {
      writeExecution(rt.stateDir, record);
    } catch (err) {
      rt.events.log(`warning: the execution history could not be written: ${errorMessage(err)}`);
    }
  };
  flush(true);
  let suspended: { task: TaskName; token: string } | undefined;
  /** The state's result, from its token's completion (as Step Functions hands it on); undefined: nobody completed it. */
  const completed = (token: string, caught: unknown): TaskOutput | undefined => {
    const c = registry.result(token);
    if (!c) return undefined;
    if (c.status === 'succeeded') return c.output as TaskOutput;
    // The error as thrown (its class gives the exit code), or as the completion names it.
    const err = caught ?? thrown.get(key(c.error, c.cause)) ?? Object.assign(new Error(c.cause), { name: c.error });
    throw err;
  };
  const callbackTask = async (task: TaskName, taskInput: TaskInput): Promise<TaskOutput> => {
    // The execution continued: the state it waited in answers from the token someone completed.
    if (waited && task === waited.task && !resumed) {
      resumed = true;
      const output = completed(waited.token, undefined);
      if (output) return output;
      throw new PgferryError(`the approval of migration ${id} was not given: its task token is not completed`, {
        migrationId: id,
      });
    }
    const token = LocalTaskCallbacks.mint(id, task);
    let caught: unknown;
    try {
      // A worker task completes its token itself (runWorkflowTask with callbacks); "Await cutover
      // approval" files it in the store for whoever approves.
      await runWorkflowTask(task, { ...taskInput, taskToken: token }, { ...deps, callbacks: registry });
    } catch (err) {
      caught = err;
      if (err instanceof Error) thrown.set(key(err.name, err.message), err);
    }
    let output = completed(token, caught);
    if (output) return output;
    if (caught) throw caught;
    if (EVENT_COMPLETED.has(task)) {
      // An event completes it while the execution goes on (the dump's S3 event): wait for it, until
      // the execution ends another way (the Parallel it is in failed) or the state's timeout.
      const until = Date.now() + TASK_TIMEOUT_SECONDS[task] * 1000;
      while (!ended && Date.now() < until) {
        await sleep(EVENT_POLL_MS);
        output = completed(token, undefined);
        if (output) return output;
      }
      throw Object.assign(new Error(`no event completed "${WORKFLOW_TASKS[task].state}"`), { name: 'States.Timeout' });
    }
    // Nobody completed it yet: a person will. Locally the execution stops here and is continued later.
    suspended = { task, token };
    run.abort();
    return { summary: 'waiting for its task token to be completed' };
  };
  let resumed = false;
  const run = runLocalWorkflow(
    input,
    async (task, taskInput: TaskInput) => {
      if (task === 'checkLag') {
        // Step Functions waits whole seconds between samples; locally the gate's own interval (100 ms
        // while there is nothing to catch up) is kept: the Wait state is 0 and the pause is here.
        const gate = taskInput.gate as GateState | undefined;
        const waitMs = (gate?.memory as { nextWaitMs?: number } | undefined)?.nextWaitMs;
        if (waitMs) await sleep(waitMs);
      }
      // "Provision target" stays inline: locally there is no target to provision.
      if ((WORKFLOW_TASKS[task] as { callback?: boolean }).callback && task !== 'provisionTarget')
        return callbackTask(task, taskInput);
      try {
        return await runWorkflowTask(task, taskInput, deps);
      } catch (err) {
        if (err instanceof Error) thrown.set(key(err.name, err.message), err);
        throw err;
      }
    },
    {
      // The coordinator records its plan in the same process: the branch beside it polls quickly.
      waitMs: { [STATE.waitSample]: 0, [STATE.bake]: 0, [BULK_LOAD_STATES.wait]: 200 },
      startAt: waited && { state: waited.state, input: waited.input },
      definition: rt.workflow,
      onContinue: (name, number) => {
        record.continuedIn = [...(record.continuedIn ?? []), { name, number, at: new Date().toISOString() }];
        flush(true);
      },
      onHistory: (entry, event) => {
        if (event === 'entered') {
          // The state it waited in is one entry, from when it was entered first to when it is left.
          const last = record.states.at(-1);
          if (waited && !record.states.includes(entry) && last?.state === entry.state && !last.leftAt) {
            entry.enteredAt = last.enteredAt;
            record.states = [...record.states.slice(0, -1), entry];
          } else record.states = [...record.states.slice(-(HISTORY_KEPT - 1)), entry];
        }
        flush();
      },
    },
  );
  let ended = false;
  void run.done.finally(() => {
    ended = true;
  });
  // A signal that ends the process (Ctrl-C, SIGTERM, SIGHUP) is recorded as what stopped the execution:
  // left "running", status took it for a crash.
  const unhook = onSignalStop((signal) => {
    if (ended) return;
    record.status = 'aborted';
    record.endedAt = new Date().toISOString();
    record.lastState = record.states.at(-1)?.state ?? record.lastState;
    record.error = `stopped by ${signal}${signal.startsWith('SIGINT') ? ' (Ctrl-C)' : ''}`;
    flush(true);
  });
  let outcome: ExecutionOutcome;
  try {
    outcome = await run.done;
  } finally {
    unhook();
    await session.close();
  }
  record.lastState = outcome.lastState;
  if (suspended) {
    const state = WORKFLOW_TASKS[suspended.task].state;
    record.status = 'awaiting-approval';
    record.waiting = {
      state,
      task: suspended.task,
      token: suspended.token,
      since: new Date().toISOString(),
      input: run.inputOf(state),
    };
    // Still in that state: it is left when the execution continues.
    const entry = record.states.findLast((e) => e.state === state);
    if (entry) {
      entry.leftAt = undefined;
      entry.ms = undefined;
      entry.summary = 'waiting for its task token to be completed';
    }
  } else {
    record.endedAt = new Date().toISOString();
    record.status = outcome.status;
    registry.clear(id);
  }
  if (outcome.error) record.error = `${outcome.error}: ${outcome.cause ?? ''}`;
  flush(true);
  const state = await rt.store.get(id);
  if (outcome.status !== 'failed') return { outcome, state };
  const error =
    thrown.get(key(outcome.error ?? '', outcome.cause ?? '')) ??
    new PgferryError(`${outcome.error ?? 'Error'}: ${outcome.cause ?? ''} (at "${outcome.lastState ?? '?'}")`, {
      migrationId: id,
    });
  return { outcome, state, error };
}

/**
 * Give the approval a waiting execution asks for (`pgferry cutover`): the token "Await cutover
 * approval" filed in the store is taken (one taker, in any process) and completed through the local
 * registry. True when this call completed it.
 */
export async function completeApproval(rt: Pick<Runtime, 'store' | 'stateDir'>, id: string): Promise<boolean> {
  const token = await rt.store.takeTaskToken?.(id, 'awaitApproval');
  if (!token) return false;
  return new LocalTaskCallbacks(rt.stateDir).succeed(token, {
    summary: `approved with pgferry cutover at ${new Date().toISOString()}`,
  });
}

/** The last execution, when it waits in a callback state whose token is completed: it can go on. */
export function continuableExecution(stateDir: string, id: string): ExecutionRecord | undefined {
  const record = readExecution(stateDir, id);
  const waiting = record?.status === 'awaiting-approval' ? record.waiting : undefined;
  if (!waiting || !new LocalTaskCallbacks(stateDir).result(waiting.token)) return undefined;
  return record;
}

/** The states the catch-up loop repeats every sample: shown as one line, with the count and the last summary. */
const LOOP_STATES = new Set<string>([STATE.waitSample, WORKFLOW_TASKS.checkLag.state, STATE.caughtUp]);

function clock(iso: string | undefined): string {
  return iso ? iso.slice(11, 23) : '…'.padEnd(12);
}

function duration(ms: number | undefined): string {
  if (ms === undefined) return 'running';
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** The last execution state by state, as the Step Functions console's execution view lists it. */
export function describeExecution(r: ExecutionRecord): string {
  const continued = [
    ...(r.continued ?? []).map((c) => `, continued by ${c.command} at ${c.at}`),
    ...(r.continuedIn ?? []).map((c) => `, continued in execution ${c.number} (${c.name}) at ${c.at}`),
  ].join('');
  const at = r.waiting
    ? ` at "${r.waiting.state}"`
    : r.lastState && r.status !== 'succeeded'
      ? ` at "${r.lastState}"`
      : '';
  const head = `Execution (${r.command}, started ${r.startedAt}${continued}): ${r.status}${at}${r.error ? ` — ${r.error}` : ''}`;
  const lines: string[] = [head];
  const row = (
    entered: string | undefined,
    left: string | undefined,
    ms: number | undefined,
    name: string,
    text = '',
  ) =>
    lines.push(
      `  ${clock(entered)} → ${clock(left)}  ${duration(ms).padStart(8)}  ${name.padEnd(30)} ${text}`.trimEnd(),
    );
  for (let i = 0; i < r.states.length; i++) {
    const e = r.states[i] as HistoryEntry;
    if (!LOOP_STATES.has(e.state)) {
      row(e.enteredAt, e.leftAt, e.ms, e.state, e.error ? `ERROR ${e.error}` : (e.summary ?? ''));
      continue;
    }
    let j = i;
    while (j + 1 < r.states.length && LOOP_STATES.has((r.states[j + 1] as HistoryEntry).state)) j++;
    const run = r.states.slice(i, j + 1);
    const samples = run.filter((s) => s.state === WORKFLOW_TASKS.checkLag.state);
    const last = samples.at(-1);
    const first = run[0] as HistoryEntry;
    const end = run.at(-1) as HistoryEntry;
    const ms = end.leftAt ? Date.parse(end.leftAt) - Date.parse(first.enteredAt) : undefined;
    const text = last?.error ? `ERROR ${last.error}` : (last?.summary ?? '');
    row(first.enteredAt, end.leftAt, ms, `Check lag ×${samples.length}`, text);
    i = j;
  }
  if (r.waiting)
    lines.push(
      `  waiting since ${r.waiting.since}: \`pgferry cutover --id ${r.migrationId}\` completes its task token and continues this execution`,
    );
  return lines.join('\n');
}
