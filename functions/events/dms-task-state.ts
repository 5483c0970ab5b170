/**
 * EventBridge → the bulk load's task token (strategy `dms`, packages/aws/src/dms.ts):
 * - `DMS Replication Task State Change` (a replication instance's task): handleDmsTaskStateChange;
 * - `DMS Replication State Change` (DMS Serverless): handleDmsReplicationStateChange, which takes the
 *   event as a prompt and reads the replication with DescribeReplications (its detail is not documented).
 * An event that is neither fails the invocation (the rule's DLQ keeps it); every other outcome, ignored
 * ones included, is returned and logged.
 */
import middy from '@middy/core';
import {
  type DmsEventResult,
  type DmsReplicationStateChangeEvent,
  type DmsTaskStateChangeEvent,
  dmsReplicationStatus,
  dmsTaskStatus,
  handleDmsReplicationStateChange,
  handleDmsTaskStateChange,
} from '@pgferry/aws';
import { InvalidInputError } from '@pgferry/core';
import { z } from 'zod';
import { awsTaskDeps } from '../lib/aws-deps';

const taskStateChange = z.object({
  source: z.literal('aws.dms'),
  'detail-type': z.literal('DMS Replication Task State Change'),
  id: z.string().optional(),
  time: z.string().optional(),
  resources: z.array(z.string().regex(/^arn:aws[a-z-]*:dms:[a-z0-9-]+:\d{12}:task:\S+$/)).min(1),
  detail: z.object({}).passthrough(),
});

/** Only the envelope: an event naming no resource is logged and ignored by the handler, not refused here. */
const replicationStateChange = z.object({
  source: z.literal('aws.dms'),
  'detail-type': z.literal('DMS Replication State Change'),
  id: z.string().optional(),
  time: z.string().optional(),
  resources: z.array(z.string()).optional(),
  detail: z.unknown().optional(),
});

type Parsed =
  | { kind: 'task'; event: DmsTaskStateChangeEvent }
  | { kind: 'replication'; event: DmsReplicationStateChangeEvent };

export function parseDmsStateChangeEvent(event: unknown): Parsed {
  const isServerless =
    (event as { 'detail-type'?: unknown } | null)?.['detail-type'] === 'DMS Replication State Change';
  const parsed = (isServerless ? replicationStateChange : taskStateChange).safeParse(event);
  if (parsed.success)
    return isServerless
      ? { kind: 'replication', event: parsed.data as DmsReplicationStateChangeEvent }
      : { kind: 'task', event: parsed.data as DmsTaskStateChangeEvent };
  const issue = parsed.error.issues[0]!;
  const field = issue.path.join('.') || 'event';
  throw new InvalidInputError(
    `not a DMS Replication Task State Change nor a DMS Replication State Change: ${field}: ${issue.message}`,
    {
      field,
      hint: 'the rules should match source aws.dms and detail-type "DMS Replication Task State Change" or "DMS Replication State Change" only',
    },
  );
}

type DmsEventDeps = Parameters<typeof handleDmsReplicationStateChange>[1] &
  Parameters<typeof handleDmsTaskStateChange>[1];

export function createHandler(deps: () => DmsEventDeps) {
  return middy<unknown, DmsEventResult>().handler(async (event) => {
    const parsed = parseDmsStateChangeEvent(event);
    return parsed.kind === 'task'
      ? handleDmsTaskStateChange(parsed.event, deps())
      : handleDmsReplicationStateChange(parsed.event, deps());
  });
}

/** The store, callbacks and DMS client every task uses, made once per Lambda container on the first event. */
let deps: DmsEventDeps | undefined;
export const handler = createHandler(() => {
  if (!deps) {
    const aws = awsTaskDeps();
    const { store } = aws;
    if (!store.findCorrelation || !store.takeTaskToken || !store.putTaskToken)
      throw new InvalidInputError('the deployed store keeps no correlation items or task tokens', {
        field: 'store',
        hint: 'deploy with the DynamoDB store',
      });
    deps = {
      store: {
        findCorrelation: store.findCorrelation.bind(store),
        takeTaskToken: store.takeTaskToken.bind(store),
        putTaskToken: store.putTaskToken.bind(store),
      },
      callbacks: aws.callbacks,
      log: aws.log,
      describeReplication: (arn) => dmsReplicationStatus(aws.clients.dms, arn),
      describeTask: (arn) => dmsTaskStatus(aws.clients.dms, arn),
    };
  }
  return deps;
});
