/**
 * The work behind a slash command or a gate button, invoked asynchronously by the endpoints: carried
 * out (packages/aws runSlackWork), then answered to the person through the request's response_url.
 */
import middy from '@middy/core';
import { handleSlackWork, type SlackResponse, type SlackWork, type SlackWorkDeps } from '@pgferry/aws';
import { MIGRATION_ID } from '@pgferry/core';
import { z } from 'zod';
import { awsClients } from '../lib/aws-deps';
import { parseEvent } from '../lib/parse';
import { slackWorkDeps } from '../lib/slack-deps';

const id = z.string().regex(MIGRATION_ID);
const work = z.object({
  command: z.discriminatedUnion('kind', [
    z.object({ kind: z.literal('start'), plan: z.string().min(1) }),
    z.object({ kind: z.literal('status'), id: id.optional() }),
    z.object({ kind: z.enum(['approve', 'rollback', 'abort', 'resume']), id }),
  ]),
  actor: z.object({ userId: z.string().min(1), channelId: z.string().optional() }),
  via: z.enum(['command', 'button']),
  responseUrl: z.string().optional(),
  requestKey: z.string().optional(),
});

type WorkerDeps = SlackWorkDeps & { respond(url: string, response: SlackResponse): Promise<void> };

export function createHandler(deps: () => WorkerDeps) {
  return middy<unknown, SlackResponse>().handler(async (event) => {
    const parsed = parseEvent(work, event, 'not Slack work', 'this function is invoked by the Slack endpoints only');
    return handleSlackWork(parsed as SlackWork, deps());
  });
}

let deps: WorkerDeps | undefined;
export const handler = createHandler(() => (deps ??= slackWorkDeps(awsClients())));
