/**
 * EventBridge `RDS DB Instance Event` → the `Provision target` step's task token (packages/aws/src/rds.ts).
 * An event that is not one fails the invocation (the rule's DLQ keeps it); every other outcome,
 * ignored ones included, is returned and logged.
 */
import middy from '@middy/core';
import { handleRdsInstanceEvent, parseRdsInstanceEvent, type RdsEventDeps, type RdsEventOutcome } from '@pgferry/aws';
import { awsTaskDeps } from './lib/aws-deps';

export function createHandler(deps: () => RdsEventDeps | Promise<RdsEventDeps>) {
  return middy<unknown, RdsEventOutcome>().handler(async (event) =>
    handleRdsInstanceEvent(parseRdsInstanceEvent(event), await deps()),
  );
}

/** Clients made once per Lambda container, on the first event: the store and callbacks every task uses. */
let deps: RdsEventDeps | undefined;

export const handler = createHandler(() => {
  if (!deps) {
    const aws = awsTaskDeps();
    deps = { rds: aws.clients.rds, callbacks: aws.callbacks, store: aws.store, log: aws.log };
  }
  return deps;
});
