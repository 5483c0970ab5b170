import { describe, expect, it } from 'vitest';
import {
  cutoverWindowOpensAt,
  InvalidInputError,
  inCutoverWindow,
  type MigrationPlanInput,
  migrationConfigFromPlan,
  parseMigrationPlan,
  planBakeSeconds,
  workflowInputForConfig,
} from '../packages/core/src/index';

const ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop/source-AbCdEf';
const APP_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop/app-url-XyZ123';

function plan(overrides: Record<string, unknown> = {}): MigrationPlanInput {
  return {
    name: 'shop-to-rds',
    source: { secretArn: ARN },
    target: {
      kind: 'new',
      instanceClass: 'db.r6g.large',
      engineVersion: '17',
      allocatedStorageGiB: 200,
      dbSubnetGroupName: 'private-db',
      vpcSecurityGroupIds: ['sg-0123456789abcdef0'],
    },
    cutover: { policy: 'manual' },
    switch: { kind: 'secret', secretArn: APP_ARN },
    approvers: { users: ['U024BE7LH'], channels: [] },
    ...overrides,
  } as MigrationPlanInput;
}

const ROLE_ARN = 'arn:aws:iam::123456789012:role/pgferry-dms-secrets';
const INSTANCE_ARN = 'arn:aws:dms:eu-west-1:123456789012:rep:R3PL1CAT10N1NSTANC3';
const DMS = { secretsAccessRoleArn: ROLE_ARN, compute: { kind: 'instance', replicationInstanceArn: INSTANCE_ARN } };
const EXISTING = {
  kind: 'existing',
  instanceIdentifier: 'shop-prod-17',
  secretArn: APP_ARN.replace('app-url', 'rds-app'),
};

function problem(input: unknown): InvalidInputError {
  try {
    parseMigrationPlan(input);
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidInputError);
    return err as InvalidInputError;
  }
  throw new Error('the plan was accepted');
}

