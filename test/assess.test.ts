import { afterEach, describe, expect, it } from 'vitest';
import { openSession } from '../packages/cli/src/runner';
import {
  assertNoBlockers,
  assess,
  connect,
  type Db,
  formatReport,
  prepareSchema,
  sourceVersionFinding,
  userObjects,
} from '../packages/postgres/src/index';
import { loadSample, newMigration, type TestRuntime, testRuntime } from './harness/migration';
import { freshPair, leftovers, type Pair, serverUrl } from './harness/pairs';

let pair: Pair | undefined;
let rt: TestRuntime | undefined;
const open: Db[] = [];
afterEach(async () => {
  for (const db of open.splice(0)) await db.end();
  await pair?.drop();
  rt?.dispose();
  pair = undefined;
  rt = undefined;
});

async function dbs(p: Pair, sourceUrl = p.sourceUrl) {
  const source = await connect(sourceUrl, { side: 'source', applicationName: 'pgferry:test' });
  const target = await connect(p.targetUrl, { side: 'target', applicationName: 'pgferry:test' });
  open.push(source, target);
  return { source, target };
}

const codes = (r: Awaited<ReturnType<typeof assess>>, level = 'blocker') =>
  r.findings.filter((f) => f.level === level).map((f) => f.code);

describe('assess', () => {
  it('closes the session of a connection whose first statement fails (its URL sets statement_timeout=1): nothing left open', async () => {
    pair = await freshPair(15, 'asto');
    const url = `${pair.sourceUrl}${pair.sourceUrl.includes('?') ? '&' : '?'}options=${encodeURIComponent('-c statement_timeout=1')}`;
    // The statement after connecting (the timeouts turned off) is cancelled: the connection fails, and
    // its session must go with it (it stayed, and kept the command from ever exiting).
    const failed = await Promise.all(
      [1, 2, 3].map(() =>
        connect(url, { side: 'source', applicationName: 'pgferry:closetest' }).then(
          // (Connected after all: closed here, it is not what this looks for.)
          (db) => db.end().then(() => false),
          () => true,
        ),
      ),
    );
    expect(failed).toContain(true);
    let left: unknown[] = [];
    for (let i = 0; i < 40; i++) {
      left = await pair.source("SELECT pid FROM pg_stat_activity WHERE application_name = 'pgferry:closetest'");
      if (!left.length) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(left).toEqual([]);
  });

  it('finds no blocker in the sample database and explains what it will do, creating nothing', async () => {
    pair = await freshPair(16, 'asmok');
    await loadSample(pair, 100);
    const { source, target } = await dbs(pair);
    const report = await assess(source, target);
    expect(codes(report)).toEqual([]);
    expect(report.target?.version).toBe(16);
    expect(codes(report, 'info')).toEqual(
      expect.arrayContaining([
        'table-replica-identity',
        'partitioned-table',
        'generated-columns',
        'identity-columns',
        'unowned-sequence',
      ]),
    );
    expect(() => assertNoBlockers(report)).not.toThrow();
    expect(formatReport(report)).toContain('no blockers: ready to migrate');
    expect(await leftovers(pair)).toEqual([]);
  });

  it('blocks a table without identity, large objects, an extension RDS lacks and a non-empty target, naming each', async () => {
    pair = await freshPair(15, 'asmbad');
    await pair.source('CREATE TABLE no_key (a int, b text); CREATE EXTENSION file_fdw; SELECT lo_create(0)');
    await pair.source('CREATE MATERIALIZED VIEW mv AS SELECT 1 AS x');
    await pair.target('CREATE TABLE already_here (id int PRIMARY KEY)');
    const { source, target } = await dbs(pair);
    const report = await assess(source, target, { migrationId: 'whatever' });
    expect(codes(report).sort()).toEqual(
      ['extension-not-on-rds', 'extension-unavailable', 'large-objects', 'table-without-identity', 'target-not-empty']
        .filter((c) => c !== 'extension-unavailable' || report.findings.some((f) => f.code === c))
        .sort(),
    );
    expect(report.findings.find((f) => f.code === 'table-without-identity')?.object).toBe('public.no_key');
    expect(report.findings.find((f) => f.code === 'extension-not-on-rds')?.message).toContain('file_fdw');
    expect(codes(report, 'warning')).toContain('materialized-view');
    expect(() => assertNoBlockers(report)).toThrow(/already_here[\s\S]*no_key|no_key[\s\S]*already_here/);
    expect(await leftovers(pair)).toEqual([]);
  });

  it('counts functions, types, schemas and extensions on the target, not only tables, since a rollback empties it', async () => {
    pair = await freshPair(15, 'asmobjs');
    await pair.target(`CREATE FUNCTION keep_me() RETURNS int LANGUAGE sql AS 'SELECT 1';
      CREATE TYPE mood AS ENUM ('ok'); CREATE COLLATION c_collation (locale = 'C'); CREATE SCHEMA reports`);
    const { source, target } = await dbs(pair);
    const blocker = (await assess(source, target)).findings.find((f) => f.code === 'target-not-empty');
    expect(blocker?.message).toMatch(/\(collation c_collation, function keep_me\(\), type mood, …\)/);
    // An extension alone (its functions and types are its own, not named one by one) is enough too.
    await pair.target('DROP FUNCTION keep_me(); DROP TYPE mood; DROP COLLATION c_collation; DROP SCHEMA reports');
    await pair.target('CREATE EXTENSION pgcrypto');
    expect(await userObjects(target)).toEqual(['extension pgcrypto']);
    // Default privileges in public: a rollback (DROP SCHEMA public CASCADE) would take them along.
    await pair.target(
      'DROP EXTENSION pgcrypto; ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC',
    );
    expect(await userObjects(target)).toEqual(['default privileges in schema public']);
    await pair.target(
      'ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM PUBLIC; CREATE EXTENSION pgcrypto',
    );
    await pair.target('CREATE SCHEMA reports; CREATE FUNCTION keep_me() RETURNS int LANGUAGE sql AS $$SELECT 1$$');
    // Without the table count to go by, prepare-schema refuses the target too, and leaves it as it was.
    rt = testRuntime();
    const m = await newMigration(rt, pair);
    const session = await openSession(rt, m.id);
    try {
      await expect(prepareSchema(session.ctx)).rejects.toThrow(
        /not empty \(extension pgcrypto, function keep_me\(\), schema reports\)/,
      );
    } finally {
      await session.close();
    }
    expect(await pair.target("SELECT extname FROM pg_extension WHERE extname = 'pgcrypto'")).toHaveLength(1);
    expect(await pair.target("SELECT to_regprocedure('keep_me()') IS NOT NULL AS kept")).toEqual([{ kept: true }]);
  });

  it('blocks a role without the replication privilege and names the fix', async () => {
    pair = await freshPair(15, 'asmpriv');
    await loadSample(pair, 10);
    const role = `plain_${pair.sourceDb.slice(-8)}`;
    await pair.source(
      `CREATE ROLE ${role} LOGIN PASSWORD 'pw'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO ${role}`,
    );
    try {
      const { source, target } = await dbs(pair, serverUrl(pair.sourceServer, pair.sourceDb, role, 'pw'));
      const report = await assess(source, target);
      const f = report.findings.find((x) => x.code === 'source-replication-privilege');
      expect(f?.level).toBe('blocker');
      expect(f?.hint).toContain(`ALTER ROLE ${role} REPLICATION`);
      expect(codes(report)).toContain('source-publication-ownership');
      // What would keep the cutover from happening is said now, not after hours of loading.
      expect(codes(report, 'warning')).toEqual(
        expect.arrayContaining(['freeze-privilege', 'reverse-subscription-privilege']),
      );
    } finally {
      for (const db of open.splice(0)) await db.end();
      await pair.source(`DROP OWNED BY ${role}; DROP ROLE ${role}`);
    }
  });

  it('assesses a PostgreSQL 11 source: its partitions published one by one, its slot unbounded', async () => {
    pair = await freshPair(17, 'asm11', 11);
    await loadSample(pair, 100);
    const { source, target } = await dbs(pair);
    const report = await assess(source, target);
    expect(report.source.version).toBe(11);
    expect(codes(report)).toEqual([]);
    expect(report.findings.find((f) => f.code === 'partitioned-table')?.message).toContain('published one by one');
    expect(report.findings.find((f) => f.code === 'source-wal-keep-unbounded')?.message).toContain(
      'PostgreSQL 11 cannot bound the WAL a slot keeps',
    );
  });

  // No PostgreSQL 10 server runs here: the decision is checked on the version a source reports.
  it('blocks a source older than PostgreSQL 11, naming its version and what is supported', () => {
    const blocker = sourceVersionFinding(10, 'PostgreSQL 10.23 on x86_64-pc-linux-gnu, compiled by gcc, 64-bit');
    expect(blocker).toMatchObject({ level: 'blocker', code: 'source-version' });
    expect(blocker?.message).toBe(
      'source runs PostgreSQL 10.23: pgferry migrates sources of PostgreSQL 11 or newer (nothing else was checked)',
    );
    expect(blocker?.hint).toMatch(/upgrade the source to PostgreSQL 11 or newer/);
    expect(sourceVersionFinding(9, 'PostgreSQL 9.6.24 on x86_64-pc-linux-gnu')?.message).toContain('9.6.24');
    for (const version of [11, 12, 13, 17])
      expect(sourceVersionFinding(version, `PostgreSQL ${version}.1`)).toBe(undefined);
  });
});
