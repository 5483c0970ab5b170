import {
  ChangeResourceRecordSetsCommand,
  GetChangeCommand,
  ListResourceRecordSetsCommand,
  NoSuchHostedZone,
  type ResourceRecordSet,
  Route53Client,
} from '@aws-sdk/client-route-53';
import {
  DescribeSecretCommand,
  GetSecretValueCommand,
  PutSecretValueCommand,
  ResourceExistsException,
  ResourceNotFoundException,
  SecretsManagerClient,
  UpdateSecretVersionStageCommand,
} from '@aws-sdk/client-secrets-manager';
import {
  DescribeParametersCommand,
  LabelParameterVersionCommand,
  PutParameterCommand,
  SSMClient,
} from '@aws-sdk/client-ssm';
import { mockClient } from 'aws-sdk-client-mock';
import { afterEach, describe, expect, it } from 'vitest';
import {
  connectionSwitchFor,
  Route53CnameSwitch,
  SecretsManagerSwitch,
  SsmParameterSwitch,
} from '../packages/aws/src/index';
import { type ConnectionSwitch, ConnectionSwitchError, InvalidInputError } from '../packages/core/src/index';
import { fakeSsm, KEY, PARAM } from './harness/fake-ssm';

const TARGET = 'postgres://app:t%40rget-pw@shop.abc123.eu-west-1.rds.amazonaws.com:5432/shop';
const SECRET_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop/app-db-AbCdEf';
const now = () => new Date('2026-11-02T12:00:00Z');

/**
 * Secrets Manager as far as the switch uses it, over aws-sdk-client-mock: versions with staging
 * labels, AWSPREVIOUS following AWSCURRENT, a label moved only with RemoveFromVersionId when another
 * version holds it, PutSecretValue idempotent on its ClientRequestToken.
 */
function fakeSecretsManager(initial: Record<string, unknown>) {
  const sm = mockClient(SecretsManagerClient);
  const versions = new Map<string, { value: string; stages: Set<string> }>([
    ['v-original', { value: JSON.stringify(initial), stages: new Set(['AWSCURRENT']) }],
  ]);
  const holderOf = (stage: string) => [...versions].find(([, v]) => v.stages.has(stage))?.[0];
  const move = (stage: string, to: string, from?: string) => {
    const holder = holderOf(stage);
    if (holder && holder !== to && holder !== from) {
      throw new Error(`InvalidParameterException: ${stage} is on ${holder}; RemoveFromVersionId must name it`);
    }
    if (holder) versions.get(holder)!.stages.delete(stage);
    versions.get(to)!.stages.add(stage);
    if (stage === 'AWSCURRENT' && holder && holder !== to) {
      for (const v of versions.values()) v.stages.delete('AWSPREVIOUS');
      versions.get(holder)!.stages.add('AWSPREVIOUS');
    }
  };
  sm.on(DescribeSecretCommand).callsFake(() => ({
    ARN: SECRET_ARN,
    VersionIdsToStages: Object.fromEntries([...versions].map(([id, v]) => [id, [...v.stages]])),
  }));
  sm.on(GetSecretValueCommand).callsFake((i) => {
    const v = versions.get(i.VersionId);
    if (!v) throw new ResourceNotFoundException({ message: 'no such version', $metadata: {} });
    return { ARN: SECRET_ARN, VersionId: i.VersionId, SecretString: v.value, VersionStages: [...v.stages] };
  });
  sm.on(UpdateSecretVersionStageCommand).callsFake((i) => {
    if (!i.MoveToVersionId) versions.get(i.RemoveFromVersionId)!.stages.delete(i.VersionStage);
    else move(i.VersionStage, i.MoveToVersionId, i.RemoveFromVersionId);
    return { ARN: SECRET_ARN };
  });
  sm.on(PutSecretValueCommand).callsFake((i) => {
    const existing = versions.get(i.ClientRequestToken);
    if (existing) {
      if (existing.value !== i.SecretString) {
        throw new ResourceExistsException({ message: 'token reused with other content', $metadata: {} });
      }
      return { ARN: SECRET_ARN, VersionId: i.ClientRequestToken, VersionStages: [...existing.stages] };
    }
    versions.set(i.ClientRequestToken, { value: i.SecretString, stages: new Set() });
    move('AWSCURRENT', i.ClientRequestToken, holderOf('AWSCURRENT'));
    return { ARN: SECRET_ARN, VersionId: i.ClientRequestToken, VersionStages: ['AWSCURRENT'] };
  });
  const current = () => JSON.parse(versions.get(holderOf('AWSCURRENT')!)!.value) as Record<string, unknown>;
  return {
    sm,
    versions,
    holderOf,
    current,
    rotate: (value: Record<string, unknown>) => {
      versions.set('v-rotated', { value: JSON.stringify(value), stages: new Set() });
      move('AWSCURRENT', 'v-rotated', holderOf('AWSCURRENT'));
    },
  };
}

