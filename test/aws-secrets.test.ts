import {
  GetSecretValueCommand,
  ResourceNotFoundException,
  SecretsManagerClient,
} from '@aws-sdk/client-secrets-manager';
import { mockClient } from 'aws-sdk-client-mock';
import { beforeEach, describe, expect, it } from 'vitest';
import { type DatabaseSecretRef, SecretsManagerResolver, SecretUnusableError } from '../packages/aws/src/index';
import { InvalidInputError } from '../packages/core/src/index';
import { TEST_CLIENT_CONFIG } from './harness/aws-clients';

const client = new SecretsManagerClient(TEST_CLIENT_CONFIG);
const sm = mockClient(client);
const resolver = new SecretsManagerResolver(client, { caBundleFile: async () => '/tmp/rds-ca.pem' });

const SOURCE_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop/source-AbCdEf';
const TARGET_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-1234abcd-5678-XyZ012';
const PASSWORD = 'p@ss:w/rd?#1';

function secret(arn: string, value: Record<string, unknown> | string) {
  sm.on(GetSecretValueCommand, { SecretId: arn }).resolves({
    ARN: arn,
    SecretString: typeof value === 'string' ? value : JSON.stringify(value),
  });
}

async function failure(ref: DatabaseSecretRef) {
  const err = await resolver.url({ sslmode: 'verify-full', ...ref }, 'secrets.source').catch((e) => e);
  expect(err).toBeInstanceOf(Error);
  // Whatever went wrong, the error never carries the secret's value.
  expect(`${err.message} ${err.hint ?? ''}`).not.toContain(PASSWORD);
  return err;
}

beforeEach(() => sm.reset());

