/**
 * EventBridge `Object Created` on the artifacts bucket → the upload step's task token
 * (packages/aws/src/artifacts.ts `handleS3ObjectCreated`: the object is read back and completes the
 * step only with its sha256/size metadata, once). An event that is not one fails the invocation (the
 * rule's DLQ keeps it); every other outcome, ignored ones included, is returned and logged.
 */
import { S3Client } from '@aws-sdk/client-s3';
import middy from '@middy/core';
import { handleS3ObjectCreated, parseS3ObjectCreatedEvent, type S3EventDeps, type S3EventOutcome } from '@pgferry/aws';
import { awsTaskDeps } from '../lib/aws-deps';

export function createHandler(deps: () => S3EventDeps | Promise<S3EventDeps>) {
  return middy<unknown, S3EventOutcome>().handler(async (event) =>
    handleS3ObjectCreated(parseS3ObjectCreatedEvent(event), await deps()),
  );
}

/** Clients made once per Lambda container, on the first event: the store and callbacks every task uses. */
let deps: S3EventDeps | undefined;

export const handler = createHandler(() => {
  if (!deps) {
    const aws = awsTaskDeps();
    deps = {
      s3: new S3Client({}),
      bucket: aws.env.bucketName,
      callbacks: aws.callbacks,
      store: aws.store,
      log: aws.log,
    };
  }
  return deps;
});
