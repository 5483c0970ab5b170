/**
 * Bulk-load benchmark (not a test): one generated dataset, one server pair, three contenders in one run:
 *   pgferry's snapshot load · the seed's pg_dump -Fc + pg_restore --jobs · pgcopydb clone (when installed).
 * Prints wall time, MiB/s and ratios, and checks every contender's row counts against the source.
 *
 *   npm run bench -- [--scale 50] [--jobs 4] [--rounds 3] [--target-version 15|16|17] [--only pgferry,dump,pgcopydb] [--split-mb 8192] [--early-index-mb 32] [--json]
 *
 * This machine's timings vary by ±20 % from run to run, so every contender runs --rounds times,
 * interleaved with a rotating order (A B C, B C A, …), and the goals are judged on the medians; every round is printed.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs, promisify } from 'node:util';
import { type LocalServer, type ServerVersion, startServer } from '../packages/cli/src/local-servers';
import { createMigration, openSession, type Runtime } from '../packages/cli/src/runner';
import { FileMigrationStore } from '../packages/cli/src/store';
import { DEFAULTS } from '../packages/core/src/index';
import { bulkLoad, indexBuildMemoryMB, prepareSchema, rollback } from '../packages/postgres/src/index';
import { runOk } from './lib';

const { values } = parseArgs({
  options: {
    scale: { type: 'string', default: '50' },
    jobs: { type: 'string', default: '4' },
    rounds: { type: 'string', default: '3' },
    /** The target server's major version (the source is 15: pg_dump 15 cannot dump a newer server). */
    'target-version': { type: 'string', default: '15' },
    json: { type: 'boolean', default: false },
    only: { type: 'string' },
    'split-mb': { type: 'string', default: String(DEFAULTS.splitTableBytes / 1024 / 1024) },
    /** pgferry's earlyIndexBytes (tables at least this big get their indexes built during the copy). */
    'early-index-mb': { type: 'string', default: String(DEFAULTS.earlyIndexBytes / 1024 / 1024) },
  },
});
/** --only pgferry,dump,pgcopydb runs a subset (ratios need the dump baseline). */
const only = new Set((values.only ?? 'pgferry,dump,pgcopydb').split(','));
const scale = Number(values.scale);
const jobs = Number(values.jobs);
const rounds = Math.max(1, Number(values.rounds));
const SPLIT_BYTES = Number(values['split-mb']) * 1024 * 1024; // the same split threshold for pgferry and pgcopydb
const TABLES = ['pgbench_accounts', 'pgbench_branches', 'pgbench_tellers', 'pgbench_history'];
const BIN = '/usr/lib/postgresql/15/bin';
const targetVersion = Number(values['target-version']);
if (![15, 16, 17].includes(targetVersion)) {
  console.error(`--target-version: ${values['target-version']} is not one of 15, 16, 17`);
  process.exit(2);
}

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

/** Busy and total CPU time of the whole machine so far (jiffies, from /proc/stat). */
function cpuTimes(): { busy: number; total: number } {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0]?.trim().split(/\s+/).slice(1).map(Number) ?? [];
  const total = fields.reduce((a, b) => a + b, 0);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0); // idle + iowait
  return { busy: total - idle, total };
}

/** Run fn and report how busy the machine's cores were meanwhile (1.0 = every core all the time). */
async function measured<T>(fn: () => Promise<T>): Promise<{ value: T; busy: number }> {
  const before = cpuTimes();
  const value = await fn();
  const after = cpuTimes();
  return { value, busy: (after.busy - before.busy) / Math.max(1, after.total - before.total) };
}

interface Result {
  name: string;
  round: number;
  seconds?: number;
  /** Share of the machine's CPU in use while it ran. */
  busy?: number;
  note?: string;
  countsOk?: boolean;
}

