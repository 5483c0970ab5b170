/**
 * Named migration plans: what `/pgferry start <plan>` (and `pgferry plan put`) needs to begin a
 * migration without anyone typing a URL. A plan names secrets by ARN and never holds one: the source's
 * credentials stay in Secrets Manager, and an unknown key (a `password`, say) is refused, not ignored.
 */
import { z } from 'zod';
import { DEFAULTS, type MigrationConfig, parseMigrationConfig } from './config';
import { switchTargetSchema } from './connection-switch';
import { type CutoverWindow, cutoverWindowSchema } from './cutover-window';
import { dmsComputeSchema, dmsPlanProblems, dmsSslModeSchema } from './dms';
import { InvalidInputError, PgferryError } from './errors';
import { type PlanTarget, planTargetSchema, secretArn } from './plan-target';
import { redactText } from './redact';
import { unprovisionedTargetUrl } from './secret-refs';

/** Plan names: what a person types after `/pgferry start`, and part of the store's keys. */
export const PLAN_NAME = /^[a-z][a-z0-9-]{0,47}$/;

export const PLAN_STRATEGIES = ['snapshot', 'native', 'dump', 'dms'] as const;

/** Slack member ids (U…, or W… on Enterprise Grid) and conversation ids (C…, G… private, D… direct). */
export const SLACK_USER_ID = /^[UW][A-Z0-9]{2,}$/;
export const SLACK_CHANNEL_ID = /^[CGD][A-Z0-9]{2,}$/;

const cutoverPolicy = z.discriminatedUnion(
  'policy',
  [
    /** A person approves (Slack button or `pgferry cutover`). */
    z.strictObject({ policy: z.literal('manual') }),
    /** As soon as the gate opens. */
    z.strictObject({ policy: z.literal('auto') }),
    /** As soon as the gate opens inside the window. */
    z.strictObject({ policy: z.literal('window'), ...cutoverWindowSchema.shape }),
  ],
  { error: 'cutover.policy must be manual, auto or window' },
);

/**
 * With strategy dms: the role DMS reads the plan's source and target secrets with, and what DMS runs
 * on. The secrets themselves are the plan's `source.secretArn` and `target.secretArn`.
 */
const planDmsSchema = z.strictObject(
  {
    secretsAccessRoleArn: z.string({
      error: 'dms.secretsAccessRoleArn is required: the ARN of the IAM role DMS assumes to read the two secrets',
    }),
    compute: dmsComputeSchema,
    sslMode: dmsSslModeSchema.optional(),
  },
  {
    error:
      'dms must be an object: { secretsAccessRoleArn, compute: { kind: "instance", replicationInstanceArn } or { kind: "serverless", maxCapacityUnits, replicationSubnetGroupId } }',
  },
);

export const migrationPlanSchema = z
  .strictObject({
    name: z
      .string({ error: 'name is required' })
      .regex(PLAN_NAME, 'name must be 1-48 characters of a-z, 0-9 and -, starting with a letter'),
    description: z
      .string()
      .max(500, 'description must be at most 500 characters')
      // Plans are stored and shown as they are: a password has no place in one, not even in prose.
      .refine((d) => redactText(d) === d, 'description holds a password (a URL or password literal): take it out')
      .optional(),
    source: z.strictObject(
      { secretArn: secretArn('source.secretArn') },
      { error: 'source is required: { "secretArn": "<the source credentials secret ARN>" }' },
    ),
    target: planTargetSchema,
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
    /** Fargate workers the snapshot copy is split over (1: the coordinator copies everything). */
    copyWorkers: z
      .number({ error: 'copyWorkers must be a number' })
      .int('copyWorkers must be a whole number')
      .min(1, 'copyWorkers must be at least 1')
      .max(32, 'copyWorkers must be at most 32')
      .optional(),
    dms: planDmsSchema.optional(),
    /**
     * After the cutover and its verification: `automatic` cleans up once the bake is over (the
     * source's slot, publication and reverse replication removed: no way back after that), `manual`
     * leaves it to a person (`pgferry cleanup`). Default manual.
     */
    cleanup: z
      .enum(['manual', 'automatic'], {
        error: 'cleanup must be "manual" (a person runs pgferry cleanup) or "automatic" (after the bake)',
      })
      .default('manual'),
    /** The bake before an automatic clean-up, in seconds: the application runs on the target, the way back kept. */
    bakeSeconds: z
      .number({ error: 'bakeSeconds must be a number of seconds, e.g. 86400 for a day' })
      .int('bakeSeconds must be a whole number of seconds')
      .min(0, 'bakeSeconds must be at least 0')
      .max(DEFAULTS.maxBakeSeconds, `bakeSeconds must be at most ${DEFAULTS.maxBakeSeconds} (30 days)`)
      .optional(),
    limits: z
      .strictObject({
        maxLagMs: z.number().int().min(1, 'limits.maxLagMs must be at least 1').default(DEFAULTS.maxLagMs),
        maxLagBytes: z.number().int().min(1, 'limits.maxLagBytes must be at least 1').default(DEFAULTS.maxLagBytes),
        maxDrainMs: z.number().int().min(10, 'limits.maxDrainMs must be at least 10').default(DEFAULTS.maxDrainMs),
      })
      .optional(),
  })
  .superRefine((plan, ctx) => {
    dmsPlanIssues(plan, ctx);
    if (plan.bakeSeconds !== undefined && plan.cleanup !== 'automatic')
      ctx.addIssue({
        code: 'custom',
        path: ['bakeSeconds'],
        message:
          'bakeSeconds is the wait before an automatic clean-up: set "cleanup": "automatic", or leave bakeSeconds out',
      });
    if (plan.switch.kind === 'secret' && plan.switch.secretArn === plan.source.secretArn)
      ctx.addIssue({
        code: 'custom',
        path: ['switch', 'secretArn'],
        message:
          "switch.secretArn is the source's own credentials secret; the switch rewrites the secret the application reads, which must be another one",
      });
  });

