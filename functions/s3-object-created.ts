/**
 * EventBridge `Object Created` on the artifacts bucket → the upload step's task token
 * (packages/aws/src/artifacts.ts). An event that is not one fails the invocation (the rule's DLQ
 * keeps it); every other outcome, ignored ones included, is returned and logged.
 */
import { S3Client } from '@aws-sdk/client-s3';
import middy from '@middy/core';
import { handleS3ObjectCreated, parseS3ObjectCreatedEvent, type S3EventDeps, type S3EventOutcome } from '@pgferry/aws';
import { InvalidInputError, PgferryError } from '@pgferry/core';

export function createHandler(deps: () => S3EventDeps | Promise<S3EventDeps>) {
  return middy<unknown, S3EventOutcome>().handler(async (event) =>
    handleS3ObjectCreated(parseS3ObjectCreatedEvent(event), await deps()),
  );
}

/** Clients made once per Lambda container, on the first event. */
let deps: S3EventDeps | undefined;

function notWired(what: string, where: string): never {
  throw new PgferryError(`s3-object-created: no ${what} is wired into the deployed handler`, {
    hint: `wire ${where} into functions/s3-object-created.ts`,
  });
}

export const handler = createHandler(() => {
  const bucket = process.env.ARTIFACTS_BUCKET;
  if (!bucket)
    throw new InvalidInputError('ARTIFACTS_BUCKET is not set', {
      field: 'ARTIFACTS_BUCKET',
      hint: "set the function's environment to the artifacts bucket's name",
    });
  deps ??= {
    s3: new S3Client({}),
    bucket,
    // Until the AWS adapters are wired here, the deployed handler fails every event loudly (the DLQ keeps them).
    callbacks: notWired('TaskCallbacks', 'SfnTaskCallbacks (packages/aws/src/callbacks.ts)'),
    store: notWired('MigrationStore', 'DynamoMigrationStore (packages/aws/src/dynamo-store.ts)'),
    log: (message) => console.log(message),
  };
  return deps;
});
