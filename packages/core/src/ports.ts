/**
 * Side effects the workflow needs beyond PostgreSQL, behind interfaces: one AWS implementation
 * (packages/aws) and one local implementation (packages/cli) each, passing the same contract tests.
 */

import type { DmsLatencyReading, DmsMappingInput, DmsPlan, DmsRef } from './dms';

/** Completes the task tokens of callback steps (SendTaskSuccess / SendTaskFailure / SendTaskHeartbeat). */
export interface TaskCallbacks {
  /** Completing a token that is already complete (or timed out) is harmless: it resolves false. */
  succeed(token: string, output: unknown): Promise<boolean>;
  fail(token: string, error: string, cause: string): Promise<boolean>;
  heartbeat(token: string): Promise<void>;
}

/** The detail-types pgferry publishes on its bus (source `pgferry`). */
export type PgferryEventType =
  | 'Migration Phase Changed'
  | 'Replication Lag Sampled'
  | 'Cutover Completed'
  | 'Migration Failed';

export interface PgferryEvent {
  type: PgferryEventType;
  /** Every detail names its migration; it never holds a secret. */
  detail: { migrationId: string; [key: string]: unknown };
}

export interface EventPublisher {
  publish(events: PgferryEvent[]): Promise<void>;
}

/**
 * The DMS path's AWS side (packages/aws's AwsDmsReplication; tests script a fake). Every call is
 * idempotent: a retried step finds what an earlier attempt made.
 */
export interface DmsReplication {
  /** Create (or find) the endpoints and the task or Serverless config, correlate its events, start it. */
  start(plan: DmsPlan, mappings: DmsMappingInput): Promise<DmsRef & { started: boolean }>;
  /**
   * Keep the token that the full load's end completes (a `DMS Replication Task State Change` event
   * through handleDmsTaskStateChange); completes it at once if the full load already ended.
   */
  awaitFullLoad(migrationId: string, ref: DmsRef, token: string): Promise<void>;
  /** Change capture again after the stop that ends the full load. */
  resume(ref: DmsRef): Promise<void>;
  /** The newest CDC latency reading; no datapoint is no figure, never 0. */
  cdcLatency(ref: DmsRef): Promise<DmsLatencyReading>;
  /** Everything committed before `freezeAt` is applied on the target (see dmsDrained). */
  drained(ref: DmsRef, freezeAt: string): Promise<boolean>;
  /** Stop it (the cutover, once drained). */
  stop(ref: DmsRef): Promise<void>;
  /** Stop it and delete it and its endpoints; returns what was deleted. Nothing there: nothing to do. */
  cleanup(plan: DmsPlan, ref?: DmsRef): Promise<string[]>;
}