/** What a plan with strategy dms needs, each problem on its field, so that `plan put` refuses what `start` could not run. */
function dmsPlanIssues(
  plan: { strategy: string; dms?: z.output<typeof planDmsSchema>; source: { secretArn: string }; target: PlanTarget },
  ctx: z.RefinementCtx,
) {
  if (plan.strategy !== 'dms') {
    if (plan.dms)
      ctx.addIssue({
        code: 'custom',
        path: ['dms'],
        message: `dms is only for strategy dms (strategy is ${plan.strategy})`,
      });
    return;
  }
  if (!plan.dms) {
    ctx.addIssue({
      code: 'custom',
      path: ['dms'],
      message:
        'dms is required with strategy dms: { secretsAccessRoleArn, compute: { kind: "instance", replicationInstanceArn } or { kind: "serverless", maxCapacityUnits, replicationSubnetGroupId } }',
    });
    return;
  }
  // DMS reads host and port from the secret; RDS's master secret of a new instance holds neither.
  if (plan.target.kind === 'new') {
    ctx.addIssue({
      code: 'custom',
      path: ['target', 'kind'],
      message:
        'target.kind must be existing with strategy dms: DMS reads the host and port from the target secret, and the master secret RDS makes for a new instance holds only username and password. Create the instance, store a secret with host, port, username and password, and name both as an existing target',
    });
  }
  const targetSecretArn = plan.target.kind === 'existing' ? plan.target.secretArn : plan.source.secretArn;
  // (The two secrets are the plan's own fields, checked there.)
  for (const p of dmsPlanProblems({
    ...plan.dms,
    sourceSecretArn: plan.source.secretArn,
    targetSecretArn,
    migrationId: 'm',
    sourceDatabase: 'db',
    targetDatabase: 'db',
  }))
    if (p.field !== 'sourceSecretArn' && p.field !== 'targetSecretArn')
      ctx.addIssue({ code: 'custom', path: ['dms', ...p.field.split('.')], message: `dms.${p.message}` });
}

export type MigrationPlanInput = z.input<typeof migrationPlanSchema>;
export type MigrationPlan = z.output<typeof migrationPlanSchema>;