const SOURCE_SECRET = {
  engine: 'postgres',
  host: 'db-old.internal',
  port: 5432,
  username: 'app',
  password: 's0urce-pw',
  dbname: 'shop',
  dbInstanceIdentifier: 'legacy',
};

describe('SecretsManagerSwitch', () => {
  afterEach(() => {
    mockClient(SecretsManagerClient).restore();
  });

  it("writes a version pointing at the target, keeping the secret's other fields, after labelling the one it replaces", async () => {
    const fake = fakeSecretsManager(SOURCE_SECRET);
    const sw = new SecretsManagerSwitch({ client: new SecretsManagerClient({}), secretId: SECRET_ARN, now });
    const record = await sw.switchTo({ url: TARGET }, 'shop');

    expect(fake.sm.commandCalls(UpdateSecretVersionStageCommand)[0]!.args[0].input).toEqual({
      SecretId: SECRET_ARN,
      VersionStage: 'pgferry-before-shop',
      MoveToVersionId: 'v-original',
    });
    const put = fake.sm.commandCalls(PutSecretValueCommand);
    expect(put).toHaveLength(1);
    expect(put[0]!.args[0].input.SecretId).toBe(SECRET_ARN);
    expect(put[0]!.args[0].input.ClientRequestToken).toMatch(/^pgferry-[0-9a-f]{40}$/);
    expect(JSON.parse(put[0]!.args[0].input.SecretString!)).toEqual({
      engine: 'postgres',
      host: 'shop.abc123.eu-west-1.rds.amazonaws.com',
      port: 5432,
      username: 'app',
      password: 't@rget-pw',
      dbname: 'shop',
      dbInstanceIdentifier: 'legacy',
    });
    expect(record).toMatchObject({
      kind: 'secrets-manager',
      changed: true,
      previousVersionId: 'v-original',
      currentVersionId: put[0]!.args[0].input.ClientRequestToken,
      label: 'pgferry-before-shop',
    });
    // The record is state: it names versions, never a password.
    expect(JSON.stringify(record)).not.toMatch(/pw/);
  });

  it('changes nothing when retried, even when the first record was lost in a crash, and still names the original version', async () => {
    const fake = fakeSecretsManager(SOURCE_SECRET);
    const sw = new SecretsManagerSwitch({ client: new SecretsManagerClient({}), secretId: SECRET_ARN, now });
    const first = await sw.switchTo({ url: TARGET }, 'shop');
    const again = await sw.switchTo({ url: TARGET }, 'shop');
    expect(fake.sm.commandCalls(PutSecretValueCommand)).toHaveLength(1);
    expect(fake.sm.commandCalls(UpdateSecretVersionStageCommand)).toHaveLength(1);
    expect(again).toMatchObject({
      changed: false,
      previousVersionId: 'v-original',
      currentVersionId: first.currentVersionId,
    });
  });

  it('restores AWSCURRENT to the previous version exactly, and a second restore changes nothing', async () => {
    const fake = fakeSecretsManager(SOURCE_SECRET);
    const sw = new SecretsManagerSwitch({ client: new SecretsManagerClient({}), secretId: SECRET_ARN, now });
    const record = await sw.switchTo({ url: TARGET }, 'shop');
    fake.sm.resetHistory();

    expect(await sw.restore(record)).toMatchObject({ changed: true });
    expect(fake.sm.commandCalls(UpdateSecretVersionStageCommand).map((c) => c.args[0].input)).toEqual([
      {
        SecretId: SECRET_ARN,
        VersionStage: 'AWSCURRENT',
        MoveToVersionId: 'v-original',
        RemoveFromVersionId: record.currentVersionId,
      },
      { SecretId: SECRET_ARN, VersionStage: 'pgferry-before-shop', RemoveFromVersionId: 'v-original' },
    ]);
    expect(fake.holderOf('AWSCURRENT')).toBe('v-original');
    expect(fake.current()).toEqual(SOURCE_SECRET);

    expect(await sw.restore(record)).toMatchObject({ changed: false });
    expect(fake.sm.commandCalls(UpdateSecretVersionStageCommand)).toHaveLength(2);
  });

  it('switches again after a rollback (the same version is made current again)', async () => {
    const fake = fakeSecretsManager(SOURCE_SECRET);
    const sw = new SecretsManagerSwitch({ client: new SecretsManagerClient({}), secretId: SECRET_ARN, now });
    const first = await sw.switchTo({ url: TARGET }, 'shop');
    await sw.restore(first);
    const second = await sw.switchTo({ url: TARGET }, 'shop');
    expect(second).toMatchObject({
      changed: true,
      previousVersionId: 'v-original',
      currentVersionId: first.currentVersionId,
    });
    expect(fake.holderOf('AWSCURRENT')).toBe(first.currentVersionId);
    expect(fake.current().host).toBe('shop.abc123.eu-west-1.rds.amazonaws.com');
  });

  it('says so when a switch back to the same server brings other credentials than the version it made before', async () => {
    fakeSecretsManager(SOURCE_SECRET);
    const sw = new SecretsManagerSwitch({ client: new SecretsManagerClient({}), secretId: SECRET_ARN, now });
    await sw.restore(await sw.switchTo({ url: TARGET }, 'shop'));
    await expect(sw.switchTo({ url: TARGET.replace('t%40rget-pw', 'new-pw') }, 'shop')).rejects.toThrow(
      `secret ${SECRET_ARN} has a version from an earlier switch of shop to the same server with other credentials`,
    );
  });

  it('refuses to restore over a change made after the switch (a rotation), naming the secret', async () => {
    const fake = fakeSecretsManager(SOURCE_SECRET);
    const sw = new SecretsManagerSwitch({ client: new SecretsManagerClient({}), secretId: SECRET_ARN, now });
    const record = await sw.switchTo({ url: TARGET }, 'shop');
    fake.rotate({ ...fake.current(), password: 'rotated' });
    const err = await sw.restore(record).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectionSwitchError);
    expect((err as ConnectionSwitchError).message).toContain(`secret ${SECRET_ARN} was changed after the switch`);
    expect(fake.holderOf('AWSCURRENT')).toBe('v-rotated');
  });

  it('says which secret is missing or not allowed', async () => {
    const sm = mockClient(SecretsManagerClient);
    const sw = new SecretsManagerSwitch({ client: new SecretsManagerClient({}), secretId: SECRET_ARN, now });
    sm.on(DescribeSecretCommand).rejects(
      new ResourceNotFoundException({ message: "can't find the secret", $metadata: {} }),
    );
    await expect(sw.switchTo({ url: TARGET }, 'shop')).rejects.toThrow(`secret ${SECRET_ARN} was not found`);
    const denied = Object.assign(new Error('User is not authorized'), { name: 'AccessDeniedException' });
    sm.on(DescribeSecretCommand).rejects(denied);
    const err = (await sw.switchTo({ url: TARGET }, 'shop').catch((e: unknown) => e)) as ConnectionSwitchError;
    expect(err.message).toBe(
      `pgferry is not allowed to secretsmanager:DescribeSecret on secret ${SECRET_ARN} (AccessDeniedException)`,
    );
    expect(err.hint).toContain(`grant secretsmanager:DescribeSecret on secret ${SECRET_ARN}`);
    expect(await sw.check()).toEqual([expect.objectContaining({ resource: `secret ${SECRET_ARN}` })]);
  });

  it('refuses a secret that is not a JSON object without quoting it', async () => {
    const sm = mockClient(SecretsManagerClient);
    sm.on(DescribeSecretCommand).resolves({ VersionIdsToStages: { v1: ['AWSCURRENT'] } });
    sm.on(GetSecretValueCommand).resolves({ VersionId: 'v1', SecretString: 'postgres://app:hunter2@old/shop' });
    sm.on(UpdateSecretVersionStageCommand).resolves({});
    const sw = new SecretsManagerSwitch({ client: new SecretsManagerClient({}), secretId: SECRET_ARN, now });
    const err = (await sw.switchTo({ url: TARGET }, 'shop').catch((e: unknown) => e)) as Error;
    expect(err.message).toBe(`secret ${SECRET_ARN} does not hold a JSON object`);
    expect(err.message).not.toContain('hunter2');
    expect(sm.commandCalls(PutSecretValueCommand)).toHaveLength(0);
  });
});

