/**
 * The failure → undo policy: which error, in which phase, keeps the migration resumable, rolls it back,
 * or leaves it cut over. No I/O. The state machine's Catch routing (definition.ts) is derived from it,
 * and the tasks that record a failure ("Roll back", "Record failure") apply it again with what only the
 * stored state knows (whether the switch began), so a static route can never undo too much.
 */
import type { MigrationStatus, Phase } from '../model';
import { CONTINUATION_FAILED_ERROR } from './history';

/**
 * - `stop`: nothing undone; the migration stays `running` with the failure recorded, and `resume` goes on.
 * - `roll-back`: the pre-switch rollback (no slot left on the source, never frozen), then `rolled-back`.
 * - `keep-cut-over`: after the switch the application is on the target with a way back: nothing undone.
 * - `fail`: nothing was created (the assessment): `failed`, nothing to undo.
 * - `ignore`: another process acts on the migration (or this one is being stopped by a signal): record nothing.
 */
export type FailureAction = 'stop' | 'roll-back' | 'keep-cut-over' | 'fail' | 'ignore';

/** What the stored state says when the failure is handled. */
export interface FailureFacts {
  /** The switch began (`cutover.switchStartedAt`): the application may already write to the target. */
  switchStarted: boolean;
  /** The switch happened (`cutover.switchAt`). */
  switched: boolean;
  /** A cutover record exists (a freeze was attempted in this migration's current cutover). */
  cutoverRecorded: boolean;
  /** The error is a lost connection (a server went away), as packages/postgres tells it. */
  connectionLoss: boolean;
  /** The process is stopping on a signal: a rollback cut off half way would be worse than none. */
  interrupted?: boolean;
}

export const NO_FACTS: FailureFacts = {
  switchStarted: false,
  switched: false,
  cutoverRecorded: false,
  connectionLoss: false,
};

/**
 * Failures where replication is healthy, only not caught up or not drained in time, or a table verify
 * could not read for another session's lock: keep what was built.
 */
const RESUMABLE = [
  'LagTimeoutError',
  'DrainTimeoutError',
  'PreparedTransactionsPendingError',
  'ApprovalTimeoutError',
  CONTINUATION_FAILED_ERROR,
  'VerifyLockedError',
  // The statistics or a foreign key's validation after the load failed (a row the key refuses, a
  // session that held its lock past catchUpTimeoutMs): the loaded target stays, the work left is
  // recorded, and resume runs it again.
  'AfterLoadFailedError',
];
/** A cutover that failed before the switch undid itself: the loaded target is as good as before. */
const CUTOVER_UNDONE = ['CutoverFailedError', 'FreezeFailedError'];

/** Every error name the policy distinguishes (the state machine's Catch lists are built from these). */
export const POLICY_ERRORS = [
  ...RESUMABLE,
  ...CUTOVER_UNDONE,
  'UndoFailedError',
  'VerificationFailedError',
  'ConnectionLostError',
  'StateConflictError',
  // Another execution's task holds the migration's lease past the state's retries (lease.ts).
  'MigrationBusyError',
  // An approval step that timed out: replication goes on; a person (or a later execution) decides.
  'States.Timeout',
  // A worker that stopped sending heartbeats (killed, its task stopped): in catch-up (the work after
  // the load, the verify before the switch) nothing it did is lost and replication goes on.
  'States.HeartbeatTimeout',
] as const;

/** Another actor has the migration: the failure is not this one's to record or undo. */
export const IGNORED_ERRORS: readonly string[] = ['StateConflictError', 'MigrationBusyError'];

export function failureAction(error: string, phase: Phase, facts: FailureFacts): FailureAction {
  if (facts.interrupted || IGNORED_ERRORS.includes(error)) return 'ignore';
  if (facts.switched) return 'keep-cut-over';
  if (facts.switchStarted) return 'stop';
  // The cutover's undo failed: its breadcrumb stays and resume undoes it again; a rollback now would
  // go through the same frozen source and throw the load away.
  if (error === 'UndoFailedError') return 'stop';
  if (RESUMABLE.includes(error)) return 'stop';
  if (CUTOVER_UNDONE.includes(error) && !facts.cutoverRecorded) return 'stop';
  // A difference found before the switch: nothing switched or frozen; the target stays to be looked at.
  if (error === 'VerificationFailedError') return 'stop';
  if (phase === 'catch-up' && (error === 'ConnectionLostError' || facts.connectionLoss)) return 'stop';
  if (phase === 'catch-up' && (error === 'States.Timeout' || error === 'States.HeartbeatTimeout')) return 'stop';
  if (phase === 'assess') return 'fail';
  if (phase === 'cleanup' || phase === 'verify') return 'keep-cut-over';
  return 'roll-back';
}

/** The status a migration is left in after the action (a failed rollback makes it `failed`). */
export function statusAfter(action: FailureAction, rollbackFailed = false): MigrationStatus | undefined {
  switch (action) {
    case 'stop':
      return 'running';
    case 'keep-cut-over':
      return 'cut-over';
    case 'fail':
      return 'failed';
    case 'roll-back':
      return rollbackFailed ? 'failed' : 'rolled-back';
    case 'ignore':
      return undefined;
  }
}

/**
 * The error names that, in `phase`, never lead to a rollback whatever the stored state says: the
 * state machine routes them straight to "Record failure" (a resumable stop); every other error goes to
 * "Roll back", which applies `failureAction` again with the stored facts.
 */
export function resumableErrors(phase: Phase): string[] {
  return POLICY_ERRORS.filter((e) => failureAction(e, phase, NO_FACTS) !== 'roll-back');
}

/** Whether nothing in `phase` is ever rolled back (assess: nothing created; verify, clean-up: after the switch). */
export function neverRolledBack(phase: Phase): boolean {
  return failureAction('Error', phase, NO_FACTS) !== 'roll-back';
}

/**
 * The error "Await cutover approval" is failed with when someone rolls back at the gate (Slack's
 * `/pgferry rollback` or its button): its Catch sends it to "Roll back", the failure policy rolls back
 * (nothing was switched), and the execution ends "Rolled back", not Failed: nothing went wrong.
 */
export const CUTOVER_REJECTED_ERROR = 'CutoverRejectedError';
