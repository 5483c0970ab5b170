/**
 * Named migration plans: what `/pgferry start <plan>` (and `pgferry plan put`) needs to begin a
 * migration without anyone typing a URL. A plan names secrets by ARN and never holds one: the source's
 * credentials stay in Secrets Manager, and an unknown key (a `password`, say) is refused, not ignored.
 */
import { z } from 'zod';
import { DEFAULTS } from './config';
import { switchTargetSchema } from './connection-switch';
import { InvalidInputError } from './errors';

/** Plan names: what a person types after `/pgferry start`, and part of the store's keys. */
export const PLAN_NAME = /^[a-z][a-z0-9-]{0,47}$/;

export const PLAN_STRATEGIES = ['snapshot', 'native', 'dump', 'dms'] as const;

const SECRET_ARN = /^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$/;
/** Slack member ids (U…, or W… on Enterprise Grid) and conversation ids (C…, G… private, D… direct). */
export const SLACK_USER_ID = /^[UW][A-Z0-9]{2,}$/;
export const SLACK_CHANNEL_ID = /^[CGD][A-Z0-9]{2,}$/;

const secretArn = (field: string) =>
  z
    .string({ error: `${field} is required: the ARN of a Secrets Manager secret` })
    .regex(
      SECRET_ARN,
      `${field} must be a Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)`,
    );

const hhmm = (field: string) =>
  z
    .string({ error: `${field} is required, as HH:MM (24 h)` })
    .regex(/^([01]\d|2[0-3]):[0-5]\d$/, `${field} must be a time of day as HH:MM (24 h), e.g. 02:30`);

const newTarget = z.strictObject({
  kind: z.literal('new'),
  instanceClass: z
    .string({ error: 'target.instanceClass is required, e.g. db.r6g.large' })
    .regex(/^db\.[a-z0-9-]+\.[a-z0-9]+$/, 'target.instanceClass must be an RDS instance class, e.g. db.r6g.large'),
  engineVersion: z
    .string({ error: 'target.engineVersion is required, e.g. 17 or 16.4' })
    .regex(/^\d{2}(\.\d+)?$/, 'target.engineVersion must be a PostgreSQL version such as 17 or 16.4')
    .refine((v) => Number.parseInt(v, 10) >= 11, 'target.engineVersion must be 11 or newer'),
  allocatedStorageGiB: z
    .number({ error: 'target.allocatedStorageGiB is required: the storage in GiB (20 to 65536)' })
    .int('target.allocatedStorageGiB must be a whole number of GiB')
    .min(20, 'target.allocatedStorageGiB must be at least 20 (RDS minimum)')
    .max(65536, 'target.allocatedStorageGiB must be at most 65536'),
  storageType: z.enum(['gp3', 'io1', 'io2'], { error: 'target.storageType must be gp3, io1 or io2' }).default('gp3'),
  multiAz: z.boolean({ error: 'target.multiAz must be true or false' }).default(true),
  dbSubnetGroupName: z
    .string({ error: 'target.dbSubnetGroupName is required: the DB subnet group the instance goes in' })
    .min(1, 'target.dbSubnetGroupName is empty'),
  vpcSecurityGroupIds: z
    .array(z.string().regex(/^sg-[0-9a-f]{8,17}$/, 'target.vpcSecurityGroupIds holds security group ids (sg-…)'), {
      error: 'target.vpcSecurityGroupIds must be a list of security group ids',
    })
    .min(1, 'target.vpcSecurityGroupIds needs at least one security group id'),
  parameterGroupName: z.string().min(1, 'target.parameterGroupName is empty').optional(),
});

const existingTarget = z.strictObject({
  kind: z.literal('existing'),
  instanceIdentifier: z
    .string({ error: 'target.instanceIdentifier is required: the RDS DB instance identifier' })
    .regex(
      /^[a-zA-Z][a-zA-Z0-9-]{0,62}$/,
      'target.instanceIdentifier must be an RDS DB instance identifier (a letter, then letters, digits and hyphens, up to 63)',
    ),
  secretArn: secretArn('target.secretArn'),
});

const cutoverPolicy = z.discriminatedUnion(
  'policy',
  [
    /** A person approves (Slack button or `pgferry cutover`). */
    z.strictObject({ policy: z.literal('manual') }),
    /** As soon as the gate opens. */
    z.strictObject({ policy: z.literal('auto') }),
    /** As soon as the gate opens inside the window. */
    z.strictObject({
      policy: z.literal('window'),
      start: hhmm('cutover.start'),
      end: hhmm('cutover.end'),
      timezone: z
        .string({ error: 'cutover.timezone is required, e.g. Europe/Paris or UTC' })
        .refine(validTimeZone, 'cutover.timezone must be an IANA time zone such as Europe/Paris or UTC'),
      days: z
        .array(z.enum(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun']), {
          error: 'cutover.days must be a list of mon, tue, wed, thu, fri, sat, sun',
        })
        .min(1, 'cutover.days needs at least one day (or leave it out for every day)')
        .optional(),
    }),
  ],
  { error: 'cutover.policy must be manual, auto or window' },
);