describe('SsmParameterSwitch', () => {
  afterEach(() => {
    mockClient(SSMClient).restore();
  });

  it('overwrites a SecureString with the target URL under its own KMS key, and restores the labelled value', async () => {
    const fake = fakeSsm('SecureString', 'postgres://app:s0urce-pw@db-old.internal:5432/shop');
    const sw = new SsmParameterSwitch({ client: new SSMClient({}), name: PARAM, now });
    const record = await sw.switchTo({ url: TARGET }, 'shop');

    expect(fake.ssm.commandCalls(LabelParameterVersionCommand)[0]!.args[0].input).toEqual({
      Name: PARAM,
      ParameterVersion: 1,
      Labels: ['pgferry-before-shop'],
    });
    expect(fake.ssm.commandCalls(PutParameterCommand)[0]!.args[0].input).toEqual({
      Name: PARAM,
      Value: TARGET,
      Type: 'SecureString',
      Overwrite: true,
      KeyId: KEY,
    });
    expect(record).toMatchObject({
      kind: 'ssm-parameter',
      changed: true,
      previousVersion: 1,
      currentVersion: 2,
      keyId: KEY,
    });
    expect(JSON.stringify(record)).not.toMatch(/pw/);

    fake.ssm.resetHistory();
    expect(await sw.restore(record)).toMatchObject({ changed: true });
    expect(fake.ssm.commandCalls(PutParameterCommand)[0]!.args[0].input).toEqual({
      Name: PARAM,
      Value: 'postgres://app:s0urce-pw@db-old.internal:5432/shop',
      Type: 'SecureString',
      Overwrite: true,
      KeyId: KEY,
    });
    expect(fake.latest().Value).toBe('postgres://app:s0urce-pw@db-old.internal:5432/shop');
    expect(fake.versions[0]!.Labels).toEqual([]);
    expect(await sw.restore(record)).toMatchObject({ changed: false });
    expect(fake.ssm.commandCalls(PutParameterCommand)).toHaveLength(1);
  });

  it('with switch.kmsKeyArn, writes under the key the parameter reports (an alias here), switching and restoring', async () => {
    const KMS_KEY = 'arn:aws:kms:eu-west-1:123456789012:key/0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0';
    const source = 'postgres://app:s0urce-pw@db-old.internal:5432/shop';
    // Made with an alias: DescribeParameters reports the alias. Resolving it would take kms:DescribeKey;
    // writing under the alias keeps the key, whichever it is (and check()'s decrypting read needs the grant).
    const fake = fakeSsm('SecureString', source, 'alias/shop-db');
    const sw = connectionSwitchFor(
      { kind: 'ssm-parameter', name: PARAM, kmsKeyArn: KMS_KEY },
      { ssm: new SSMClient({}) },
    ) as ConnectionSwitch;
    expect(await sw.check()).toEqual([]);
    const record = await sw.switchTo({ url: TARGET }, 'shop');
    expect(record).toMatchObject({ kind: 'ssm-parameter', changed: true, keyId: 'alias/shop-db' });
    await sw.restore(record);
    expect(fake.ssm.commandCalls(PutParameterCommand).map((c) => c.args[0].input)).toEqual([
      { Name: PARAM, Value: TARGET, Type: 'SecureString', Overwrite: true, KeyId: 'alias/shop-db' },
      { Name: PARAM, Value: source, Type: 'SecureString', Overwrite: true, KeyId: 'alias/shop-db' },
    ]);
  });

  it('refuses, in check() and before writing anything, a parameter under another key than switch.kmsKeyArn, naming both keys and the field', async () => {
    const KMS_KEY = 'arn:aws:kms:eu-west-1:123456789012:key/0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0';
    const source = 'postgres://app:s0urce-pw@db-old.internal:5432/shop';
    // KEY (a key ARN), another key's bare id, and the AWS managed key's alias: each shown to be another key.
    for (const reported of [KEY, '5b2a1c3d-0e4f-4a5b-8c6d-7e8f9a0b1c2d', 'alias/aws/ssm']) {
      const fake = fakeSsm('SecureString', source, reported);
      const sw = connectionSwitchFor(
        { kind: 'ssm-parameter', name: PARAM, kmsKeyArn: KMS_KEY },
        { ssm: new SSMClient({}) },
      ) as ConnectionSwitch;
      const message = `SSM parameter ${PARAM} is encrypted under KMS key ${reported}, not the key switch.kmsKeyArn names (${KMS_KEY})`;
      expect(await sw.check()).toEqual([
        { resource: `SSM parameter ${PARAM}`, message, hint: expect.stringContaining('set switch.kmsKeyArn') },
      ]);
      const err = (await sw.switchTo({ url: TARGET }, 'shop').catch((e: unknown) => e)) as ConnectionSwitchError;
      expect(err).toBeInstanceOf(ConnectionSwitchError);
      expect(err.message).toBe(message);
      expect(err.field).toBe('switch.kmsKeyArn');
      expect(fake.ssm.commandCalls(LabelParameterVersionCommand)).toHaveLength(0);
      expect(fake.ssm.commandCalls(PutParameterCommand)).toHaveLength(0);
      mockClient(SSMClient).restore();
    }
  });

  it('takes a parameter reported under the configured key by its bare id, and writes under that id', async () => {
    const fake = fakeSsm('SecureString', 'postgres://app:s0urce-pw@db-old.internal:5432/shop', KEY.split('/')[1]);
    const sw = connectionSwitchFor({ kind: 'ssm-parameter', name: PARAM, kmsKeyArn: KEY }, { ssm: new SSMClient({}) });
    expect(await sw?.check()).toEqual([]);
    await sw?.switchTo({ url: TARGET }, 'shop');
    expect(fake.ssm.commandCalls(PutParameterCommand)[0]!.args[0].input).toEqual({
      Name: PARAM,
      Value: TARGET,
      Type: 'SecureString',
      Overwrite: true,
      KeyId: KEY.split('/')[1],
    });
  });

  it('restores under the key the record says the parameter had, not the key the config names now', async () => {
    const source = 'postgres://app:s0urce-pw@db-old.internal:5432/shop';
    const fake = fakeSsm('SecureString', source);
    const record = await new SsmParameterSwitch({ client: new SSMClient({}), name: PARAM, now }).switchTo(
      { url: TARGET },
      'shop',
    );
    fake.ssm.resetHistory();
    const OTHER = 'arn:aws:kms:eu-west-1:123456789012:key/0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0';
    const later = new SsmParameterSwitch({ client: new SSMClient({}), name: PARAM, kmsKeyArn: OTHER, now });
    expect(await later.restore(record)).toMatchObject({ changed: true });
    expect(fake.ssm.commandCalls(PutParameterCommand).map((c) => c.args[0].input)).toEqual([
      { Name: PARAM, Value: source, Type: 'SecureString', Overwrite: true, KeyId: KEY },
    ]);
  });

  it('changes nothing when retried, and the retry still names the version from before the first switch', async () => {
    const fake = fakeSsm('String', 'db-old.internal');
    const sw = new SsmParameterSwitch({ client: new SSMClient({}), name: PARAM, format: 'host', now });
    await sw.switchTo({ url: TARGET }, 'shop');
    const again = await sw.switchTo({ url: TARGET }, 'shop');
    expect(fake.ssm.commandCalls(PutParameterCommand).map((c) => c.args[0].input)).toEqual([
      { Name: PARAM, Value: 'shop.abc123.eu-west-1.rds.amazonaws.com', Type: 'String', Overwrite: true },
    ]);
    expect(fake.ssm.commandCalls(LabelParameterVersionCommand)).toHaveLength(1);
    expect(again).toMatchObject({ changed: false, previousVersion: 1, currentVersion: 2 });
  });

  it('refuses to write a URL with a password into a plain String parameter, naming it', async () => {
    const fake = fakeSsm('String', 'postgres://app@db-old.internal/shop');
    const sw = new SsmParameterSwitch({ client: new SSMClient({}), name: PARAM, now });
    const err = (await sw.switchTo({ url: TARGET }, 'shop').catch((e: unknown) => e)) as InvalidInputError;
    expect(err).toBeInstanceOf(InvalidInputError);
    expect(err.message).toBe(`SSM parameter ${PARAM} is a String, and the URL to write carries a password`);
    expect(err.field).toBe(PARAM);
    expect(fake.ssm.commandCalls(PutParameterCommand)).toHaveLength(0);
  });

  it('refuses to restore over a value written by someone else after the switch', async () => {
    const fake = fakeSsm('String', 'db-old.internal');
    const sw = new SsmParameterSwitch({ client: new SSMClient({}), name: PARAM, format: 'host-port', now });
    const record = await sw.switchTo({ url: TARGET }, 'shop');
    fake.versions.push({ Version: 3, Value: 'db-elsewhere:5432', Labels: [] });
    await expect(sw.restore(record)).rejects.toThrow(`SSM parameter ${PARAM} was changed after the switch`);
  });

  it('says which parameter is missing', async () => {
    mockClient(SSMClient).on(DescribeParametersCommand).resolves({ Parameters: [] });
    const sw = new SsmParameterSwitch({ client: new SSMClient({}), name: '/nope', now });
    await expect(sw.switchTo({ url: TARGET }, 'shop')).rejects.toThrow('SSM parameter /nope was not found');
  });
});

