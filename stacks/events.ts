import { RDS_WAIT_EVENTS } from '@pgferry/aws';
import { Duration, Stack } from 'aws-cdk-lib';
import { EventBus, type EventPattern, type IEventBus, Match, Rule } from 'aws-cdk-lib/aws-events';
import { LambdaFunction } from 'aws-cdk-lib/aws-events-targets';
import { SqsDestination } from 'aws-cdk-lib/aws-lambda-destinations';
import { Queue, QueueEncryption } from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import type { Function as SstFunction } from 'sst/constructs';
import { DUMPS_PREFIX } from './storage';

/** RDS instances pgferry creates are named `pgferry-<migration id>` unless the plan names one (packages/aws rdsName). */
export const RDS_INSTANCE_PREFIX = 'pgferry-';

/**
 * The events that advance a migration, each matched as narrowly as EventBridge allows: anything
 * else reaching a handler costs an invocation and a log line for nothing.
 */
export function eventPatterns(bucketName: string, { account, region, partition }: StackEnv) {
  return {
    // Only the events that can end Provision target's wait, for any instance: a target the plan names
    // or adopts need not be called pgferry-*, and the handler ignores instances no migration waits for.
    rdsInstance: {
      source: ['aws.rds'],
      detailType: ['RDS DB Instance Event'],
      detail: { EventID: Object.keys(RDS_WAIT_EVENTS) },
    },
    dumpCreated: {
      source: ['aws.s3'],
      detailType: ['Object Created'],
      detail: { bucket: { name: [bucketName] }, object: { key: Match.prefix(DUMPS_PREFIX) } },
    },
    dmsTask: {
      source: ['aws.dms'],
      detailType: ['DMS Replication Task State Change'],
      resources: Match.prefix(`arn:${partition}:dms:${region}:${account}:task:`),
    },
    // DMS Serverless. EventBridge lists this detail-type for DMS, but no sample of it is documented, and
    // whether an AWS event carries resources is the service's choice (EventBridge's event structure):
    // matched on source and detail-type only; the handler looks for a replication config of pgferry's
    // among its resources and reads the truth with DescribeReplications.
    dmsReplication: {
      source: ['aws.dms'],
      detailType: ['DMS Replication State Change'],
    },
  } satisfies Record<string, EventPattern>;
}

/** pgferry's own bus: `Migration Phase Changed`, `Replication Lag Sampled`, `Cutover Completed`, `Migration Failed`. */
export function pgferryBus(scope: Construct, name: string): EventBus {
  return new EventBus(scope, 'Bus', { eventBusName: name, description: 'pgferry migration events (source pgferry)' });
}

/**
 * A rule whose target keeps what it could not deliver: EventBridge's own retries end in the queue,
 * and so do the handler's failed asynchronous invocations (Lambda retries those twice first).
 */
export function ruleToHandler(
  scope: Construct,
  id: string,
  description: string,
  pattern: EventPattern,
  fn: SstFunction,
  /** The bus the rule listens on; AWS's events arrive on the default bus. */
  eventBus?: IEventBus,
) {
  const deadLetters = new Queue(scope, `${id}DeadLetters`, {
    encryption: QueueEncryption.SQS_MANAGED,
    enforceSSL: true,
    retentionPeriod: Duration.days(14),
  });
  const rule = new Rule(scope, id, { description, eventPattern: pattern, eventBus });
  rule.addTarget(
    new LambdaFunction(fn, { deadLetterQueue: deadLetters, retryAttempts: 8, maxEventAge: Duration.hours(6) }),
  );
  fn.configureAsyncInvoke({ onFailure: new SqsDestination(deadLetters), retryAttempts: 2 });
  return { rule, deadLetters };
}

interface StackEnv {
  account: string;
  region: string;
  partition: string;
}

export function stackEnv(scope: Construct): StackEnv {
  const stack = Stack.of(scope);
  return { account: stack.account, region: stack.region, partition: stack.partition };
}