export const migrationPlanSchema = z
  .strictObject({
    name: z
      .string({ error: 'name is required' })
      .regex(PLAN_NAME, 'name must be 1-48 characters of a-z, 0-9 and -, starting with a letter'),
    description: z.string().max(500, 'description must be at most 500 characters').optional(),
    source: z.strictObject(
      { secretArn: secretArn('source.secretArn') },
      { error: 'source is required: { "secretArn": "<the source credentials secret ARN>" }' },
    ),
    target: z.discriminatedUnion('kind', [newTarget, existingTarget], {
      error: 'target.kind must be new (pgferry creates the RDS instance) or existing (an instance you made)',
    }),
    strategy: z
      .enum(PLAN_STRATEGIES, { error: `strategy must be one of ${PLAN_STRATEGIES.join(', ')}` })
      .default('snapshot'),
    cutover: cutoverPolicy,
    switch: switchTargetSchema,
    approvers: z
      .strictObject(
        {
          users: z
            .array(
              z.string().regex(SLACK_USER_ID, 'approvers.users holds Slack member ids such as U024BE7LH (not names)'),
            )
            .default([]),
          channels: z
            .array(
              z
                .string()
                .regex(SLACK_CHANNEL_ID, 'approvers.channels holds Slack channel ids such as C024BE91L (not #names)'),
            )
            .default([]),
        },
        { error: 'approvers is required: { "users": [Slack member ids], "channels": [Slack channel ids] }' },
      )
      .refine(
        (a) => a.users.length + a.channels.length > 0,
        'approvers needs at least one Slack user or channel: nobody could approve or roll back the cutover',
      ),
    limits: z
      .strictObject({
        maxLagMs: z.number().int().min(1, 'limits.maxLagMs must be at least 1').default(DEFAULTS.maxLagMs),
        maxLagBytes: z.number().int().min(1, 'limits.maxLagBytes must be at least 1').default(DEFAULTS.maxLagBytes),
        maxDrainMs: z.number().int().min(10, 'limits.maxDrainMs must be at least 10').default(DEFAULTS.maxDrainMs),
      })
      .optional(),
  })
  .superRefine((plan, ctx) => {
    if (plan.switch.kind === 'secret' && plan.switch.secretArn === plan.source.secretArn)
      ctx.addIssue({
        code: 'custom',
        path: ['switch', 'secretArn'],
        message:
          "switch.secretArn is the source's own credentials secret; the switch rewrites the secret the application reads, which must be another one",
      });
  });

export type MigrationPlanInput = z.input<typeof migrationPlanSchema>;
export type MigrationPlan = z.output<typeof migrationPlanSchema>;

function validTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/**
 * One line per problem, each starting with the field it is about (`target.instanceClass: …`), so that
 * a plan with several mistakes is fixed in one go.
 */
export function planProblems(error: z.ZodError): string[] {
  return error.issues.map((issue) => {
    const path = issue.path.map(String).join('.');
    // An unknown key is named by its own path, not its parent's: `target.password`, not `target`.
    if (issue.code === 'unrecognized_keys')
      return issue.keys
        .map((k) => `${path ? `${path}.` : ''}${k}: not a plan field (a plan names secrets by ARN, never holds one)`)
        .join('; ');
    return path && issue.message.startsWith(path) ? issue.message : `${path || 'plan'}: ${issue.message}`;
  });
}

/** Validate a plan; InvalidInputError names every bad field at once (`field`: the first). */
export function parseMigrationPlan(input: unknown): MigrationPlan {
  const result = migrationPlanSchema.safeParse(input);
  if (result.success) return result.data;
  const first = result.error.issues[0];
  const field =
    first?.code === 'unrecognized_keys'
      ? [...first.path.map(String), first.keys[0]].join('.')
      : first?.path.map(String).join('.') || undefined;
  throw new InvalidInputError(`invalid migration plan: ${planProblems(result.error).join('; ')}`, {
    field,
    hint: 'a plan holds name, source.secretArn, target (kind new or existing), strategy, cutover.policy, switch (kind secret, ssm-parameter or route53) and approvers',
  });
}
