import type { Readable } from 'node:stream';
import type { ConnectionSwitch, MigrationConfig, MigrationState } from '@pgferry/core';
import { type Db, serverMajor } from '../db';

/** What every phase gets: config with real URLs, open connections, the state and a way to persist it. */
export interface PhaseContext {
  config: MigrationConfig;
  source: Db;
  target: Db;
  state: MigrationState;
  /** Apply a change to the state and persist it (optimistic versioning lives in the store). */
  update(change: (state: MigrationState) => void): Promise<void>;
  log(message: string): void;
  /** Progress of long steps: rows and bytes copied so far. */
  progress?(p: Progress): void;
  /** Directory for artifacts (schema dumps, dump strategy data). */
  artifactDir: string;
  /** Fault points for tests: a moment a test cannot time from outside (inside the write gap) made to happen. */
  faults?: FaultPoints;
  /**
   * The AWS connection switch of the config's `switch` (a secret, SSM parameter or CNAME), called in
   * the write gap after the switch file and command; none locally.
   */
  connectionSwitch?: ConnectionSwitch;
  /** Where the `dump` strategy's data goes instead of a local file (S3 in AWS: packages/aws s3DumpStore). */
  dumpStore?: DumpStore;
}

/** A place a dump is streamed into and read back from, checked, without staging it on disk. */
export interface DumpStore {
  /** Store the whole stream; a stream that fails stores nothing. */
  put(migrationId: string, dump: Readable): Promise<StoredDump>;
  /** The dump as stored; the stream fails (and nothing is restored) when it does not match `dump`. */
  open(dump: StoredDump): Promise<Readable>;
  /**
   * The store announces every stored dump with an event the state machine waits on (S3's `Object
   * Created` through EventBridge, "Wait for the dump upload"): the coordinator restores only once that
   * event's handler has confirmed the object in the copy plan.
   */
  announces?: boolean;
  /** Remove what an earlier attempt stored, so that only this attempt's dump can be announced. */
  discard?(migrationId: string): Promise<void>;
}

export interface StoredDump {
  /** `s3://bucket/key`, for messages. */
  where: string;
  key: string;
  sha256: string;
  size: number;
}

/** Builds the connection switch a migration's config names (undefined: it names none). */
export type ConnectionSwitchFactory = (config: MigrationConfig) => ConnectionSwitch | undefined;

export interface FaultPoints {
  /** Cutover: the gate opened, the drain is about to be predicted (before anything is frozen). */
  beforeDrainForecast?(): Promise<void>;
  /** Inside the write gap, once the source is frozen, before the drain LSN is read. */
  afterFreeze?(): Promise<void>;
  /** Inside the write gap, the drain LSN read, before the wait for the target to confirm it. */
  duringDrain?(): Promise<void>;
  /** Each reader of a verify read: before it takes or imports its snapshot, and once it is in it. */
  verifyReader?(point: VerifyReaderPoint): Promise<void>;
  /** Tests only: how long verify's readers begin again while a table's lock is not granted (else LOCK_WAIT_MS). */
  verifyLockWaitMs?: number;
  /** Bulk load: a big table's indexes are about to be built (`table` quoted and qualified), its rows in. */
  earlyBuild?(table: string): Promise<void>;
  /** Bulk load: every row is in (a build ending after this leaves its statistics to catch-up). */
  copyEnded?(): void;
  /** Catch-up: a foreign key is about to be validated (`drift` names it) on the after-load session. */
  beforeValidate?(drift: string): Promise<void>;
}

/** Where one of verify's readers is (verify-readers.ts): its side, the table, which reader of how many. */
export interface VerifyReaderPoint {
  side: 'source' | 'target';
  /** The side the application writes to (read first); otherwise the replica. */
  live: boolean;
  table: string;
  /** 0 takes (and, with others, exports) the snapshot; the others import it. */
  reader: number;
  readers: number;
  /** start: before its transaction; snapshot: in the snapshot, holding the table's lock; reading: before its read. */
  stage: 'start' | 'snapshot' | 'reading';
}

/** What the catalog checks of both sides need of a phase context (status builds one of its own). */
export type CatalogContext = Pick<PhaseContext, 'source' | 'target' | 'config'>;

export function sourceMajor(ctx: CatalogContext): Promise<number> {
  return serverMajor(ctx.source);
}
export function targetMajor(ctx: PhaseContext): Promise<number> {
  return serverMajor(ctx.target);
}

/**
 * Whether partitioned tables are published through their root, forward and back: publish_via_partition_root,
 * and a subscriber applying changes to a partitioned table, are PostgreSQL 13+ (the target is never older
 * than the source). Before, each leaf is published and applied under its own name: the target has the
 * same leaves, its schema being the source's.
 */
export async function partitionsViaRoot(ctx: CatalogContext): Promise<boolean> {
  return (await sourceMajor(ctx)) >= 13;
}

export interface Progress {
  step: string;
  done: number;
  total: number;
  unit: 'bytes' | 'rows' | 'tables';
  /** Rows so far and the estimate of all rows, where the step moves both bytes and rows. */
  rows?: number;
  rowsTotal?: number;
}
