/**
 * Typed errors. Step Functions Retry/Catch and the CLI's exit codes match on `name`, so every
 * subclass sets its own. `hint` is written for the person running the migration.
 */
export interface PgferryErrorOptions {
  cause?: unknown;
  migrationId?: string;
  phase?: string;
  hint?: string;
  /** The input field or database object the error is about, e.g. `--source` or `public.orders`. */
  field?: string;
}

export class PgferryError extends Error {
  override name = 'PgferryError';
  readonly migrationId?: string;
  readonly phase?: string;
  readonly hint?: string;
  readonly field?: string;
  /** Process exit code the CLI uses for this class of failure. */
  readonly exitCode: number = 1;

  constructor(message: string, options: PgferryErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.migrationId = options.migrationId;
    this.phase = options.phase;
    this.hint = options.hint;
    this.field = options.field;
  }
}

/** Bad user input: a flag, a URL, a config value. Nothing was created. */
export class InvalidInputError extends PgferryError {
  override name = 'InvalidInputError';
  override readonly exitCode = 2;
}

/** A server could not be reached or refused the credentials. */
export class ConnectionFailedError extends PgferryError {
  override name = 'ConnectionFailedError';
  override readonly exitCode = 3;
}

/** A server stopped answering and did not come back within the time pgferry waits for it. Nothing was undone. */
export class ConnectionLostError extends PgferryError {
  override name = 'ConnectionLostError';
  override readonly exitCode = 3;
}

/** Assessment found blockers; nothing was created. */
export class AssessmentBlockedError extends PgferryError {
  override name = 'AssessmentBlockedError';
  override readonly exitCode = 4;
  constructor(
    message: string,
    readonly blockers: { code: string; message: string; object?: string }[],
    options: PgferryErrorOptions = {},
  ) {
    super(message, options);
  }
}

export class SchemaFailedError extends PgferryError {
  override name = 'SchemaFailedError';
}
/**
 * The work the load left to do on the target while replication runs (statistics, foreign keys added
 * NOT VALID) failed: nothing is undone, replication goes on, the work left stays recorded, and `resume`
 * runs it again once the cause is fixed.
 */
export class AfterLoadFailedError extends PgferryError {
  override name = 'AfterLoadFailedError';
  override readonly exitCode = 9;
}
export class BulkLoadFailedError extends PgferryError {
  override name = 'BulkLoadFailedError';
}
export class ReplicationFailedError extends PgferryError {
  override name = 'ReplicationFailedError';
}
export class LagTimeoutError extends PgferryError {
  override name = 'LagTimeoutError';
  override readonly exitCode = 5;
}
/**
 * Nobody approved the cutover before the approval deadline (APPROVAL_DEADLINE_SECONDS): the wait ends,
 * resumable; replication goes on and nothing is undone.
 */
export class ApprovalTimeoutError extends PgferryError {
  override name = 'ApprovalTimeoutError';
  override readonly exitCode = 5;
}
/** The slot retained more WAL than the hard limit: the slot was dropped to protect the source's disk. */
export class WalRetentionExceededError extends PgferryError {
  override name = 'WalRetentionExceededError';
}
export class FreezeFailedError extends PgferryError {
  override name = 'FreezeFailedError';
}
export class DrainTimeoutError extends PgferryError {
  override name = 'DrainTimeoutError';
  override readonly exitCode = 5;
}
/**
 * Prepared transactions of the frozen database were neither committed nor rolled back in time: the
 * database was unfrozen again and the cutover returns to catch-up, like a drain that timed out.
 */
export class PreparedTransactionsPendingError extends DrainTimeoutError {
  override name = 'PreparedTransactionsPendingError';
}
/**
 * An undo (unfreeze, re-freeze, replication back on) failed: what it could not put back is kept in the
 * state (its breadcrumb), and `status` names it with the command that ends it.
 */
export class UndoFailedError extends PgferryError {
  override name = 'UndoFailedError';
}
export class CutoverFailedError extends PgferryError {
  override name = 'CutoverFailedError';
}
export class VerificationFailedError extends PgferryError {
  override name = 'VerificationFailedError';
  override readonly exitCode = 6;
}
/**
 * Verify could not read a table: another session held or asked for its ACCESS EXCLUSIVE lock (DDL,
 * VACUUM FULL, CLUSTER, TRUNCATE) for longer than verify's readers keep trying. Not a difference and
 * not a broken migration: nothing is undone, the table is not verified, and `resume` verifies again.
 */
export class VerifyLockedError extends PgferryError {
  override name = 'VerifyLockedError';
  override readonly exitCode = 8;
}
export class RollbackFailedError extends PgferryError {
  override name = 'RollbackFailedError';
}
/** Another process changed the migration's state since it was read. */
export class StateConflictError extends PgferryError {
  override name = 'StateConflictError';
  override readonly exitCode = 7;
}
/**
 * Another command, execution or task holds the migration (its claim or lease) and keeps it: nothing was
 * done. The state machine tries such a task again for longer than a Lambda task may hold it (BUSY_RETRY).
 */
export class MigrationBusyError extends StateConflictError {
  override name = 'MigrationBusyError';
}
/** A migration's stored state cannot be read (damaged, or the store refuses): named, with what to do. */
export class StateUnreadableError extends PgferryError {
  override name = 'StateUnreadableError';
  override readonly exitCode = 2;
}
export class MigrationNotFoundError extends PgferryError {
  override name = 'MigrationNotFoundError';
  override readonly exitCode = 2;
}

/** Documented CLI exit codes; README's table is generated from the same meaning. */
export const EXIT_CODES = {
  ok: 0,
  failed: 1,
  invalidInput: 2,
  connectionFailed: 3,
  assessmentBlocked: 4,
  lagOrDrainTimeout: 5,
  verificationFailed: 6,
  stateConflict: 7,
  notVerified: 8,
  afterLoadFailed: 9,
} as const;

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
