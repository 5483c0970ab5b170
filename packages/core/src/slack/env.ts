/**
 * What the stack tells the Slack functions (environment variables): ARNs and ids only. The signing
 * secret and the bot token themselves stay in Secrets Manager and are read at run time.
 */
import { InvalidInputError } from '../errors';
import { SLACK_CHANNEL_ID, SLACK_USER_ID } from '../plan';
import type { SlackAccess } from './authorize';

export const SLACK_ENV = {
  signingSecretArn: 'PGFERRY_SLACK_SIGNING_SECRET_ARN',
  botTokenArn: 'PGFERRY_SLACK_BOT_TOKEN_ARN',
  /** Comma-separated Slack member ids allowed to use /pgferry. */
  users: 'PGFERRY_SLACK_USERS',
  /** Comma-separated channel ids whose members may use /pgferry. */
  channels: 'PGFERRY_SLACK_CHANNELS',
  /** Where a migration's message goes when it was not started from Slack (optional). */
  channel: 'PGFERRY_SLACK_CHANNEL',
  /** The state machine the commands start, stop and complete tokens of. */
  stateMachineArn: 'PGFERRY_STATE_MACHINE_ARN',
  /** The function the endpoints hand the work on to (asynchronously). */
  workerFunction: 'PGFERRY_SLACK_WORKER',
} as const;

export interface SlackEnv {
  signingSecretArn?: string;
  botTokenArn?: string;
  access: SlackAccess;
  channel?: string;
  stateMachineArn?: string;
  workerFunction?: string;
}

const ids = (value: string | undefined, pattern: RegExp, variable: string, what: string): string[] => {
  const list = (value ?? '')
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
  const bad = list.find((x) => !pattern.test(x));
  if (bad)
    throw new InvalidInputError(`${variable}: "${bad.slice(0, 40)}" is not a Slack ${what} id`, {
      field: variable,
      hint: `a comma-separated list of Slack ${what} ids (${what === 'member' ? 'U024BE7LH' : 'C024BE91L'}), not names`,
    });
  return list;
};

/** The Slack part of the environment; each function checks that what it needs is there (`required`). */
export function slackEnv(env: NodeJS.ProcessEnv = process.env): SlackEnv {
  const value = (key: keyof typeof SLACK_ENV) => env[SLACK_ENV[key]] || undefined;
  const channel = value('channel');
  if (channel) ids(channel, SLACK_CHANNEL_ID, SLACK_ENV.channel, 'channel');
  return {
    signingSecretArn: value('signingSecretArn'),
    botTokenArn: value('botTokenArn'),
    access: {
      users: ids(value('users'), SLACK_USER_ID, SLACK_ENV.users, 'member'),
      channels: ids(value('channels'), SLACK_CHANNEL_ID, SLACK_ENV.channels, 'channel'),
    },
    channel,
    stateMachineArn: value('stateMachineArn'),
    workerFunction: value('workerFunction'),
  };
}

/** `env[key]`, or an error naming the variable (the stack sets it on the functions that use it). */
export function requiredSlackEnv<K extends 'signingSecretArn' | 'botTokenArn' | 'stateMachineArn' | 'workerFunction'>(
  env: SlackEnv,
  key: K,
): string {
  const v = env[key];
  if (!v)
    throw new InvalidInputError(`${SLACK_ENV[key]} not set`, {
      field: SLACK_ENV[key],
      hint: 'the stack sets it on the Slack functions: deploy with the PGFERRY_SLACK_* variables (README "Slack")',
    });
  return v;
}
