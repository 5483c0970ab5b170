/**
 * EventBridge `RDS DB Instance Event` → the `Provision target` step's task token (packages/aws/src/rds.ts).
 * An event that is not one fails the invocation (the rule's DLQ keeps it); every other outcome,
 * ignored ones included, is returned and logged.
 */
import { RDSClient } from '@aws-sdk/client-rds';
import { SFNClient } from '@aws-sdk/client-sfn';
import middy from '@middy/core';
import {
  handleRdsInstanceEvent,
  parseRdsInstanceEvent,
  type RdsEventDeps,
  type RdsEventOutcome,
  SfnTaskCallbacks,
} from '@pgferry/aws';
import { type MigrationStore, PgferryError } from '@pgferry/core';

export function createHandler(deps: () => RdsEventDeps | Promise<RdsEventDeps>) {
  return middy<unknown, RdsEventOutcome>().handler(async (event) =>
    handleRdsInstanceEvent(parseRdsInstanceEvent(event), await deps()),
  );
}

/** Clients made once per Lambda container, on the first event. */
let deps: RdsEventDeps | undefined;

/**
 * The deployed handler's store. The DynamoDB store is not part of this module's build yet: until it
 * is wired here, the deployed handler fails every event loudly (and the DLQ keeps them).
 */
function migrationStore(): MigrationStore {
  throw new PgferryError('rds-instance-event: no MigrationStore is wired into the deployed handler', {
    hint: 'wire DynamoMigrationStore (packages/aws/src/dynamo-store.ts) into functions/rds-instance-event.ts',
  });
}

export const handler = createHandler(() => {
  deps ??= {
    rds: new RDSClient({}),
    callbacks: new SfnTaskCallbacks(new SFNClient({})),
    store: migrationStore(),
    log: (message) => console.log(message),
  };
  return deps;
});