/** The bake an automatic clean-up waits (the plan's, or the default day); undefined when clean-up is manual. */
export function planBakeSeconds(plan: MigrationPlan): number | undefined {
  return plan.cleanup === 'automatic' ? (plan.bakeSeconds ?? DEFAULTS.bakeSeconds) : undefined;
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

/** The field of a plan's first problem (an unknown key by its own path: `source.password`), if any. */
export function planIssueField(error: z.ZodError): string | undefined {
  const first = error.issues[0];
  return first?.code === 'unrecognized_keys'
    ? [...first.path.map(String), first.keys[0]].join('.')
    : first?.path.map(String).join('.') || undefined;
}

/** Validate a plan; InvalidInputError names every bad field at once (`field`: the first). */
export function parseMigrationPlan(input: unknown): MigrationPlan {
  const result = migrationPlanSchema.safeParse(input);
  if (result.success) return result.data;
  const field = planIssueField(result.error);
  throw new InvalidInputError(`invalid migration plan: ${planProblems(result.error).join('; ')}`, {
    field,
    hint: 'a plan holds name, source.secretArn, target (kind new or existing), strategy, cutover.policy, switch (kind secret, ssm-parameter or route53), approvers, and with strategy dms a dms block (secretsAccessRoleArn, compute)',
  });
}

/** No plan of that name is stored. */
export class PlanNotFoundError extends PgferryError {
  override name = 'PlanNotFoundError';
  override readonly exitCode = 2;
}

/** A plan name as a store keys it; anything else is refused before it names a file or an item. */
export function checkPlanName(name: string): string {
  if (typeof name !== 'string' || !PLAN_NAME.test(name))
    throw new InvalidInputError(
      `plan name "${String(name).slice(0, 80)}" is not a plan name: 1-48 characters of a-z, 0-9 and -, starting with a letter`,
      { field: 'plan', hint: 'run `pgferry plan list` to see the stored plans' },
    );
  return name;
}

export function planNotFoundError(name: string, where: string): PlanNotFoundError {
  return new PlanNotFoundError(`no plan named ${name} in ${where}`, {
    field: 'plan',
    hint: 'run `pgferry plan list` to see the stored plans, or store one with `pgferry plan put FILE`',
  });
}

/**
 * A plan as a store read it, validated again: a plan edited by hand (a file, an item) that no longer
 * passes is refused with its name and the field that is wrong, never used half-checked.
 */
export function storedPlan(name: string, value: unknown, where: string): MigrationPlan {
  const result = migrationPlanSchema.safeParse(value);
  if (!result.success) {
    const field = planIssueField(result.error);
    throw new InvalidInputError(
      `the stored plan ${name} in ${where} is invalid: ${planProblems(result.error).join('; ')}`,
      {
        field: field ? `plan.${field}` : 'plan',
        hint: `fix the plan and store it again with \`pgferry plan put FILE\``,
      },
    );
  }
  if (result.data.name !== name)
    throw new InvalidInputError(`the stored plan ${name} in ${where} is named ${result.data.name} inside`, {
      field: 'plan.name',
      hint: `store it again with \`pgferry plan put FILE\``,
    });
  return result.data;
}

/**
 * A new migration's config from its plan: the secrets by ARN (the target's once known: an existing
 * instance's secret now, a new instance's after "Provision target"), the target to provision, the
 * switch, the strategy, cutover policy, copy workers and limits. No URL with a password anywhere.
 */
export function migrationConfigFromPlan(plan: MigrationPlan, migrationId: string): MigrationConfig {
  const target = plan.target;
  return parseMigrationConfig({
    id: migrationId,
    strategy: plan.strategy,
    // A window: automatic, but the gate opens only inside the window (gateStep).
    cutover: plan.cutover.policy === 'manual' ? 'manual' : 'auto',
    ...(plan.cutover.policy === 'window' ? { cutoverWindow: windowOf(plan.cutover) } : {}),
    copyWorkers: plan.copyWorkers ?? 1,
    ...(plan.limits ?? {}),
    secrets: {
      source: { secretArn: plan.source.secretArn },
      ...(target.kind === 'existing' ? { target: { secretArn: target.secretArn } } : {}),
    },
    ...(target.kind === 'new' ? { targetUrl: unprovisionedTargetUrl(target.dbName) } : {}),
    target,
    switch: plan.switch,
    // DMS reads the same two secrets the tasks connect with (the schema refuses a new target with dms).
    ...(plan.dms && target.kind === 'existing'
      ? { dms: { ...plan.dms, sourceSecretArn: plan.source.secretArn, targetSecretArn: target.secretArn } }
      : {}),
    ...(plan.cleanup === 'automatic' ? { autoCleanup: { bakeSeconds: planBakeSeconds(plan) } } : {}),
  });
}

function windowOf({ start, end, timezone, days }: CutoverWindow & { policy: 'window' }): CutoverWindow {
  return { start, end, timezone, ...(days ? { days } : {}) };
}
