/**
 * EventBridge `DMS Replication Task State Change` → the bulk load's task token (strategy `dms`,
 * packages/aws/src/dms.ts `handleDmsTaskStateChange`). An event that is not one fails the invocation
 * (the rule's DLQ keeps it); every other outcome, ignored ones included, is returned and logged.
 */
import middy from '@middy/core';
import { type DmsEventResult, type DmsTaskStateChangeEvent, handleDmsTaskStateChange } from '@pgferry/aws';
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

export function parseDmsTaskStateChangeEvent(event: unknown): DmsTaskStateChangeEvent {
  const parsed = taskStateChange.safeParse(event);
  if (parsed.success) return parsed.data as DmsTaskStateChangeEvent;
  const issue = parsed.error.issues[0]!;
  const field = issue.path.join('.') || 'event';
  throw new InvalidInputError(`not a DMS Replication Task State Change: ${field}: ${issue.message}`, {
    field,
    hint: 'the rule should match source aws.dms and detail-type "DMS Replication Task State Change" only',
  });
}

type DmsEventDeps = Parameters<typeof handleDmsTaskStateChange>[1];

export function createHandler(deps: () => DmsEventDeps) {
  return middy<unknown, DmsEventResult>().handler(async (event) =>
    handleDmsTaskStateChange(parseDmsTaskStateChangeEvent(event), deps()),
  );
}

/** The store and callbacks every task uses, made once per Lambda container on the first event. */
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
    };
  }
  return deps;
});
