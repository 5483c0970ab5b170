/**
 * Bulk-load benchmark (not a test): one generated dataset, one server pair, three contenders in one run:
 *   pgferry's snapshot load · the seed's pg_dump -Fc + pg_restore --jobs · pgcopydb clone (when installed).
 * Prints wall time, MiB/s and ratios, and checks every contender's row counts against the source.
 *
 *   npm run bench -- [--scale 50] [--jobs 4] [--json]
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs, promisify } from 'node:util';
import { type LocalServer, startServer } from '../packages/cli/src/local-servers';
import { createMigration, openSession, type Runtime } from '../packages/cli/src/runner';
import { FileMigrationStore } from '../packages/cli/src/store';
import { bulkLoad, prepareSchema, rollback } from '../packages/postgres/src/index';
import { runOk } from './lib';

const { values } = parseArgs({
  options: {
    scale: { type: 'string', default: '50' },
    jobs: { type: 'string', default: '4' },
    json: { type: 'boolean', default: false },
    only: { type: 'string' },
    'split-mb': { type: 'string', default: '256' },
  },
});
/** --only pgferry,dump,pgcopydb runs a subset (ratios need the dump baseline). */
const only = new Set((values.only ?? 'pgferry,dump,pgcopydb').split(','));
const scale = Number(values.scale);
const jobs = Number(values.jobs);
const SPLIT_BYTES = Number(values['split-mb']) * 1024 * 1024; // the same split threshold for pgferry and pgcopydb
const TABLES = ['pgbench_accounts', 'pgbench_branches', 'pgbench_tellers', 'pgbench_history'];
const BIN = '/usr/lib/postgresql/15/bin';

const which = (cmd: string) =>
  promisify(execFile)('which', [cmd]).then(
    (r) => r.stdout.trim(),
    () => undefined,
  );

async function counts(server: LocalServer, db: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const t of TABLES) out[t] = Number((await server.query(`SELECT count(*) AS n FROM ${t}`, [], db)).rows[0]?.n);
  return out;
}

interface Result {
  name: string;
  seconds?: number;
  note?: string;
  countsOk?: boolean;
}

