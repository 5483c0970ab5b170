/**
 * The CloudWatch metrics pgferry publishes ("Check lag" after each gate sample, "Cut over" after the
 * write gap) and the stack's alarms and dashboard read. One table, so that a renamed metric cannot
 * leave an alarm watching nothing.
 */
export const METRIC_NAMESPACE = 'pgferry';

export const METRICS = {
  /** Bytes of WAL the source keeps for pgferry's slot (pg_current_wal_lsn() minus the slot's restart_lsn). */
  walRetainedBytes: 'WalRetainedBytes',
  /** Replication lag in bytes: the source's current LSN minus the slot's confirmed flush. */
  lagBytes: 'ReplicationLagBytes',
  /** Replication lag in seconds: the age of the oldest commit the target has not confirmed. */
  lagSeconds: 'ReplicationLagSeconds',
  /** How long the cutover kept the source frozen, in milliseconds. */
  writeGapMs: 'WriteGapMilliseconds',
} as const;

/**
 * Every datum carries the deployment's stage, so that two stages in one account do not share an
 * alarm; a second datum per migration (`Stage` + `MigrationId`) lets a person drill down.
 */
export const METRIC_DIMENSIONS = { stage: 'Stage', migrationId: 'MigrationId' } as const;
