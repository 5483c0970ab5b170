/**
 * Who may act through Slack: configured member ids and channel ids (a channel admits everyone in
 * it). A refusal changes nothing and says so; `help` is the one command anyone may run.
 */
import type { SlackCommandKind } from './commands';
import { escapeMrkdwn } from './text';

export interface SlackActor {
  userId: string;
  /** The conversation the command was typed in, or the button clicked in. */
  channelId?: string;
}

export interface SlackAccess {
  users: readonly string[];
  channels: readonly string[];
}

export type Authorization = { allowed: true; by: 'user' | 'channel' | 'anyone' } | { allowed: false; message: string };

const VERBS: Record<SlackCommandKind, string> = {
  start: 'start migrations',
  status: 'read migration status',
  approve: 'approve cutovers',
  rollback: 'roll migrations back',
  abort: 'abort migrations',
  resume: 'resume migrations',
  help: 'read the help',
};

export function authorizeSlack(actor: SlackActor, access: SlackAccess, command: SlackCommandKind): Authorization {
  if (command === 'help') return { allowed: true, by: 'anyone' };
  if (actor.userId && access.users.includes(actor.userId)) return { allowed: true, by: 'user' };
  if (actor.channelId && access.channels.includes(actor.channelId)) return { allowed: true, by: 'channel' };
  return {
    allowed: false,
    message: `Sorry <@${escapeMrkdwn(actor.userId)}>, you are not allowed to ${VERBS[command]} with pgferry here, so nothing was changed. pgferry takes commands only from the Slack members and channels its deployment lists (PGFERRY_SLACK_USERS, PGFERRY_SLACK_CHANNELS): ask whoever deploys it.`,
  };
}