const work = mkdtempSync(join(tmpdir(), 'pgferry-bench-load-'));
const source = await startServer({ version: 15, name: 'bench-load-src' });
const target = await startServer({ version: 15, name: 'bench-load-tgt' });
const results: Result[] = [];
let sizeBytes = 0;
try {
  const env = { PGPASSWORD: source.password };
  await source.query('CREATE DATABASE bench');
  const t0 = performance.now();
  await runOk(
    `${BIN}/pgbench`,
    ['-i', '-s', String(scale), '-q', '-h', '127.0.0.1', '-p', String(source.port), '-U', 'postgres', 'bench'],
    env,
  );
  // pgbench_history has no key; logical replication needs one, and every contender copies the same database.
  await source.query('ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY', [], 'bench');
  await source.query(
    'INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1 + g % 10, 1, g, g % 100, now() FROM generate_series(1, $1) g',
    [scale * 20_000],
    'bench',
  );
  await source.query('VACUUM ANALYZE', [], 'bench');
  sizeBytes = Number((await source.query("SELECT pg_database_size('bench') AS s")).rows[0]?.s);
  const expected = await counts(source, 'bench');
  const MiB = sizeBytes / 1024 / 1024;
  if (!values.json) {
    console.log(
      `dataset: pgbench scale ${scale} + ${scale * 20_000} history rows, ${MiB.toFixed(0)} MiB (generated in ${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    );
    console.log(
      `servers: PostgreSQL 15 → 15 on loopback, fsync=off, full_page_writes=off (same for every contender); --jobs ${jobs}`,
    );
    console.log(
      'pgferry also ANALYZEs every table and builds indexes with maintenance_work_mem=256MB; pg_restore and pgcopydb run with their defaults\n',
    );
  }
  // Every contender starts from the same quiet state: no pending checkpoint, no autovacuum backlog.
  const settle = async () => {
    await source.query('CHECKPOINT');
    await target.query('CHECKPOINT');
  };
  const check = async (db: string) => JSON.stringify(await counts(target, db)) === JSON.stringify(expected);

  // A: the seed's way.
  if (only.has('dump')) {
    await target.query('CREATE DATABASE dump_restore');
    await settle();
    const file = join(work, 'bench.dump');
    const start = performance.now();
    await runOk('pg_dump', ['-Fc', '-f', file, '-d', `postgres://postgres@127.0.0.1:${source.port}/bench`], env);
    const dumped = performance.now();
    await runOk(
      'pg_restore',
      ['-j', String(jobs), '-d', `postgres://postgres@127.0.0.1:${target.port}/dump_restore`, file],
      { PGPASSWORD: target.password },
    );
    const end = performance.now();
    results.push({
      name: 'pg_dump -Fc + pg_restore',
      seconds: (end - start) / 1000,
      note: `dump ${((dumped - start) / 1000).toFixed(1)} s + restore ${((end - dumped) / 1000).toFixed(1)} s`,
      countsOk: await check('dump_restore'),
    });
    await target.query('DROP DATABASE dump_restore');
  }

  // B: pgcopydb, when installed.
  const pgcopydb = only.has('pgcopydb') ? await which('pgcopydb') : undefined;
  if (!only.has('pgcopydb')) {
    // not asked for
  } else if (pgcopydb) {
    await target.query('CREATE DATABASE pgcopydb');
    await settle();
    const start = performance.now();
    await runOk(pgcopydb, [
      'clone',
      '--source',
      source.url('bench'),
      '--target',
      target.url('pgcopydb'),
      '--table-jobs',
      String(jobs),
      '--index-jobs',
      String(jobs),
      '--split-tables-larger-than',
      `${SPLIT_BYTES / 1024 / 1024} MB`,
      '--dir',
      join(work, 'pgcopydb'),
    ]);
    results.push({
      name: 'pgcopydb clone',
      seconds: (performance.now() - start) / 1000,
      countsOk: await check('pgcopydb'),
    });
    await target.query('DROP DATABASE pgcopydb');
  } else {
    results.push({ name: 'pgcopydb clone', note: 'not installed (apt-get install -y pgcopydb)' });
  }

  // C: pgferry's snapshot load: slot + exported snapshot, schema, parallel COPY, indexes, ANALYZE.
  if (only.has('pgferry')) {
    await target.query('CREATE DATABASE pgferry');
    const stateDir = join(work, 'state');
    const rt: Runtime = {
      store: new FileMigrationStore(stateDir),
      stateDir,
      events: { log: () => {}, phase: () => {} },
    };
    const m = await createMigration(rt, {
      id: 'benchload',
      sourceUrl: source.url('bench'),
      targetUrl: target.url('pgferry'),
      jobs,
      splitTableBytes: SPLIT_BYTES,
    });
    const session = await openSession(rt, m.id);
    await settle();
    try {
      const start = performance.now();
      await prepareSchema(session.ctx);
      const summary = await bulkLoad(session.ctx);
      results.push({
        name: 'pgferry snapshot',
        seconds: (performance.now() - start) / 1000,
        note: summary,
        countsOk: await check('pgferry'),
      });
      await rollback(session.ctx); // drop the slot and publication; nothing stays on the source
    } finally {
      await session.close();
    }
    await target.query('DROP DATABASE pgferry');
  }
} finally {
  await Promise.allSettled([source.stop(), target.stop()]);
  rmSync(work, { recursive: true, force: true });
}

const MiB = sizeBytes / 1024 / 1024;
const baseline = results.find((r) => r.name.startsWith('pg_dump'))?.seconds;
const copydb = results.find((r) => r.name === 'pgcopydb clone')?.seconds;
const ferry = results.find((r) => r.name === 'pgferry snapshot')?.seconds;
if (values.json) {
  console.log(JSON.stringify({ scale, jobs, sizeBytes, results }));
} else {
  console.log(
    `${'contender'.padEnd(28)}${'wall s'.padStart(9)}${'MiB/s'.padStart(9)}${'vs dump+restore'.padStart(17)}  rows`,
  );
  for (const r of results) {
    if (r.seconds === undefined) {
      console.log(`${r.name.padEnd(28)}${'-'.padStart(9)}${'-'.padStart(9)}${'-'.padStart(17)}  ${r.note ?? ''}`);
      continue;
    }
    const ratio = baseline ? `${(baseline / r.seconds).toFixed(2)}×` : '-';
    console.log(
      `${r.name.padEnd(28)}${r.seconds.toFixed(1).padStart(9)}${(MiB / r.seconds).toFixed(1).padStart(9)}${ratio.padStart(17)}  ${r.countsOk ? 'match' : 'MISMATCH'}${r.note ? `  (${r.note})` : ''}`,
    );
  }
  const goal = (ok: boolean | undefined) => (ok === undefined ? 'n/a' : ok ? 'met' : 'NOT met');
  console.log(
    `\ngoal: pgferry ≥ 1.6× faster than dump+restore: ${goal(baseline && ferry ? baseline / ferry >= 1.6 : undefined)}${baseline && ferry ? ` (${(baseline / ferry).toFixed(2)}×)` : ''}`,
  );
  console.log(
    `goal: pgferry at least as fast as pgcopydb: ${goal(copydb && ferry ? ferry <= copydb : undefined)}${copydb && ferry ? ` (${(copydb / ferry).toFixed(2)}×)` : ''}`,
  );
}
