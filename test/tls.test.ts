import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { advance, cleanupMigration } from '../packages/cli/src/runner';
import { LiveWriter } from '../packages/cli/src/writer';
import { connect, conninfo, createSubscription, type Db, toolConnection } from '../packages/postgres/src/index';
import { loadSample, newMigration, sleep, type TestRuntime, testRuntime } from './harness/migration';
import { freshPair, leftovers, type Pair } from './harness/pairs';

let pair: Pair | undefined;
let rt: TestRuntime | undefined;
const dbs: Db[] = [];
afterEach(async () => {
  for (const d of dbs.splice(0)) await d.end();
  await pair?.drop();
  rt?.dispose();
  pair = undefined;
  rt = undefined;
});

async function tlsOf(url: string, side: 'source' | 'target' = 'source') {
  const db = await connect(url, { side, applicationName: 'pgferry:tls-test' });
  dbs.push(db);
  return (await db.one<{ ssl: boolean }>('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).ssl;
}

describe('TLS, read the way libpq reads a URL', () => {
  it('uses TLS when the server offers it, requires it on sslmode=require without verifying, and checks certificate and name on verify-full', async () => {
    pair = await freshPair(15, 'tls');
    const src = pair.sourceUrl; // offers TLS (self-signed, like RDS with its own CA)
    const plain = pair.targetUrl; // offers none
    expect(await tlsOf(src)).toBe(true); // no sslmode = prefer
    expect(await tlsOf(`${src}?sslmode=require`)).toBe(true); // encrypted; not verified (libpq's require)
    expect(await tlsOf(`${src}?sslmode=disable`)).toBe(false);
    expect(await tlsOf(`${src}?ssl=false`)).toBe(false); // node-postgres's own spelling of "no TLS"
    // ?dbname= names the database, as it does for libpq (pg_dump, the subscription).
    const named = await connect(`${src.replace(/\/[^/?]*$/, '/postgres')}?dbname=${pair.sourceDb}`, {
      side: 'source',
      applicationName: 'pgferry:tls-test',
    });
    dbs.push(named);
    expect(named.database).toBe(pair.sourceDb);
    expect((await named.one<{ db: string }>('SELECT current_database() AS db')).db).toBe(pair.sourceDb);
    await expect(tlsOf(`${src}?sslmode=requre`)).rejects.toThrow(/--source.*sslmode=requre is not one of disable/s);
    expect(await tlsOf(plain, 'target')).toBe(false); // prefer falls back
    await expect(tlsOf(`${plain}?sslmode=require`, 'target')).rejects.toThrow(/--target.*does not support SSL/s);
    const noCa = await tlsOf(`${src}?sslmode=verify-full`).catch((e) => e);
    expect(noCa.message).toMatch(/--source.*(self.signed|certificate)/is);
    expect(noCa.hint).toMatch(/add sslrootcert=.*or use sslmode=require/);
    // With the CA, verify-ca and verify-full pass; the certificate names 127.0.0.1, not localhost.
    const ca = encodeURIComponent(pair.sourceServer.certFile ?? 'missing');
    expect(await tlsOf(`${src}?sslmode=verify-ca&sslrootcert=${ca}`)).toBe(true);
    expect(await tlsOf(`${src}?sslmode=verify-full&sslrootcert=${ca}`)).toBe(true);
    const byName = src.replace('@127.0.0.1:', '@localhost:');
    expect(byName).not.toBe(src);
    expect(await tlsOf(`${byName}?sslmode=verify-ca&sslrootcert=${ca}`)).toBe(true);
    const wrongName = await tlsOf(`${byName}?sslmode=verify-full&sslrootcert=${ca}`).catch((e) => e);
    expect(wrongName.message).toMatch(/--source.*localhost/is);
    expect(wrongName.hint).toMatch(/connect by a name the source's certificate lists/);
    // A CA file that did not sign the server's certificate.
    const other = mkdtempSync(join(tmpdir(), 'pgferry-other-ca-'));
    try {
      execFileSync(
        'openssl',
        ['req', '-new', '-x509', '-days', '1', '-nodes', '-subj', '/CN=other'].concat([
          '-keyout',
          join(other, 'ca.key'),
          '-out',
          join(other, 'ca.crt'),
        ]),
        { stdio: 'ignore' },
      );
      const wrongCa = await tlsOf(
        `${src}?sslmode=verify-ca&sslrootcert=${encodeURIComponent(join(other, 'ca.crt'))}`,
      ).catch((e) => e);
      expect(wrongCa.hint).toMatch(/CA file in sslrootcert of --source did not sign/);
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });

  it('keeps client-side certificate paths and node-only options out of what the servers and libpq tools get', () => {
    const url =
      'postgres://u:p@db.example:5432/app?sslmode=verify-full&sslrootcert=%2Fhome%2Fme%2Frds-ca.pem&uselibpqcompat=true&connect_timeout=5';
    // The subscription runs on the other server, which cannot read this machine's files.
    expect(conninfo(url)).toBe(
      "host='db.example' port='5432' dbname='app' user='u' password='p' sslmode='require' connect_timeout='5'",
    );
    // pg_dump is libpq on this machine: the CA path stays, the node-only option goes.
    expect(toolConnection(url).url).toBe(
      'postgres://u@db.example:5432/app?sslmode=verify-full&sslrootcert=%2Fhome%2Fme%2Frds-ca.pem&connect_timeout=5',
    );
    // A password never reaches argv (ps shows it), not even as a parameter; spaces stay spaces for libpq.
    const tool = toolConnection('postgres://u@db/app?password=s%20cret&options=-c%20search_path%3Dapp');
    expect(tool.url).toBe('postgres://u@db/app?options=-c%20search_path%3Dapp');
    expect(tool.env).toEqual({ PGPASSWORD: 's cret' });
  });

  it('never shows the source password when CREATE SUBSCRIPTION fails', async () => {
    pair = await freshPair(15, 'subpw');
    const target = await connect(pair.targetUrl, { side: 'target', applicationName: 'pgferry:tls-test' });
    dbs.push(target);
    // A publisher nobody answers at: the subscription cannot connect, and the error quotes its SQL.
    const unreachable = 'postgres://app:hunter2pass@127.0.0.1:1/shop';
    const err = await createSubscription(target, 'pgferry_subpw', unreachable, 'p', 's').catch((e) => e);
    expect(err.message).toMatch(/could not connect/);
    expect(`${err.message} ${err.hint}`).not.toContain('hunter');
    expect(err.hint).toContain("password=''*"); // redacted, then cut to 120 characters
  });

  it('migrates over TLS end to end, verify-full from the source and require to the target, 15 → 17', async () => {
    pair = await freshPair(17, 'tlsmig');
    rt = testRuntime();
    await loadSample(pair, 1000);
    // pgferry, pg_dump and pg_restore verify the source's certificate and name against its CA; the
    // subscriptions, which run on the servers, cannot read this machine's CA file and get require.
    const sourceUrl = `${pair.sourceUrl}?sslmode=verify-full&sslrootcert=${encodeURIComponent(pair.sourceServer.certFile ?? 'missing')}`;
    const targetUrl = `${pair.targetUrl}?sslmode=require`;
    const writer = new LiveWriter({ switchFile: rt.switchFile, name: 'app', intervalMs: 2 });
    const m = await newMigration(rt, pair, { cutover: 'auto', sourceUrl, targetUrl });
    writer.start();
    try {
      await sleep(200);
      const state = await advance(rt, m.id, { cutover: 'auto' });
      await sleep(300);
      const stats = await writer.stop();
      expect(state.status).toBe('cut-over');
      expect(state.verify?.ok).toBe(true);
      expect(stats.servers.length).toBe(2);
      expect(await writer.lostWrites(targetUrl)).toEqual([]);
      // The reverse subscription (on the source) reaches the target over TLS too.
      const walsenders = await pair.target(
        "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.application_name LIKE 'pgferry%'",
      );
      expect(walsenders.length).toBeGreaterThan(0);
      expect(walsenders.every((w) => w.ssl === true)).toBe(true);
      expect((await cleanupMigration(rt, m.id)).leftovers).toEqual([]);
      expect(await leftovers(pair)).toEqual([]);
    } finally {
      await writer.stop();
    }
  });
});
