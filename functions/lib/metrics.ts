import { type CloudWatchClient, PutMetricDataCommand, type StandardUnit } from '@aws-sdk/client-cloudwatch';
import { METRIC_DIMENSIONS, METRIC_NAMESPACE, METRICS, type MigrationState, type TaskName } from '@pgferry/core';

type MetricKey = keyof typeof METRICS;

const UNITS: Record<MetricKey, StandardUnit> = {
  walRetainedBytes: 'Bytes',
  lagBytes: 'Bytes',
  lagSeconds: 'Seconds',
  writeGapMs: 'Milliseconds',
};

/**
 * The figures a task's result leaves in the migration's state, as CloudWatch data: after "Check lag"
 * the last lag sample and the WAL the slot retains, after "Cut over" the write gap. Other tasks
 * publish nothing.
 */
export function taskFigures(task: TaskName, state: MigrationState): Partial<Record<MetricKey, number>> {
  if (task === 'checkLag') {
    const last = state.lag?.at(-1);
    return {
      ...(last ? { lagBytes: last.bytes, lagSeconds: last.ms / 1000 } : {}),
      ...(state.walRetainedBytes !== undefined ? { walRetainedBytes: state.walRetainedBytes } : {}),
    };
  }
  if (task === 'cutover' && state.cutover?.writeGapMs !== undefined) return { writeGapMs: state.cutover.writeGapMs };
  return {};
}

/** Each figure twice: per stage (what the alarms and the dashboard read) and per stage and migration. */
export async function publishFigures(
  cloudwatch: CloudWatchClient,
  stage: string,
  migrationId: string,
  figures: Partial<Record<MetricKey, number>>,
  at = new Date(),
): Promise<void> {
  const entries = Object.entries(figures) as [MetricKey, number][];
  if (!entries.length) return;
  const stageDimension = { Name: METRIC_DIMENSIONS.stage, Value: stage };
  await cloudwatch.send(
    new PutMetricDataCommand({
      Namespace: METRIC_NAMESPACE,
      MetricData: entries.flatMap(([key, value]) =>
        [[stageDimension], [stageDimension, { Name: METRIC_DIMENSIONS.migrationId, Value: migrationId }]].map(
          (Dimensions) => ({ MetricName: METRICS[key], Dimensions, Value: value, Unit: UNITS[key], Timestamp: at }),
        ),
      ),
    }),
  );
}
