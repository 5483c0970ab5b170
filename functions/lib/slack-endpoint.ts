/**
 * The two Slack endpoints (API Gateway HTTP API, payload 2.0): the raw body (decoded when API Gateway
 * base64-encoded it) goes to core's request functions, which check the signature before anything is
 * parsed; what is to be done is handed on to the worker, and Slack gets its answer at once.
 */
import middy from '@middy/core';
import { clickWork, type SlackResponse, type SlackWork } from '@pgferry/aws';
import {
  interactionRequest,
  type ReplayCache,
  type SlackAccess,
  type SlackRequest,
  slashCommandRequest,
} from '@pgferry/core';
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';

export interface SlackEndpointDeps {
  signingSecret(): Promise<string>;
  replayCache: ReplayCache;
  /** The configured Slack users and channels (a migration's plan approvers are checked by the worker). */
  access: SlackAccess;
  /** Starts the work without waiting for it (an asynchronous invocation of the worker). */
  handOff(work: SlackWork): Promise<void>;
  /** Answers a click through its response_url (Slack shows nothing of a click's HTTP answer). */
  respond(url: string, response: SlackResponse): Promise<void>;
  log(message: string): void;
}

export type SlackEndpoint = 'commands' | 'interactions';

function header(event: APIGatewayProxyEventV2, name: string): string | undefined {
  // HTTP APIs lower-case header names; a test or another integration may not.
  for (const [key, value] of Object.entries(event.headers ?? {})) if (key.toLowerCase() === name) return value;
  return undefined;
}

/** The bytes Slack signed: API Gateway base64-encodes a body it does not take for text. */
export function slackRequest(event: APIGatewayProxyEventV2): SlackRequest {
  const body = event.body ?? '';
  return {
    rawBody: event.isBase64Encoded ? Buffer.from(body, 'base64') : body,
    timestamp: header(event, 'x-slack-request-timestamp'),
    signature: header(event, 'x-slack-signature'),
  };
}

const json = (body: unknown): APIGatewayProxyStructuredResultV2 => ({
  statusCode: 200,
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(body),
});

export function createSlackEndpoint(endpoint: SlackEndpoint, deps: () => SlackEndpointDeps) {
  return middy<APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2>().handler(async (event) => {
    const d = deps();
    const request = slackRequest(event);
    // Slack re-sends a request it got no answer to in time, marked X-Slack-Retry-Num: the first copy
    // was acted on (or is being), so a retry is answered and acted on never.
    const retry = header(event, 'x-slack-retry-num');
    const options = { signingSecret: await d.signingSecret(), replayCache: d.replayCache, access: d.access };
    if (endpoint === 'commands') {
      const outcome = await slashCommandRequest(request, options);
      if (outcome.status === 401) return refused(d, endpoint, outcome.reason, retry);
      if (outcome.act && outcome.act.kind !== 'help' && outcome.actor && !retry)
        await d.handOff({
          command: outcome.act,
          actor: outcome.actor,
          via: 'command',
          responseUrl: outcome.responseUrl,
          requestKey: request.signature,
        });
      return json(outcome.reply);
    }
    const outcome = await interactionRequest(request, options);
    if (outcome.status === 401) return refused(d, endpoint, outcome.reason, retry);
    if (retry) return { statusCode: 200 };
    if (outcome.act && outcome.actor) await d.handOff(clickWork(outcome.act, outcome.actor, outcome.responseUrl));
    else if (outcome.responseUrl) await d.respond(outcome.responseUrl, { text: outcome.reply.text });
    return { statusCode: 200 };
  });
}

function refused(
  d: SlackEndpointDeps,
  endpoint: SlackEndpoint,
  reason: string,
  retry: string | undefined,
): APIGatewayProxyStructuredResultV2 {
  if (retry && reason === 'replayed') return { statusCode: 200 };
  // The reason only: nothing of the request (it is not known to come from Slack) and no secret.
  d.log(`slack: refused a request to /slack/${endpoint}: ${reason}`);
  return { statusCode: 401, body: 'not a verified Slack request' };
}