const ZONE = 'Z0123456789ABCDEFGHIJ';

/** Route 53 as far as the switch uses it: record sets listed in order, atomic change batches, INSYNC after a while. */
function fakeRoute53(cname: { value: string; ttl: number }, insyncAfter = 1) {
  const r53 = mockClient(Route53Client);
  const sets = new Map<string, ResourceRecordSet>();
  const key = (name: string, type: string) => `${name}|${type}`;
  sets.set(key('db.shop.example.', 'CNAME'), {
    Name: 'db.shop.example.',
    Type: 'CNAME',
    TTL: cname.ttl,
    ResourceRecords: [{ Value: cname.value }],
  });
  sets.set(key('www.shop.example.', 'A'), {
    Name: 'www.shop.example.',
    Type: 'A',
    TTL: 300,
    ResourceRecords: [{ Value: '192.0.2.1' }],
  });
  r53.on(ListResourceRecordSetsCommand).callsFake((i) => {
    if (i.HostedZoneId !== ZONE) throw new NoSuchHostedZone({ message: 'No hosted zone found', $metadata: {} });
    const sorted = [...sets.values()].sort((a, b) => `${a.Name}|${a.Type}`.localeCompare(`${b.Name}|${b.Type}`));
    const start = `${i.StartRecordName}|${i.StartRecordType}`;
    return { ResourceRecordSets: sorted.filter((s) => `${s.Name}|${s.Type}` >= start).slice(0, 1) };
  });
  let changes = 0;
  let polls = 0;
  r53.on(ChangeResourceRecordSetsCommand).callsFake((i) => {
    const next = new Map(sets);
    for (const c of i.ChangeBatch.Changes) {
      const k = key(c.ResourceRecordSet.Name, c.ResourceRecordSet.Type);
      if (c.Action === 'CREATE' && next.has(k)) throw new Error(`InvalidChangeBatch: ${k} exists`);
      if (c.Action === 'DELETE' && JSON.stringify(next.get(k)) !== JSON.stringify(c.ResourceRecordSet)) {
        throw new Error(`InvalidChangeBatch: ${k} does not match`);
      }
      if (c.Action === 'DELETE') next.delete(k);
      else next.set(k, structuredClone(c.ResourceRecordSet));
    }
    sets.clear();
    for (const [k, v] of next) sets.set(k, v);
    changes++;
    polls = 0;
    return { ChangeInfo: { Id: `/change/C${changes}`, Status: 'PENDING', SubmittedAt: now() } };
  });
  r53.on(GetChangeCommand).callsFake((i) => {
    polls++;
    return { ChangeInfo: { Id: i.Id, Status: polls >= insyncAfter ? 'INSYNC' : 'PENDING', SubmittedAt: now() } };
  });
  return { r53, sets };
}