const work = mkdtempSync(join(tmpdir(), 'pgferry-bench-load-'));
const source = await startServer({ version: 15, name: 'bench-load-src' });
const target = await startServer({ version: targetVersion as ServerVersion, name: 'bench-load-tgt' });
const results: Result[] = [];
const DUMP = 'pg_dump -Fc + pg_restore';
const COPYDB = 'pgcopydb clone';
const FERRY = 'pgferry snapshot';
let pgcopydbInstalled = false;
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
      `servers: PostgreSQL 15 → ${targetVersion} on loopback, fsync=off, full_page_writes=off (same for every contender); --jobs ${jobs}; tables over ${SPLIT_BYTES / 1024 / 1024} MiB split into ranges (pgferry, pgcopydb)`,
    );
    console.log(
      `pgferry also ANALYZEs every table and builds indexes with maintenance_work_mem=${indexBuildMemoryMB(jobs, jobs)}MB each, up to ${indexBuildMemoryMB(jobs, 1)}MB for an index built alone; pg_restore and pgcopydb run with their defaults\n`,
    );
  }
  // Every contender starts from the same quiet state: no pending checkpoint, no autovacuum backlog,
  // and no dirty page cache of an earlier contender (the servers run with fsync=off) for the kernel
  // to write back while this one runs.
  const settle = async () => {
    await source.query('CHECKPOINT');
    await target.query('CHECKPOINT');
    await runOk('sync', []);
  };
  // A new server has to create (zero-fill) every WAL segment it writes, a server in service reuses
  // old ones: whoever ran first used to pay ~3 s for it. Write and recycle ~1.5 GiB of WAL first.
  const warm = performance.now();
  await target.query('CREATE DATABASE warmup');
  await target.query(
    "CREATE TABLE warm AS SELECT g, repeat('x', 400) AS pad FROM generate_series(1, 3000000) g",
    [],
    'warmup',
  );
  await target.query('DROP DATABASE warmup');
  await settle();
  if (!values.json)
    console.log(`warm-up: target wrote and recycled its WAL in ${((performance.now() - warm) / 1000).toFixed(1)} s\n`);
  const check = async (db: string) => JSON.stringify(await counts(target, db)) === JSON.stringify(expected);
  const pgcopydb = only.has('pgcopydb') ? await which('pgcopydb') : undefined;
  pgcopydbInstalled = pgcopydb !== undefined;

  // A: the seed's way.
  const dumpRestore = async (round: number): Promise<Result> => {
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
    const result = {
      name: DUMP,
      round,
      seconds: (end - start) / 1000,
      note: `dump ${((dumped - start) / 1000).toFixed(1)} s + restore ${((end - dumped) / 1000).toFixed(1)} s`,
      countsOk: await check('dump_restore'),
    };
    await target.query('DROP DATABASE dump_restore');
    rmSync(file, { force: true });
    return result;
  };

  // B: pgcopydb, when installed.
  const copydb = async (round: number, bin: string): Promise<Result> => {
    await target.query('CREATE DATABASE pgcopydb');
    await settle();
    const dir = join(work, `pgcopydb-${round}`);
    const start = performance.now();
    await runOk(bin, [
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
      dir,
    ]);
    const result = {
      name: COPYDB,
      round,
      seconds: (performance.now() - start) / 1000,
      countsOk: await check('pgcopydb'),
    };
    await target.query('DROP DATABASE pgcopydb');
    rmSync(dir, { recursive: true, force: true });
    return result;
  };

  // C: pgferry's snapshot load: slot + exported snapshot, schema, parallel COPY, indexes, ANALYZE.
  const ferry = async (round: number): Promise<Result> => {
    await target.query('CREATE DATABASE pgferry');
    const stateDir = join(work, `state-${round}`);
    const rt: Runtime = {
      store: new FileMigrationStore(stateDir),
      stateDir,
      events: { log: () => {}, phase: () => {} },
    };
    const m = await createMigration(rt, {
      id: `benchload${round}`,
      sourceUrl: source.url('bench'),
      targetUrl: target.url('pgferry'),
      jobs,
      splitTableBytes: SPLIT_BYTES,
      earlyIndexBytes: Number(values['early-index-mb']) * 1024 * 1024,
    });
    const session = await openSession(rt, m.id);
    await settle();
    let result: Result;
    let ownCpu = 0;
    try {
      const start = performance.now();
      const cpu = process.cpuUsage();
      await prepareSchema(session.ctx);
      const summary = await bulkLoad(session.ctx);
      const used = process.cpuUsage(cpu);
      ownCpu = (used.user + used.system) / 1e6;
      result = {
        name: FERRY,
        round,
        seconds: (performance.now() - start) / 1000,
        note: `${summary}; pgferry's own process used ${ownCpu.toFixed(2)} CPU-s`,
        countsOk: await check('pgferry'),
      };
      await rollback(session.ctx); // drop the slot and publication; nothing stays on the source
    } finally {
      await session.close();
    }
    await target.query('DROP DATABASE pgferry');
    return result;
  };

  for (let round = 1; round <= rounds; round++) {
    const order: Array<() => Promise<Result>> = [];
    if (only.has('dump')) order.push(() => dumpRestore(round));
    if (pgcopydb) order.push(() => copydb(round, pgcopydb));
    if (only.has('pgferry')) order.push(() => ferry(round));
    // Each round starts with a different contender, so none always runs first (or last).
    for (let i = 0; i < order.length; i++) {
      const { value, busy } = await measured(order[(i + round - 1) % order.length] as () => Promise<Result>);
      results.push({ ...value, busy });
    }
    if (!values.json) console.log(`round ${round}/${rounds} done`);
  }
} finally {
  await Promise.allSettled([source.stop(), target.stop()]);
  rmSync(work, { recursive: true, force: true });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};
