/**
 * The two Slack endpoints' pure part, in the order that matters: the signature (before anything is
 * parsed), then the command or the click, then who is asking. What they return is the immediate answer
 * (Slack wants one within 3 s) and, when allowed, the one thing to do afterwards, asynchronously.
 */
import { MIGRATION_ID } from '../config';
import { authorizeSlack, type SlackAccess, type SlackActor } from './authorize';
import { parseSlackCommand, SLACK_USAGE, type SlackCommand } from './commands';
import { SLACK_ACTIONS } from './message';
import { type ReplayCache, type SlackRequest, SlackRequestRejectedError, verifiedSlackForm } from './signature';

export interface SlackEndpointOptions {
  signingSecret: string;
  replayCache: ReplayCache;
  /** Who may act; for a click, the plan's approvers. */
  access: SlackAccess;
  now?: number;
}

/** An ephemeral reply: only the person who typed or clicked sees it. */
export interface SlackReply {
  response_type: 'ephemeral';
  text: string;
}

export type SlackOutcome<T> =
  /** 401: not from Slack (or replayed); nothing in it was read. */
  | { status: 401; reason: SlackRequestRejectedError['reason'] }
  /** 200 with a reply, and `act` when something is to be done. */
  | { status: 200; reply: SlackReply; actor?: SlackActor; act?: T; responseUrl?: string };

const reply = (text: string): SlackReply => ({ response_type: 'ephemeral', text });

/**
 * An endpoint whose handler only ever sees a verified form: the signature is checked (and a replay
 * refused) before the body is parsed, whatever the handler does.
 */
function endpoint<T>(handle: (form: URLSearchParams, options: SlackEndpointOptions) => SlackOutcome<T>) {
  return async (request: SlackRequest, options: SlackEndpointOptions): Promise<SlackOutcome<T>> => {
    let form: URLSearchParams;
    try {
      form = await verifiedSlackForm(request, options);
    } catch (err) {
      if (err instanceof SlackRequestRejectedError) return { status: 401, reason: err.reason };
      throw err;
    }
    return handle(form, options);
  };
}

/** What the person sees at once; the work goes on afterwards. */
function ack(command: SlackCommand): string {
  switch (command.kind) {
    case 'start':
      return `Starting a migration from plan \`${command.plan}\`; its message follows in this channel.`;
    case 'status':
      return command.id ? `Looking up migration \`${command.id}\`…` : 'Listing migrations…';
    case 'approve':
      return `Approving the cutover of \`${command.id}\`…`;
    case 'rollback':
      return `Rolling back \`${command.id}\`…`;
    case 'abort':
      return `Aborting \`${command.id}\`…`;
    case 'resume':
      return `Resuming \`${command.id}\`…`;
    case 'help':
      return `Usage:\n${SLACK_USAGE}`;
  }
}

/** `/pgferry …` (application/x-www-form-urlencoded: text, user_id, channel_id, response_url, …). */
export const slashCommandRequest = endpoint<SlackCommand>((form, options) => {
  const actor: SlackActor = { userId: form.get('user_id') ?? '', channelId: form.get('channel_id') ?? undefined };
  const parsed = parseSlackCommand(form.get('text') ?? '');
  if (!parsed.ok) return { status: 200, reply: reply(parsed.message), actor };
  const { command } = parsed;
  const allowed = authorizeSlack(actor, options.access, command.kind);
  if (!allowed.allowed) return { status: 200, reply: reply(allowed.message), actor };
  // help acts on nothing: its reply is all there is.
  return {
    status: 200,
    reply: reply(ack(command)),
    actor,
    act: command.kind === 'help' ? undefined : command,
    responseUrl: form.get('response_url') ?? undefined,
  };
});

export interface GateClick {
  action: 'approve' | 'rollback';
  migrationId: string;
}

/**
 * A button click (interactivity: a form with one field, `payload`, holding JSON of type block_actions).
 * Only our two buttons with a well-formed migration id are a click; anything else is answered and ignored.
 */
export const interactionRequest = endpoint<GateClick>((form, options) => {
  let payload: {
    type?: string;
    user?: { id?: string };
    channel?: { id?: string };
    actions?: { action_id?: string; value?: string }[];
    response_url?: string;
  };
  try {
    payload = JSON.parse(form.get('payload') ?? '');
  } catch {
    return { status: 200, reply: reply('That click could not be read (no JSON payload); nothing was changed.') };
  }
  const actor: SlackActor = { userId: payload.user?.id ?? '', channelId: payload.channel?.id };
  const responseUrl = typeof payload.response_url === 'string' ? payload.response_url : undefined;
  const clicked = payload.type === 'block_actions' ? payload.actions?.[0] : undefined;
  const action =
    clicked?.action_id === SLACK_ACTIONS.approve
      ? 'approve'
      : clicked?.action_id === SLACK_ACTIONS.rollback
        ? 'rollback'
        : undefined;
  const migrationId = clicked?.value ?? '';
  if (!action || !MIGRATION_ID.test(migrationId))
    return { status: 200, reply: reply('That is not a pgferry button; nothing was changed.'), actor, responseUrl };
  const allowed = authorizeSlack(actor, options.access, action);
  if (!allowed.allowed) return { status: 200, reply: reply(allowed.message), actor, responseUrl };
  return {
    status: 200,
    reply: reply(
      action === 'approve' ? `Approving the cutover of \`${migrationId}\`…` : `Rolling back \`${migrationId}\`…`,
    ),
    actor,
    act: { action, migrationId },
    responseUrl,
  };
});
