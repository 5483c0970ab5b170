/**
 * `migrate`, `resume`, `cutover` and `rollback` as executions of the workflow definition
 * (local-workflow.ts), each task run in-process by `runWorkflowTask`, the very function the Lambda
 * handlers and the worker call. One session (two pools) serves a whole execution. The execution's
 * history, state by state, is kept next to the migration's state for `pgferry status`.
 */
import { chmodSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  errorMessage,
  type GateState,
  MIGRATION_ID,
  type MigrationState,
  PgferryError,
  STATE,
  type TaskInput,
  type WorkflowInput,
} from '@pgferry/core';
import { runWorkflowTask, type Session, sleep, type TaskDeps } from '@pgferry/postgres';
import type { ExecutionOutcome, HistoryEntry } from './local-workflow';
import { openSession, type Runtime } from './runner';

/** What `pgferry status` shows of the last execution. */
export interface ExecutionRecord {
  migrationId: string;
  /** Which command started it. */
  command: string;
  input: WorkflowInput;
  startedAt: string;
  endedAt?: string;
  status: 'running' | ExecutionOutcome['status'];
  /** Where a failed or stopped execution ended, and why. */
  lastState?: string;
  error?: string;
  /** Oldest first; at most HISTORY_KEPT (the catch-up loop repeats its states). */
  states: HistoryEntry[];
}

/** States kept per execution: a long catch-up repeats "Wait", "Check lag", "Caught up?" every sample. */
export const HISTORY_KEPT = 300;
/** The history is written at most this often (and when the execution ends). */
const FLUSH_EVERY_MS = 1000;

export function executionFile(stateDir: string, id: string): string {
  if (!MIGRATION_ID.test(id)) throw new PgferryError(`not a migration id: ${id}`, { field: '--id' });
  return join(stateDir, `${id}.execution.json`);
}

export function readExecution(stateDir: string, id: string): ExecutionRecord | undefined {
  try {
    return JSON.parse(readFileSync(executionFile(stateDir, id), 'utf8')) as ExecutionRecord;
  } catch {
    return undefined;
  }
}

function writeExecution(stateDir: string, record: ExecutionRecord) {
  const file = executionFile(stateDir, record.migrationId);
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
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
 * Run one execution of the workflow for a stored (and claimed) migration. A callback step that waits
 * for a person ("Await cutover approval") ends the execution locally: the migration is recorded as
 * awaiting the cutover, and `pgferry cutover` starts a new execution, approved, whose tasks skip what
 * is done by their done-checks.
 */
export async function executeLocally(rt: Runtime, input: WorkflowInput, command: string): Promise<LocalResult> {
  const { runLocalWorkflow } = await import('./local-workflow');
  const id = input.migrationId;
  let session: Session | undefined;
  const thrown = new Map<string, unknown>();
  const key = (name: string, message: string) => `${name}\u0000${message}`;
  const deps: TaskDeps = {
    store: rt.store,
    log: (m) => rt.events.log(m),
    phase: (p, e, s) => rt.events.phase(p, e, s),
    progress: rt.events.progress,
    faults: rt.faults,
    async session() {
      session ??= await openSession(rt, id);
      return session;
    },
    thrown: (e) => thrown.get(key(e.Error, e.Cause)),
  };
  const record: ExecutionRecord = {
    migrationId: id,
    command,
    input,
    startedAt: new Date().toISOString(),
    status: 'running',
    states: [],
  };
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
  let waitingForApproval = false;
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
      try {
        const output = await runWorkflowTask(task, taskInput, deps);
        if (task === 'awaitApproval') {
          waitingForApproval = true;
          run.abort();
        }
        return output;
      } catch (err) {
        if (err instanceof Error) thrown.set(key(err.name, err.message), err);
        throw err;
      }
    },
    {
      waitMs: { [STATE.waitSample]: 0, [STATE.bake]: 0 },
      retryMs: {},
      onHistory: (entry, event) => {
        if (event === 'entered') record.states = [...record.states.slice(-(HISTORY_KEPT - 1)), entry];
        flush();
      },
    },
  );
  let outcome: ExecutionOutcome;
  try {
    outcome = await run.done;
  } finally {
    await session?.close();
  }
  record.endedAt = new Date().toISOString();
  record.status = waitingForApproval ? 'aborted' : outcome.status;
  record.lastState = outcome.lastState;
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