describe('migration plans', () => {
  it('accepts a complete plan and fills the defaults', () => {
    const p = parseMigrationPlan(plan());
    expect(p.strategy).toBe('snapshot');
    expect(p.target).toMatchObject({ kind: 'new', storageType: 'gp3', multiAz: true });
    expect(p.approvers).toEqual({ users: ['U024BE7LH'], channels: [] });
  });

  it('accepts an existing instance, a cutover window, an SSM parameter and a Route 53 record', () => {
    const existing = parseMigrationPlan(
      plan({
        target: { kind: 'existing', instanceIdentifier: 'shop-prod-17', secretArn: APP_ARN },
        cutover: { policy: 'window', start: '02:00', end: '04:30', timezone: 'Europe/Paris', days: ['sat', 'sun'] },
        switch: { kind: 'ssm-parameter', name: '/shop/database-url' },
        strategy: 'dms',
        dms: DMS,
      }),
    );
    expect(existing.target.kind).toBe('existing');
    expect(existing.cutover).toMatchObject({ policy: 'window', timezone: 'Europe/Paris' });
    const dns = parseMigrationPlan(
      plan({ switch: { kind: 'route53', hostedZoneId: 'Z0123456789ABCDEFGHIJ', recordName: 'db.shop.internal' } }),
    );
    expect(dns.switch).toEqual({
      kind: 'route53',
      hostedZoneId: 'Z0123456789ABCDEFGHIJ',
      recordName: 'db.shop.internal',
      ttlSeconds: 30,
    });
  });

  it.each([
    ['name', { name: 'Shop To RDS' }, /^invalid migration plan: name must be 1-48 characters/],
    [
      'source.secretArn',
      { source: { secretArn: 'shop/source' } },
      /source\.secretArn must be a Secrets Manager secret ARN/,
    ],
    ['source', { source: undefined }, /source is required/],
    [
      'target.instanceClass',
      { target: { ...(plan().target as object), instanceClass: 'r6g.large' } },
      /target\.instanceClass must be an RDS instance class/,
    ],
    [
      'target.engineVersion',
      { target: { ...(plan().target as object), engineVersion: '10' } },
      /target\.engineVersion must be 11 or newer/,
    ],
    ['target.kind', { target: { kind: 'aurora' } }, /target\.kind must be new .* or existing/],
    ['cutover.policy', { cutover: { policy: 'sometime' } }, /cutover\.policy must be manual, auto or window/],
    [
      'description',
      { description: 'old db postgres://admin:hunter2@db.example.com/shop' },
      /description holds a password/,
    ],
    [
      'cutover.timezone',
      { cutover: { policy: 'window', start: '02:00', end: '04:00', timezone: 'Mars/Olympus' } },
      /cutover\.timezone must be an IANA time zone/,
    ],
    [
      'cutover.start',
      { cutover: { policy: 'window', start: '2am', end: '04:00', timezone: 'UTC' } },
      /cutover\.start must be a time of day as HH:MM/,
    ],
    ['switch.kind', { switch: { kind: 'dns' } }, /switch\.kind must be secret, ssm-parameter or route53/],
    [
      'switch.secretArn',
      { switch: { kind: 'secret', secretArn: ARN } },
      /switch\.secretArn is the source's own credentials secret/,
    ],
    ['approvers', { approvers: { users: [], channels: [] } }, /approvers needs at least one Slack user or channel/],
    ['approvers.users.0', { approvers: { users: ['@alice'] } }, /approvers\.users holds Slack member ids/],
    ['strategy', { strategy: 'pglogical' }, /strategy must be one of snapshot, native, dump, dms/],
  ])('names %s when it is wrong', (field, overrides, message) => {
    const err = problem(plan(overrides));
    expect(err.field).toBe(field);
    expect(err.message).toMatch(message);
  });

  it("starts a dms plan on an existing target: the config carries DMS settings naming the plan's own two secrets", () => {
    const p = parseMigrationPlan(plan({ strategy: 'dms', target: EXISTING, dms: { ...DMS, sslMode: 'verify-full' } }));
    const config = migrationConfigFromPlan(p, 'shop1');
    expect(config.strategy).toBe('dms');
    expect(config.dms).toEqual({
      sourceSecretArn: ARN,
      targetSecretArn: EXISTING.secretArn,
      secretsAccessRoleArn: ROLE_ARN,
      compute: { kind: 'instance', replicationInstanceArn: INSTANCE_ARN },
      sslMode: 'verify-full',
    });
    expect(config.secrets).toMatchObject({ source: { secretArn: ARN }, target: { secretArn: EXISTING.secretArn } });
  });

  it.each([
    ['dms', { strategy: 'dms', target: EXISTING }, /dms is required with strategy dms/],
    ['dms', { strategy: 'native', dms: DMS }, /dms is only for strategy dms \(strategy is native\)/],
    [
      'target.kind',
      { strategy: 'dms', dms: DMS },
      /target\.kind must be existing with strategy dms: DMS reads the host and port from the target secret/,
    ],
    [
      'dms.secretsAccessRoleArn',
      { strategy: 'dms', target: EXISTING, dms: { ...DMS, secretsAccessRoleArn: 'pgferry-dms' } },
      /dms\.secretsAccessRoleArn must be the ARN of the role DMS assumes/,
    ],
    [
      'dms.compute.replicationInstanceArn',
      {
        strategy: 'dms',
        target: EXISTING,
        dms: { ...DMS, compute: { kind: 'instance', replicationInstanceArn: 'r1' } },
      },
      /dms\.compute\.replicationInstanceArn must be the ARN of a DMS replication instance/,
    ],
    [
      'dms.compute.maxCapacityUnits',
      {
        strategy: 'dms',
        target: EXISTING,
        dms: { ...DMS, compute: { kind: 'serverless', maxCapacityUnits: 12, replicationSubnetGroupId: 'g' } },
      },
      /dms\.compute\.maxCapacityUnits must be one of 1, 2, 4, 8, 16/,
    ],
    [
      'dms.compute.vpcSecurityGroupIds',
      {
        strategy: 'dms',
        target: EXISTING,
        dms: {
          ...DMS,
          compute: {
            kind: 'serverless',
            maxCapacityUnits: 4,
            replicationSubnetGroupId: 'g',
            vpcSecurityGroupIds: ['web'],
          },
        },
      },
      /dms\.compute\.vpcSecurityGroupIds must be security group ids \(sg-…\): "web"/,
    ],
    [
      'dms.compute.replicationSubnetGroupId',
      {
        strategy: 'dms',
        target: EXISTING,
        dms: { ...DMS, compute: { kind: 'serverless', maxCapacityUnits: 4 } },
      },
      /dms\.compute\.replicationSubnetGroupId is required with kind serverless/,
    ],
    ['dms.sslMode', { strategy: 'dms', target: EXISTING, dms: { ...DMS, sslMode: 'none' } }, /dms\.sslMode must be/],
  ])('refuses at plan put a dms plan start could not run, naming %s', (field, overrides, message) => {
    const err = problem(plan(overrides));
    expect(err.field).toBe(field);
    expect(err.message).toMatch(message);
  });

  it('refuses a password or any unknown key, naming it, instead of storing it', () => {
    const err = problem(plan({ source: { secretArn: ARN, password: 'hunter2' } }));
    expect(err.field).toBe('source.password');
    expect(err.message).toContain('source.password: not a plan field');
    expect(err.message).not.toContain('hunter2');
  });

  it('lists every problem of a plan at once', () => {
    const err = problem({ name: 'x', cutover: { policy: 'auto' } });
    expect(err.message).toContain('source is required');
    expect(err.message).toContain('target.kind must be');
    expect(err.message).toContain('switch.kind must be');
    expect(err.message).toContain('approvers is required');
    expect(err.hint).toMatch(/source\.secretArn/);
  });
});

