/**
 * pgferry bus events → the migration's one Slack message: posted on its first event, updated in place
 * after (packages/aws updateSlackMessage). The stack runs one invocation at a time, so that two events
 * of a new migration cannot both post.
 */
import middy from '@middy/core';
import { type MessageOutcome, updateSlackMessage } from '@pgferry/aws';
import { EVENT_SOURCE, EVENT_TYPES, MIGRATION_ID, type PgferryEventType } from '@pgferry/core';
import { z } from 'zod';
import { awsClients } from '../lib/aws-deps';
import { parseEvent } from '../lib/parse';
import { slackMessageDeps } from '../lib/slack-deps';

const busEvent = z.object({
  source: z.literal(EVENT_SOURCE),
  'detail-type': z.enum(EVENT_TYPES as [PgferryEventType, ...PgferryEventType[]]),
  detail: z.looseObject({ migrationId: z.string().regex(MIGRATION_ID) }),
});

type MessageDeps = Parameters<typeof updateSlackMessage>[1];

export function createHandler(deps: () => MessageDeps) {
  return middy<unknown, MessageOutcome>().handler(async (event) => {
    const parsed = parseEvent(
      busEvent,
      event,
      'not a pgferry bus event',
      `the rule should match source ${EVENT_SOURCE} on the pgferry bus only`,
    );
    return updateSlackMessage({ type: parsed['detail-type'], detail: parsed.detail }, deps());
  });
}

let deps: MessageDeps | undefined;
export const handler = createHandler(() => (deps ??= slackMessageDeps(awsClients())));
