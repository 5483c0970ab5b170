import {
  InvalidInputError,
  SLACK_CHANNEL_ID,
  SLACK_ENV,
  SLACK_USER_ID,
  type SwitchTarget,
  switchTargetSchema,
} from '@pgferry/core';
import { z } from 'zod';

/**
 * What a deployment needs to know about the account it lands in. The network is the customer's: the
 * functions and the worker run in the subnets that reach both the source and the RDS target, so the
 * stack never creates a VPC of its own.
 */
export interface DeployConfig {
  vpcId: string;
  /** Private subnets (with a route to the source, the target, and AWS APIs through NAT or endpoints). */
  subnetIds: string[];
  /** Security groups the source and the target accept PostgreSQL connections from. */
  securityGroupIds: string[];
  /** Secrets Manager names the tasks may read (credentials are given by ARN at run time). */
  secretNamePrefix: string;
  /** The WAL-retained alarm fires above this many bytes (the source's disk is what it protects). */
  walRetainedAlarmBytes: number;
  /** Where alarms are mailed; without it they go to the SNS topic only. */
  alarmEmail?: string;
  /**
   * The secret, SSM parameter or CNAME the application reads its connection from (a plan's `switch`):
   * the cutover and rollback functions may change exactly that resource, and none without it.
   */
  switchTarget?: SwitchTarget;
  /** Slack (optional, both or neither): the secrets holding the app's signing secret and its xoxb- bot token, by full ARN. */
  slackSigningSecretArn?: string;
  slackBotTokenArn?: string;
  /** Slack member ids and channel ids allowed to use /pgferry (a plan's approvers narrow approve/rollback/abort). */
  slackUsers?: string[];
  slackChannels?: string[];
  /** The channel a migration's message goes to when it was not started from Slack. */
  slackChannel?: string;
}

/** The variables `sst deploy` and `npm run synth` read, by field. */
export const DEPLOY_ENV = {
  vpcId: 'PGFERRY_VPC_ID',
  subnetIds: 'PGFERRY_SUBNET_IDS',
  securityGroupIds: 'PGFERRY_SECURITY_GROUP_IDS',
  secretNamePrefix: 'PGFERRY_SECRET_PREFIX',
  walRetainedAlarmBytes: 'PGFERRY_WAL_RETAINED_ALARM_BYTES',
  alarmEmail: 'PGFERRY_ALARM_EMAIL',
  switchTarget: 'PGFERRY_SWITCH',
  slackSigningSecretArn: SLACK_ENV.signingSecretArn,
  slackBotTokenArn: SLACK_ENV.botTokenArn,
  slackUsers: SLACK_ENV.users,
  slackChannels: SLACK_ENV.channels,
  slackChannel: SLACK_ENV.channel,
} as const satisfies Record<keyof DeployConfig, string>;

const DEFAULT_WAL_RETAINED_ALARM_BYTES = 20 * 1024 ** 3;

const idList = (prefix: string) =>
  z
    .string()
    .transform((s) =>
      s
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean),
    )
    .pipe(z.array(z.string().regex(new RegExp(`^${prefix}-[0-9a-f]+$`), `expected ${prefix}-… ids`)).min(1));

const slackIds = (pattern: RegExp, example: string) =>
  z
    .string()
    .transform((s) =>
      s
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean),
    )
    .pipe(z.array(z.string().regex(pattern, `expected Slack ids such as ${example} (not names)`)));

/** A whole secret ARN (with the 6-character suffix Secrets Manager adds): the policy names exactly it. */
const fullSecretArn = z
  .string()
  .regex(
    /^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$/,
    'expected the full secret ARN, ending in its 6-character suffix (arn:aws:secretsmanager:…:secret:name-AbCdEf)',
  );

const schema = z
  .object({
    vpcId: z.string().regex(/^vpc-[0-9a-f]+$/, 'expected vpc-…'),
    subnetIds: idList('subnet'),
    securityGroupIds: idList('sg'),
    secretNamePrefix: z
      .string()
      .regex(/^[A-Za-z0-9/_+=.@-]+$/, 'expected a Secrets Manager name prefix such as pgferry/')
      .default('pgferry/'),
    walRetainedAlarmBytes: z.coerce.number().int().positive().default(DEFAULT_WAL_RETAINED_ALARM_BYTES),
    alarmEmail: z.email().optional(),
    switchTarget: z
      .string()
      .transform((s, ctx) => {
        try {
          return JSON.parse(s) as unknown;
        } catch {
          ctx.addIssue({ code: 'custom', message: 'expected JSON such as {"kind":"secret","secretArn":"arn:…"}' });
          return z.NEVER;
        }
      })
      .pipe(switchTargetSchema)
      .optional(),
    slackSigningSecretArn: fullSecretArn.optional(),
    slackBotTokenArn: fullSecretArn.optional(),
    slackUsers: slackIds(SLACK_USER_ID, 'U024BE7LH').optional(),
    slackChannels: slackIds(SLACK_CHANNEL_ID, 'C024BE91L').optional(),
    slackChannel: z.string().regex(SLACK_CHANNEL_ID, 'expected a Slack channel id such as C024BE91L').optional(),
  })
  .superRefine((c, ctx) => {
    if (!c.slackSigningSecretArn !== !c.slackBotTokenArn)
      ctx.addIssue({
        code: 'custom',
        path: [c.slackSigningSecretArn ? 'slackBotTokenArn' : 'slackSigningSecretArn'],
        message: 'Slack needs both secrets (the signing secret and the bot token), or neither',
      });
    else if (c.slackSigningSecretArn && !c.slackUsers?.length && !c.slackChannels?.length)
      ctx.addIssue({
        code: 'custom',
        path: ['slackUsers'],
        message: `nobody could use /pgferry: set ${SLACK_ENV.users} or ${SLACK_ENV.channels}`,
      });
  });

/** Reads the deployment's configuration from the environment; a missing or malformed value names its variable. */
export function deployConfigFromEnv(env: NodeJS.ProcessEnv = process.env): DeployConfig {
  const raw = Object.fromEntries(
    Object.entries(DEPLOY_ENV).flatMap(([field, variable]) => (env[variable] ? [[field, env[variable]]] : [])),
  );
  const parsed = schema.safeParse(raw);
  if (parsed.success) return parsed.data;
  const problems = parsed.error.issues.map((issue) => {
    const field = String(issue.path[0]) as keyof DeployConfig;
    const unset = env[DEPLOY_ENV[field]] === undefined;
    return `${DEPLOY_ENV[field]}: ${unset ? `not set${issue.code === 'custom' ? ` (${issue.message})` : ''}` : issue.message}`;
  });
  throw new InvalidInputError(`pgferry's deployment configuration is incomplete: ${problems.join('; ')}`, {
    field: DEPLOY_ENV[String(parsed.error.issues[0]?.path[0]) as keyof DeployConfig],
    hint: `set ${DEPLOY_ENV.vpcId}, ${DEPLOY_ENV.subnetIds} (comma-separated private subnets) and ${DEPLOY_ENV.securityGroupIds} (comma-separated) before sst deploy; README "Deploy to AWS" lists every variable`,
  });
}
