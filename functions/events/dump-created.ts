/**
 * EventBridge `Object Created` under `dumps/` in the artifacts bucket → the token of the step that
 * waits for that dump (strategy `dump`: the restore starts once the whole dump is in S3). The step
 * files `S3#<key>` as its correlation item before it waits.
 */
import middy from '@middy/core';
import { InvalidInputError } from '@pgferry/core';
import { z } from 'zod';
import { awsTaskDeps } from '../lib/aws-deps';
import { completeWaitingStep, type StepOutcome, type WaitingStepDeps } from '../lib/waiting-step';

/** The step that waits for its dump (the task table's name). */
export const DUMP_STEP = 'bulkLoad';

/** The part of an S3 `Object Created` event the handler reads (S3 User Guide, EventBridge event message structure). */
const objectCreated = z.object({
  source: z.literal('aws.s3'),
  'detail-type': z.literal('Object Created'),
  detail: z.object({
    bucket: z.object({ name: z.string().min(1) }),
    object: z.object({ key: z.string().startsWith('dumps/'), size: z.number().int().nonnegative().optional() }),
  }),
});

export function createHandler(deps: () => WaitingStepDeps) {
  return middy<unknown, StepOutcome>().handler(async (event) => {
    const parsed = objectCreated.safeParse(event);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw new InvalidInputError(
        `not an Object Created event under dumps/: ${issue.path.join('.')}: ${issue.message}`,
        {
          field: issue.path.join('.') || 'event',
          hint: 'the rule should match source aws.s3, detail-type "Object Created" and keys under dumps/ only',
        },
      );
    }
    const { bucket, object } = parsed.data.detail;
    const where = `s3://${bucket.name}/${object.key}`;
    return completeWaitingStep(deps(), `Object Created ${where}`, `S3#${object.key}`, DUMP_STEP, {
      output: {
        summary: `dump ${where} written${object.size === undefined ? '' : ` (${object.size} bytes)`}`,
        bucket: bucket.name,
        key: object.key,
        bytes: object.size ?? null,
      },
    });
  });
}

let deps: WaitingStepDeps | undefined;
export const handler = createHandler(() => (deps ??= awsTaskDeps()));