describe("a plan's clean-up and bake", () => {
  it('defaults to a manual clean-up; an automatic one bakes a day unless the plan says how long', () => {
    expect(parseMigrationPlan(plan())).toMatchObject({ cleanup: 'manual' });
    expect(parseMigrationPlan(plan()).bakeSeconds).toBeUndefined();
    expect(migrationConfigFromPlan(parseMigrationPlan(plan()), 'm1').autoCleanup).toBeUndefined();
    const day = parseMigrationPlan(plan({ cleanup: 'automatic' }));
    expect(planBakeSeconds(day)).toBe(86_400);
    expect(migrationConfigFromPlan(day, 'm1').autoCleanup).toEqual({ bakeSeconds: 86_400 });
    const twoHours = migrationConfigFromPlan(
      parseMigrationPlan(plan({ cleanup: 'automatic', bakeSeconds: 7200 })),
      'm1',
    );
    expect(twoHours.autoCleanup).toEqual({ bakeSeconds: 7200 });
    expect(workflowInputForConfig(twoHours)).toMatchObject({ cleanup: true, bakeSeconds: 7200 });
    expect(workflowInputForConfig(migrationConfigFromPlan(parseMigrationPlan(plan()), 'm1'))).toMatchObject({
      cleanup: false,
      bakeSeconds: 0,
    });
  });

  it('refuses a bake without an automatic clean-up, and a bake or clean-up that is not one, naming the field', () => {
    expect(problem(plan({ bakeSeconds: 3600 }))).toMatchObject({
      field: 'bakeSeconds',
      message: expect.stringContaining(
        'bakeSeconds is the wait before an automatic clean-up: set "cleanup": "automatic", or leave bakeSeconds out',
      ),
    });
    for (const [bake, message] of [
      [-1, 'bakeSeconds must be at least 0'],
      [1.5, 'bakeSeconds must be a whole number of seconds'],
      [31 * 86_400, 'bakeSeconds must be at most 2592000 (30 days)'],
      ['1d', 'bakeSeconds must be a number of seconds'],
    ] as const)
      expect(problem(plan({ cleanup: 'automatic', bakeSeconds: bake }))).toMatchObject({
        field: 'bakeSeconds',
        message: expect.stringContaining(message),
      });
    expect(problem(plan({ cleanup: 'yes' }))).toMatchObject({
      field: 'cleanup',
      message: expect.stringContaining('cleanup must be "manual" (a person runs pgferry cleanup) or "automatic"'),
    });
  });
});

describe("a plan's cutover window", () => {
  const weekend = { start: '02:00', end: '04:30', timezone: 'Europe/Paris', days: ['sat', 'sun'] as ('sat' | 'sun')[] };
  it('is open between start and end, local time, on its days only', () => {
    // December: Paris is UTC+1. Saturday 5 December 2026, 02:30 in Paris.
    expect(inCutoverWindow(weekend, new Date('2026-12-05T01:30:00Z'))).toBe(true);
    expect(inCutoverWindow(weekend, new Date('2026-12-05T00:59:00Z'))).toBe(false); // 01:59
    expect(inCutoverWindow(weekend, new Date('2026-12-05T03:30:00Z'))).toBe(false); // 04:30, the end
    expect(inCutoverWindow(weekend, new Date('2026-12-04T01:30:00Z'))).toBe(false); // a Friday
    // Summer: UTC+2.
    expect(inCutoverWindow(weekend, new Date('2026-07-04T00:30:00Z'))).toBe(true);
    expect(cutoverWindowOpensAt(weekend, new Date('2026-12-04T01:30:00Z'))?.toISOString()).toBe(
      '2026-12-05T01:00:00.000Z',
    );
    expect(cutoverWindowOpensAt(weekend, new Date('2026-12-05T01:30:00Z'))).toBeUndefined();
  });

  it('crossing midnight belongs to the day it starts on', () => {
    const friday = { start: '23:00', end: '01:00', timezone: 'UTC', days: ['fri'] as 'fri'[] };
    expect(inCutoverWindow(friday, new Date('2026-12-04T23:30:00Z'))).toBe(true); // Friday night
    expect(inCutoverWindow(friday, new Date('2026-12-05T00:30:00Z'))).toBe(true); // Saturday, still Friday's
    expect(inCutoverWindow(friday, new Date('2026-12-05T23:30:00Z'))).toBe(false); // Saturday night
    expect(inCutoverWindow(friday, new Date('2026-12-04T01:30:00Z'))).toBe(false);
  });

  it("becomes an automatic cutover that keeps the window, in the started migration's config", () => {
    const config = migrationConfigFromPlan(
      parseMigrationPlan(plan({ cutover: { policy: 'window', ...weekend } })),
      'm1',
    );
    expect(config.cutover).toBe('auto');
    expect(config.cutoverWindow).toEqual(weekend);
    const manual = migrationConfigFromPlan(parseMigrationPlan(plan()), 'm2');
    expect(manual.cutover).toBe('manual');
    expect(manual.cutoverWindow).toBeUndefined();
  });
});