const sleep = async () => {};
const r53Switch = (o: Partial<ConstructorParameters<typeof Route53CnameSwitch>[0]> = {}) =>
  new Route53CnameSwitch({
    client: new Route53Client({}),
    hostedZoneId: ZONE,
    recordName: 'db.shop.example',
    sleep,
    now,
    ...o,
  });

describe('Route53CnameSwitch', () => {
  afterEach(() => {
    mockClient(Route53Client).restore();
  });

  it('UPSERTs the CNAME and records its previous value in the same change batch, returns once Route 53 accepted it, and settle waits for INSYNC', async () => {
    const fake = fakeRoute53({ value: 'db-old.internal', ttl: 30 }, 2);
    const sw = r53Switch();
    expect(await sw.check()).toEqual([]);
    const record = await sw.switchTo({ url: TARGET }, 'shop_v2');

    expect(fake.r53.commandCalls(ChangeResourceRecordSetsCommand).map((c) => c.args[0].input)).toEqual([
      {
        HostedZoneId: ZONE,
        ChangeBatch: {
          Comment: 'pgferry shop_v2: switch to the target',
          Changes: [
            {
              Action: 'UPSERT',
              ResourceRecordSet: {
                Name: 'db.shop.example.',
                Type: 'CNAME',
                TTL: 30,
                ResourceRecords: [{ Value: 'shop.abc123.eu-west-1.rds.amazonaws.com.' }],
              },
            },
            {
              Action: 'CREATE',
              ResourceRecordSet: {
                Name: '_pgferry-before-shop-v2.db.shop.example.',
                Type: 'TXT',
                TTL: 300,
                ResourceRecords: [{ Value: '"db-old.internal" "30"' }],
              },
            },
          ],
        },
      },
    ]);
    // Accepted is where the write gap may end: propagation is followed after it.
    expect(fake.r53.commandCalls(GetChangeCommand)).toHaveLength(0);
    expect(await sw.settle(record)).toBe(true);
    expect(fake.r53.commandCalls(GetChangeCommand).map((c) => c.args[0].input)).toEqual([
      { Id: '/change/C1' },
      { Id: '/change/C1' },
    ]);
    expect(record).toMatchObject({
      kind: 'route53-cname',
      changed: true,
      changeId: '/change/C1',
      previous: { value: 'db-old.internal', ttl: 30 },
      current: { value: 'shop.abc123.eu-west-1.rds.amazonaws.com.', ttl: 30 },
      warnings: [],
    });
  });

  it('finds the previous value in the zone when the first record was lost, and changes nothing on a retry', async () => {
    const fake = fakeRoute53({ value: 'db-old.internal', ttl: 30 });
    const sw = r53Switch();
    await sw.switchTo({ url: TARGET }, 'shop');
    const again = await r53Switch({ recordName: 'db.shop.example.' }).switchTo({ url: TARGET }, 'shop');
    expect(fake.r53.commandCalls(ChangeResourceRecordSetsCommand)).toHaveLength(1);
    expect(again).toMatchObject({ changed: false, previous: { value: 'db-old.internal', ttl: 30 } });
  });

  it('restores the previous CNAME and removes its TXT record in one batch, returns once Route 53 accepted it (settle follows it to INSYNC); a second restore changes nothing', async () => {
    const fake = fakeRoute53({ value: 'db-old.internal', ttl: 30 }, 2);
    const sw = r53Switch();
    const record = await sw.switchTo({ url: TARGET }, 'shop');
    fake.r53.resetHistory();
    const restored = await sw.restore(record);
    expect(restored).toMatchObject({ changed: true, changeId: '/change/C2' });
    // Accepted is where the rollback's write gap may end: propagation is followed after it.
    expect(fake.r53.commandCalls(GetChangeCommand)).toHaveLength(0);
    expect(await sw.settle(record, restored)).toBe(true);
    expect(fake.r53.commandCalls(GetChangeCommand).map((c) => c.args[0].input)).toEqual([
      { Id: '/change/C2' },
      { Id: '/change/C2' },
    ]);
    expect(fake.r53.commandCalls(ChangeResourceRecordSetsCommand)[0]!.args[0].input.ChangeBatch!.Changes).toEqual([
      {
        Action: 'UPSERT',
        ResourceRecordSet: {
          Name: 'db.shop.example.',
          Type: 'CNAME',
          TTL: 30,
          ResourceRecords: [{ Value: 'db-old.internal' }],
        },
      },
      {
        Action: 'DELETE',
        ResourceRecordSet: {
          Name: '_pgferry-before-shop.db.shop.example.',
          Type: 'TXT',
          TTL: 300,
          ResourceRecords: [{ Value: '"db-old.internal" "30"' }],
        },
      },
    ]);
    expect(fake.sets.get('db.shop.example.|CNAME')!.ResourceRecords).toEqual([{ Value: 'db-old.internal' }]);
    expect(fake.sets.has('_pgferry-before-shop.db.shop.example.|TXT')).toBe(false);
    const again = await sw.restore(record);
    expect(again).toMatchObject({ changed: false });
    expect(again).not.toHaveProperty('changeId');
    expect(await sw.settle(record, again)).toBe(true);
    expect(fake.r53.commandCalls(ChangeResourceRecordSetsCommand)).toHaveLength(1);
    expect(fake.r53.commandCalls(GetChangeCommand)).toHaveLength(2);
  });

  it('says clearly that a long TTL keeps clients on the old server, and warns at the switch', async () => {
    fakeRoute53({ value: 'db-old.internal', ttl: 3600 });
    const sw = r53Switch();
    expect(await sw.check()).toEqual([
      {
        resource: `CNAME db.shop.example. in hosted zone ${ZONE}`,
        message: `CNAME db.shop.example. in hosted zone ${ZONE} has a TTL of 3600 s: resolvers may keep sending the application to the old server for 3600 s after the switch, while it is frozen`,
        hint: 'lower the TTL to 60 s or less, then wait the old TTL (3600 s) before the cutover',
      },
    ]);
    const record = await sw.switchTo({ url: TARGET }, 'shop');
    expect(record.warnings).toEqual([
      `CNAME db.shop.example. in hosted zone ${ZONE} has a TTL of 3600 s: clients may reach the old server for up to 3600 s after the switch`,
    ]);
  });

  it('settles false when Route 53 has not propagated the change within the wait, and true at once for a switch that wrote nothing', async () => {
    const fake = fakeRoute53({ value: 'db-old.internal', ttl: 30 }, 99);
    const sw = r53Switch({ syncWaitMs: 0 });
    const record = await sw.switchTo({ url: TARGET }, 'shop');
    expect(record).toMatchObject({ changed: true, changeId: '/change/C1' });
    expect(await sw.settle(record)).toBe(false);
    expect(fake.r53.commandCalls(GetChangeCommand)).toHaveLength(0);
    const again = await sw.switchTo({ url: TARGET }, 'shop');
    expect(again).toMatchObject({ changed: false });
    expect(again).not.toHaveProperty('changeId');
    expect(await sw.settle(again)).toBe(true);
  });

  it('names the hosted zone and record when either is missing', async () => {
    fakeRoute53({ value: 'db-old.internal', ttl: 30 });
    const wrongZone = r53Switch({ hostedZoneId: 'ZNOPE' });
    await expect(wrongZone.switchTo({ url: TARGET }, 'shop')).rejects.toThrow(
      'CNAME db.shop.example. in hosted zone ZNOPE was not found',
    );
    const wrongName = r53Switch({ recordName: 'pg.shop.example' });
    await expect(wrongName.switchTo({ url: TARGET }, 'shop')).rejects.toThrow(
      `CNAME pg.shop.example. in hosted zone ${ZONE} does not exist`,
    );
  });
});

