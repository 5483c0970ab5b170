import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  pemCertificates,
  RDS_CA_BUNDLE_ENV,
  rdsCaBundleFile,
  SecretsManagerResolver,
  withVerifyFull,
} from '../packages/aws/src/index';
import { connect, type Db } from '../packages/postgres/src/index';
import { TEST_CLIENT_CONFIG } from './harness/aws-clients';
import { serverUrl, testServers } from './harness/pairs';

// source15 offers TLS with a throw-away self-signed certificate for 127.0.0.1 (test/harness/global-setup.ts).
const server = testServers().source15;
const serverCa = server.certFile ?? 'missing';
const work = mkdtempSync(join(tmpdir(), 'pgferry-aws-tls-'));
const dbs: Db[] = [];

afterEach(async () => {
  for (const db of dbs.splice(0)) await db.end();
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

async function tlsOf(url: string) {
  const db = await connect(url, { side: 'target', applicationName: 'pgferry:aws-tls-test' });
  dbs.push(db);
  return (await db.one<{ ssl: boolean }>('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).ssl;
}

function throwAwayCa(name: string): string {
  const dir = mkdtempSync(join(work, `${name}-`));
  execFileSync(
    'openssl',
    ['req', '-new', '-x509', '-days', '1', '-nodes', '-subj', `/CN=${name}`, '-keyout', join(dir, 'ca.key')].concat([
      '-out',
      join(dir, 'ca.crt'),
    ]),
    { stdio: 'ignore' },
  );
  return join(dir, 'ca.crt');
}

describe('verify-full as the AWS tasks connect', () => {
  it('connects with the CA that signed the server certificate, by the name the certificate lists', async () => {
    const url = withVerifyFull(serverUrl(server), serverCa);
    expect(url).toMatch(/\?sslmode=verify-full&sslrootcert=/);
    expect(await tlsOf(url)).toBe(true);
  });

  it('refuses a server whose certificate another CA signed', async () => {
    const err = await tlsOf(withVerifyFull(serverUrl(server), throwAwayCa('other'))).catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err.hint).toMatch(/did not sign/);
  });

  it('refuses a server reached by a name its certificate does not list', async () => {
    const byName = serverUrl(server).replace('@127.0.0.1:', '@localhost:');
    const err = await tlsOf(withVerifyFull(byName, serverCa)).catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toMatch(/localhost/);
    // verify-ca checks the CA only: the same connection passes.
    expect(await tlsOf(withVerifyFull(byName, serverCa, 'verify-ca'))).toBe(true);
  });

  it("refuses a server that is not RDS when checked against the RDS bundle (Amazon's CAs signed none of ours)", async () => {
    const bundle = await rdsCaBundleFile({}, work);
    const err = await tlsOf(withVerifyFull(serverUrl(server), bundle)).catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err.hint).toMatch(/did not sign/);
  });

  it('reads credentials from a secret and connects with verify-full, the password in no URL it logs', async () => {
    const client = new SecretsManagerClient(TEST_CLIENT_CONFIG);
    const sm = mockClient(client);
    const arn = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-0a1b2c-AbCdEf';
    // An RDS-managed master secret: username and password only; host and port come from the instance.
    sm.on(GetSecretValueCommand, { SecretId: arn }).resolves({
      SecretString: JSON.stringify({ username: 'postgres', password: server.password }),
    });
    const resolver = new SecretsManagerResolver(client, { caBundleFile: async () => serverCa });
    const url = await resolver.url(
      { secretArn: arn, host: '127.0.0.1', port: server.port, dbname: 'postgres', sslmode: 'verify-full' },
      'secrets.target',
    );
    expect(await tlsOf(url)).toBe(true);
    expect(sm.commandCalls(GetSecretValueCommand).map((c) => c.args[0].input)).toEqual([{ SecretId: arn }]);
  });
});

describe('the RDS CA bundle pgferry ships', () => {
  it("holds Amazon RDS's root CAs, every one a certificate that parses", async () => {
    const certs = pemCertificates(readFileSync(await rdsCaBundleFile({}, work), 'utf8'), 'bundle');
    expect(certs.length).toBeGreaterThan(20);
    expect(certs.every((c) => /Amazon RDS/.test(c.subject) && c.ca)).toBe(true);
    // The 2024 roots of a region, in the three kinds RDS offers.
    const subjects = certs.map((c) => c.subject);
    for (const kind of ['RSA2048 G1', 'RSA4096 G1', 'ECC384 G1'])
      expect(subjects.some((s) => s.includes(`CN=Amazon RDS eu-west-1 Root CA ${kind}`))).toBe(true);
  });

  it(`uses the file ${RDS_CA_BUNDLE_ENV} names instead, and refuses one that holds no certificate`, async () => {
    const own = join(work, 'global-bundle.pem');
    writeFileSync(own, readFileSync(serverCa, 'utf8'));
    expect(await rdsCaBundleFile({ [RDS_CA_BUNDLE_ENV]: own }, work)).toBe(own);
    const empty = join(work, 'empty.pem');
    writeFileSync(empty, 'not a certificate\n');
    const err = await rdsCaBundleFile({ [RDS_CA_BUNDLE_ENV]: empty }, work).catch((e) => e);
    expect(err.field).toBe(RDS_CA_BUNDLE_ENV);
    expect(err.message).toMatch(/holds no PEM certificate/);
    const missing = await rdsCaBundleFile({ [RDS_CA_BUNDLE_ENV]: join(work, 'nope.pem') }, work).catch((e) => e);
    expect(missing.message).toMatch(/cannot be read/);
  });
});