describe('SecretsManagerResolver', () => {
  it("builds both URLs from RDS's documented secret shape and an RDS-managed master secret, verify-full with the CA bundle", async () => {
    secret(SOURCE_ARN, {
      engine: 'postgres',
      host: 'shop.cluster-abc.eu-west-1.rds.amazonaws.com',
      port: 5432,
      username: 'app',
      password: PASSWORD,
      dbname: 'shop',
    });
    secret(TARGET_ARN, { username: 'pgferry_admin', password: PASSWORD });
    const secrets = await resolver.resolve({
      source: { secretArn: SOURCE_ARN },
      target: { secretArn: TARGET_ARN, host: 'pgferry-shop.abc.eu-west-1.rds.amazonaws.com', dbname: 'shop' },
    });
    const enc = encodeURIComponent(PASSWORD);
    expect(secrets).toEqual({
      sourceUrl: `postgres://app:${enc}@shop.cluster-abc.eu-west-1.rds.amazonaws.com:5432/shop?sslmode=verify-full&sslrootcert=%2Ftmp%2Frds-ca.pem`,
      targetUrl: `postgres://pgferry_admin:${enc}@pgferry-shop.abc.eu-west-1.rds.amazonaws.com:5432/shop?sslmode=verify-full&sslrootcert=%2Ftmp%2Frds-ca.pem`,
    });
    // The password survives the URL: it reads back as it was.
    expect(decodeURIComponent(new URL(secrets.targetUrl).password)).toBe(PASSWORD);
    expect(
      sm
        .commandCalls(GetSecretValueCommand)
        .map((c) => c.args[0].input)
        .sort((a, b) => (a.SecretId! < b.SecretId! ? -1 : 1)),
    ).toEqual([{ SecretId: TARGET_ARN }, { SecretId: SOURCE_ARN }]);
  });

  it('lets the config name the host, port and database over the secret, and a source that is not RDS use its own CA or sslmode', async () => {
    secret(SOURCE_ARN, { username: 'app', password: 'x', host: 'old-host', port: '6432', dbname: 'old' });
    expect(
      await resolver.url(
        { secretArn: SOURCE_ARN, host: '10.1.2.3', dbname: 'shop', sslmode: 'verify-full', sslrootcert: '/etc/ca.pem' },
        'secrets.source',
      ),
    ).toBe('postgres://app:x@10.1.2.3:6432/shop?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem');
    expect(await resolver.url({ secretArn: SOURCE_ARN, sslmode: 'require' }, 'secrets.source')).toBe(
      'postgres://app:x@old-host:6432/old?sslmode=require',
    );
  });

  it('names the secret ARN and the missing key, never the value', async () => {
    secret(SOURCE_ARN, { username: 'app', password: PASSWORD });
    const noHost = await failure({ secretArn: SOURCE_ARN, dbname: 'shop' });
    expect(noHost).toBeInstanceOf(SecretUnusableError);
    expect(noHost.message).toBe(`secret ${SOURCE_ARN} (secrets.source) has no "host"`);
    expect(noHost.hint).toMatch(/give the instance endpoint as secrets.source.host/);
    expect((await failure({ secretArn: SOURCE_ARN, host: 'h' })).message).toBe(
      `secret ${SOURCE_ARN} (secrets.source) has no "dbname"`,
    );
    sm.reset();
    secret(SOURCE_ARN, { username: 'app', host: 'h', dbname: 'd', note: PASSWORD });
    expect((await failure({ secretArn: SOURCE_ARN })).message).toBe(
      `secret ${SOURCE_ARN} (secrets.source) has no "password"`,
    );
    sm.reset();
    secret(SOURCE_ARN, { password: PASSWORD, host: 'h', dbname: 'd' });
    expect((await failure({ secretArn: SOURCE_ARN })).message).toBe(
      `secret ${SOURCE_ARN} (secrets.source) has no "username"`,
    );
  });

  it('refuses a secret that is not a JSON object, is binary, is for another engine or has a bad port, quoting none of it', async () => {
    secret(SOURCE_ARN, `username=app password=${PASSWORD}`);
    expect((await failure({ secretArn: SOURCE_ARN })).message).toBe(`secret ${SOURCE_ARN} is not JSON`);
    sm.reset();
    secret(SOURCE_ARN, JSON.stringify([PASSWORD]));
    expect((await failure({ secretArn: SOURCE_ARN })).message).toBe(`secret ${SOURCE_ARN} is not a JSON object`);
    sm.reset();
    sm.on(GetSecretValueCommand).resolves({ ARN: SOURCE_ARN, SecretBinary: new Uint8Array([1, 2]) });
    expect((await failure({ secretArn: SOURCE_ARN })).message).toMatch(/holds binary data/);
    sm.reset();
    secret(SOURCE_ARN, { engine: 'mysql', username: 'a', password: PASSWORD, host: 'h', dbname: 'd' });
    expect((await failure({ secretArn: SOURCE_ARN })).message).toMatch(/is for engine "mysql", not postgres/);
    sm.reset();
    secret(SOURCE_ARN, { username: 'a', password: PASSWORD, host: 'h', dbname: 'd', port: 'five' });
    expect((await failure({ secretArn: SOURCE_ARN })).message).toMatch(/"port" that is not a port number/);
  });

  it('says which secret could not be read and what permission it needs', async () => {
    sm.on(GetSecretValueCommand).rejects(
      new ResourceNotFoundException({ message: "Secrets Manager can't find the specified secret.", $metadata: {} }),
    );
    const err = await failure({ secretArn: SOURCE_ARN });
    expect(err.message).toBe(`secret ${SOURCE_ARN} could not be read: ResourceNotFoundException`);
    expect(err.hint).toMatch(/secretsmanager:GetSecretValue/);
  });

  it('refuses a config whose secret ARN is not one, naming the field, before calling Secrets Manager', async () => {
    const err = await resolver
      .resolve({ source: { secretArn: 'shop/source' }, target: { secretArn: TARGET_ARN } })
      .catch((e) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect(err.field).toBe('secrets.source.secretArn');
    expect(err.message).toMatch(/must be a Secrets Manager secret ARN/);
    expect(sm.calls()).toHaveLength(0);
  });
});
