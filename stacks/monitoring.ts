import { METRIC_DIMENSIONS, METRIC_NAMESPACE, METRICS } from '@pgferry/core';
import { Duration } from 'aws-cdk-lib';
import {
  Alarm,
  ComparisonOperator,
  Dashboard,
  GraphWidget,
  MathExpression,
  Metric,
  TreatMissingData,
} from 'aws-cdk-lib/aws-cloudwatch';
import { SnsAction } from 'aws-cdk-lib/aws-cloudwatch-actions';
import { ServicePrincipal } from 'aws-cdk-lib/aws-iam';
import { Key } from 'aws-cdk-lib/aws-kms';
import { Topic } from 'aws-cdk-lib/aws-sns';
import { EmailSubscription } from 'aws-cdk-lib/aws-sns-subscriptions';
import type { Queue } from 'aws-cdk-lib/aws-sqs';
import type { StateMachine } from 'aws-cdk-lib/aws-stepfunctions';
import type { Construct } from 'constructs';

const PERIOD = Duration.minutes(1);

/** One of pgferry's own metrics for this stage (the publisher adds the same `Stage` dimension). */
export function pgferryMetric(name: keyof typeof METRICS, stage: string, statistic = 'Maximum'): Metric {
  return new Metric({
    namespace: METRIC_NAMESPACE,
    metricName: METRICS[name],
    dimensionsMap: { [METRIC_DIMENSIONS.stage]: stage },
    statistic,
    period: PERIOD,
  });
}

export interface MonitoringProps {
  stage: string;
  machine: StateMachine;
  deadLetters: Queue[];
  walRetainedAlarmBytes: number;
  alarmEmail?: string;
}

/** Alarms that wake someone (to an encrypted SNS topic) and the stage's dashboard. */
export function monitoring(scope: Construct, props: MonitoringProps) {
  const { stage, machine } = props;
  const topicKey = new Key(scope, 'AlarmTopicKey', {
    enableKeyRotation: true,
    description: `pgferry ${stage}: encrypts the alarm topic`,
  });
  const topic = new Topic(scope, 'Alarms', {
    displayName: `pgferry ${stage} alarms`,
    masterKey: topicKey,
    enforceSSL: true,
  });
  // CloudWatch publishes to the encrypted topic only if it may use the key.
  topicKey.grant(new ServicePrincipal('cloudwatch.amazonaws.com'), 'kms:Decrypt', 'kms:GenerateDataKey*');
  if (props.alarmEmail) topic.addSubscription(new EmailSubscription(props.alarmEmail));
  const action = new SnsAction(topic);

  // Failed, timed out or aborted: each ends a migration in a state a person has to look at.
  const endedBadly = new MathExpression({
    expression: 'FILL(failed, 0) + FILL(timedOut, 0) + FILL(aborted, 0)',
    usingMetrics: {
      failed: machine.metricFailed({ period: PERIOD }),
      timedOut: machine.metricTimedOut({ period: PERIOD }),
      aborted: machine.metricAborted({ period: PERIOD }),
    },
    label: 'executions failed, timed out or aborted',
    period: PERIOD,
  });
  const failedExecutions = new Alarm(scope, 'FailedExecutions', {
    alarmDescription: `pgferry ${stage}: a migration execution failed, timed out or was aborted; pgferry status --id <id> names the state and what to run`,
    metric: endedBadly,
    threshold: 1,
    evaluationPeriods: 1,
    comparisonOperator: ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
    treatMissingData: TreatMissingData.NOT_BREACHING,
  });
  // The slot keeps WAL on the source until the target confirms it: unbounded, it fills the source's disk.
  const walRetained = new Alarm(scope, 'WalRetained', {
    alarmDescription: `pgferry ${stage}: the replication slot retains more than ${props.walRetainedAlarmBytes} bytes of WAL on the source; check the target's apply, or roll back before the source's disk fills`,
    metric: pgferryMetric('walRetainedBytes', stage),
    threshold: props.walRetainedAlarmBytes,
    evaluationPeriods: 5,
    comparisonOperator: ComparisonOperator.GREATER_THAN_THRESHOLD,
    treatMissingData: TreatMissingData.NOT_BREACHING,
  });
  const undelivered = props.deadLetters.map(
    (queue) =>
      new Alarm(scope, `${queue.node.id}Alarm`, {
        alarmDescription: `pgferry ${stage}: an event that advances a migration was not handled; its message is in the dead-letter queue`,
        metric: queue.metricApproximateNumberOfMessagesVisible({ period: PERIOD, statistic: 'Maximum' }),
        threshold: 1,
        evaluationPeriods: 1,
        comparisonOperator: ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: TreatMissingData.NOT_BREACHING,
      }),
  );
  for (const alarm of [failedExecutions, walRetained, ...undelivered]) alarm.addAlarmAction(action);

  const dashboard = new Dashboard(scope, 'Dashboard', { dashboardName: `pgferry-${stage}` });
  dashboard.addWidgets(
    new GraphWidget({ title: 'Replication lag (bytes)', left: [pgferryMetric('lagBytes', stage)], width: 12 }),
    new GraphWidget({ title: 'Replication lag (seconds)', left: [pgferryMetric('lagSeconds', stage)], width: 12 }),
  );
  dashboard.addWidgets(
    new GraphWidget({
      title: 'WAL retained by the slot (bytes)',
      left: [pgferryMetric('walRetainedBytes', stage)],
      leftAnnotations: [{ value: props.walRetainedAlarmBytes, label: 'alarm' }],
      width: 12,
    }),
    new GraphWidget({ title: 'Write gap (ms)', left: [pgferryMetric('writeGapMs', stage)], width: 12 }),
  );
  dashboard.addWidgets(
    new GraphWidget({
      title: 'Executions by status',
      left: [
        machine.metricStarted({ period: PERIOD, label: 'started' }),
        machine.metricSucceeded({ period: PERIOD, label: 'succeeded' }),
        machine.metricFailed({ period: PERIOD, label: 'failed' }),
        machine.metricTimedOut({ period: PERIOD, label: 'timed out' }),
        machine.metricAborted({ period: PERIOD, label: 'aborted' }),
      ],
      width: 24,
    }),
  );
  return { topic, dashboard, alarms: { failedExecutions, walRetained, undelivered } };
}
