/**
 * Side effects the workflow needs beyond PostgreSQL, behind interfaces: one AWS implementation
 * (packages/aws) and one local implementation (packages/cli) each, passing the same contract tests.
 */

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
