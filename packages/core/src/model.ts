import type { MigrationConfig } from './config';

/** Phases in workflow order; names match packages/postgres/src/phases and the state machine. */
export const PHASES = [
  'assess',
  'prepare-schema',
  'bulk-load',
  'start-replication',
  'catch-up',
  'cutover',
  'verify',
  'cleanup',
] as const;
export type Phase = (typeof PHASES)[number] | 'rollback';

export const PHASE_TITLES: Record<Phase, string> = {
  assess: 'Assess source',
  'prepare-schema': 'Prepare schema',
  'bulk-load': 'Bulk load',
  'start-replication': 'Start replication',
  'catch-up': 'Catch up',
  cutover: 'Cut over',
  verify: 'Verify',
  cleanup: 'Clean up',
  rollback: 'Roll back',
};

export type MigrationStatus =
  | 'running'
  | 'awaiting-cutover'
  | 'cut-over'
  | 'completed'
  | 'failed'
  | 'rolled-back'
  | 'cleaned-up';

export interface PhaseRecord {
  startedAt?: string;
  endedAt?: string;
  summary?: string;
  attempts?: number;
}

export interface TableRef {
  schema: string;
  name: string;
}

export interface LagSample {
  at: string;
  bytes: number;
  ms: number;
}

export interface CutoverRecord {
  freezeAt?: string;
  freezeLsn?: string;
  drainedAt?: string;
  /** Set just before the connection is switched: from here an interrupted cutover is finished, not undone. */
  switchStartedAt?: string;
  switchAt?: string;
  unfreezeAt?: string;
  writeGapMs?: number;
  sessionsEnded?: number;
  writesAfterFreeze?: number;
  sequencesSynced?: number;
  direction?: 'forward' | 'reverse';
  /** Where the write gap went, step by step (ms). */
  stepsMs?: Record<string, number>;
  /**
   * Recorded before the freeze: the database to freeze was read-only already (another migration's
   * freeze, or its DBA's). An undo then leaves it read-only: it only resets a freeze it set itself.
   */
  wasFrozen?: boolean;
}

/** An undo that failed: what it left, kept until an undo succeeds, and the one command that ends it. */
export interface UndoFailure {
  at: string;
  /** What was being undone: `cutover` (the source may be frozen) or `rollback` (the target may be). */
  of: 'cutover' | 'rollback';
  message: string;
  command: string;
}

export interface VerifyTableResult {
  table: string;
  sourceRows: number;
  targetRows: number;
  chunks: number;
  mismatchedRanges: string[];
}

export interface MigrationState {
  id: string;
  /** Optimistic locking: every write must name the version it read. */
  version: number;
  createdAt: string;
  updatedAt: string;
  status: MigrationStatus;
  phase: Phase;
  /** Config with passwords redacted from the URLs; secrets live in the secret store. */
  config: MigrationConfig;
  phases: Partial<Record<Phase, PhaseRecord>>;
  sourceVersion?: number;
  targetVersion?: number;
  tables?: TableRef[];
  /** Roles pgferry created on the target (cluster-wide): a rollback before cutover drops them again. */
  rolesCreated?: string[];
  slotLsn?: string;
  /** Set when every row is on the target (before indexes): a crash after this does not copy again. */
  dataLoadedAt?: string;
  rowsCopied?: number;
  bytesCopied?: number;
  lag?: LagSample[];
  walRetainedBytes?: number;
  ddlDrift?: string[];
  cutover?: CutoverRecord;
  rollback?: CutoverRecord;
  verify?: { ok: boolean; tables: VerifyTableResult[]; at: string };
  leftovers?: string[];
  warnings?: string[];
  failedAt?: string;
  failure?: { name: string; message: string; phase?: Phase; hint?: string };
  undoFailed?: UndoFailure;
  events: { at: string; message: string }[];
}

/** Where migration state lives: DynamoDB in AWS, files under .pgferry/ locally. Same contract. */
export interface MigrationStore {
  create(state: MigrationState, secrets: MigrationSecrets): Promise<void>;
  get(id: string): Promise<MigrationState>;
  secrets(id: string): Promise<MigrationSecrets>;
  /** Write `state` if the stored version is still `state.version`; returns the stored state (version + 1). */
  put(state: MigrationState): Promise<MigrationState>;
  list(): Promise<MigrationState[]>;
  /** Replace a migration's connection secrets (new passwords for the same servers). */
  updateSecrets?(id: string, secrets: MigrationSecrets): Promise<void>;
  /** Claim a migration for one command at a time; resolves with the release (see FileMigrationStore). */
  claim?(id: string): Promise<() => Promise<void>>;
}

/** The only place URLs with passwords are kept (Secrets Manager in AWS, a 0600 file locally). */
export interface MigrationSecrets {
  sourceUrl: string;
  targetUrl: string;
}