/**
 * The contract every ConnectionSwitch keeps, run against each implementation over its fake: what the
 * application reads is the target after a switch, exactly the original after a restore, and retries of
 * either change nothing; a second cutover after a rollback works the same way.
 */
const contract: [string, () => { sw: ConnectionSwitch; reads: () => string; original: string }, () => void][] = [
  [
    'SecretsManagerSwitch',
    () => {
      const fake = fakeSecretsManager(SOURCE_SECRET);
      const sw = new SecretsManagerSwitch({ client: new SecretsManagerClient({}), secretId: SECRET_ARN, now });
      return { sw, reads: () => JSON.stringify(fake.current()), original: JSON.stringify(SOURCE_SECRET) };
    },
    () => mockClient(SecretsManagerClient).restore(),
  ],
  [
    'SsmParameterSwitch',
    () => {
      const fake = fakeSsm('SecureString', 'postgres://app:s0urce-pw@db-old.internal:5432/shop');
      const sw = new SsmParameterSwitch({ client: new SSMClient({}), name: PARAM, now });
      return { sw, reads: () => fake.latest().Value, original: 'postgres://app:s0urce-pw@db-old.internal:5432/shop' };
    },
    () => mockClient(SSMClient).restore(),
  ],
  [
    'Route53CnameSwitch',
    () => {
      const fake = fakeRoute53({ value: 'db-old.internal', ttl: 30 });
      const reads = () => JSON.stringify(fake.sets.get('db.shop.example.|CNAME'));
      return { sw: r53Switch(), reads, original: reads() };
    },
    () => mockClient(Route53Client).restore(),
  ],
];