const MiB = sizeBytes / 1024 / 1024;
const timesOf = (name: string) =>
  results.filter((r) => r.name === name && r.seconds !== undefined).map((r) => r.seconds as number);
const medianOf = (name: string) => (timesOf(name).length ? median(timesOf(name)) : undefined);
const baseline = medianOf(DUMP);
const copydbMedian = medianOf(COPYDB);
const ferryMedian = medianOf(FERRY);
const allMatch = results.every((r) => r.countsOk);
if (values.json) {
  console.log(
    JSON.stringify({
      scale,
      jobs,
      rounds,
      sizeBytes,
      medians: { dump: baseline, pgcopydb: copydbMedian, pgferry: ferryMedian },
      results,
    }),
  );
} else {
  console.log(
    `\n${'contender'.padEnd(28)}${'round'.padStart(6)}${'wall s'.padStart(9)}${'MiB/s'.padStart(9)}${'CPU busy'.padStart(10)}  rows`,
  );
  for (const r of results) {
    console.log(
      `${r.name.padEnd(28)}${String(r.round).padStart(6)}${(r.seconds?.toFixed(1) ?? '-').padStart(9)}${(r.seconds ? (MiB / r.seconds).toFixed(1) : '-').padStart(9)}${(r.busy === undefined ? '-' : `${(r.busy * 100).toFixed(0)} %`).padStart(10)}  ${r.countsOk ? 'match' : 'MISMATCH'}${r.note ? `  (${r.note})` : ''}`,
    );
  }
  if (only.has('pgcopydb') && !pgcopydbInstalled)
    console.log(`${COPYDB.padEnd(28)}  not installed (apt-get install -y pgcopydb)`);
  console.log(`\nmedians over ${rounds} round(s):`);
  for (const name of [DUMP, COPYDB, FERRY]) {
    const m = medianOf(name);
    if (m === undefined) continue;
    const ratio = baseline ? `${(baseline / m).toFixed(2)}× dump+restore` : '';
    const range = `${Math.min(...timesOf(name)).toFixed(1)}–${Math.max(...timesOf(name)).toFixed(1)} s`;
    console.log(
      `  ${name.padEnd(28)}${m.toFixed(1).padStart(6)} s  ${(MiB / m).toFixed(1).padStart(6)} MiB/s  ${ratio}  (range ${range})`,
    );
  }
  const goal = (ok: boolean | undefined) => (ok === undefined ? 'n/a' : ok ? 'met' : 'NOT met');
  console.log(
    `\ngoal: pgferry ≥ 1.6× faster than dump+restore (medians): ${goal(baseline && ferryMedian ? baseline / ferryMedian >= 1.6 : undefined)}${baseline && ferryMedian ? ` (${(baseline / ferryMedian).toFixed(2)}×)` : ''}`,
  );
  console.log(
    `goal: pgferry at least as fast as pgcopydb (medians): ${goal(copydbMedian && ferryMedian ? ferryMedian <= copydbMedian : undefined)}${copydbMedian && ferryMedian ? ` (${(copydbMedian / ferryMedian).toFixed(2)}×)` : ''}`,
  );
  console.log(`every contender's row counts match the source: ${allMatch ? 'yes' : 'NO'}`);
}
if (!allMatch) process.exitCode = 1;