describe.each(contract)('ConnectionSwitch contract: %s', (_name, make, cleanup) => {
  afterEach(cleanup);

  it('switches, retries without change, restores exactly, and restores again without change', async () => {
    const { sw, reads, original } = make();
    const record = await sw.switchTo({ url: TARGET }, 'shop');
    const switched = reads();
    expect(switched).not.toBe(original);
    expect(switched).toContain('shop.abc123.eu-west-1.rds.amazonaws.com');
    expect(JSON.stringify(record)).not.toMatch(/pw/);

    expect(await sw.switchTo({ url: TARGET }, 'shop')).toMatchObject({ changed: false });
    expect(reads()).toBe(switched);

    expect(await sw.restore(record)).toMatchObject({ changed: true });
    expect(reads()).toBe(original);
    expect(await sw.restore(record)).toMatchObject({ changed: false });
    expect(reads()).toBe(original);
  });

  it('cuts over again after a rollback, and rolls back again to the original', async () => {
    const { sw, reads, original } = make();
    await sw.restore(await sw.switchTo({ url: TARGET }, 'shop'));
    const second = await sw.switchTo({ url: TARGET }, 'shop');
    expect(second).toMatchObject({ changed: true });
    expect(reads()).toContain('shop.abc123.eu-west-1.rds.amazonaws.com');
    await sw.restore(second);
    expect(reads()).toBe(original);
  });
});
