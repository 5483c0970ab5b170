/**
 * Load benchmark (not a test): each dataset on one server pair, three contenders spawned as the
 * commands a user runs, timed as the user waits for them:
 *   pgferry migrate --cutover manual --yes (returns once the target is a complete, indexed, replicating
 *     copy, caught up) · pg_dump -Fc + pg_restore --jobs · pgcopydb clone (when installed).
 * Prints wall time, each contender's phases, MiB/s and ratios, the CPU-seconds each command cost
 * (both servers, the command and what it started: over the machine's cores, the least time it could
 * take here), and checks every contender's row counts against the source. After pgferry's load, outside its time, the verify that `pgferry cutover`
 * runs before it freezes anything is timed and set against the load's time. Asserts nothing.
 *
 *   npm run bench -- [--dataset orders,pgbench] [--orders-mb 1290] [--scale 50] [--jobs 4]
 *                    [--copydb-jobs 2] [--rounds 3] [--fsync on|off] [--target-version 15|16|17]
 *                    [--only pgferry,dump,pgcopydb] [--split-mb 8192] [--json]
 *
 * "orders" has no wide char(n) column (bigint keys, timestamptz, numeric, text, jsonb, two secondary
 * indexes, a foreign key); "pgbench" is pgbench's schema, whose `filler char(84)` pgferry sends trimmed.
 * This machine's timings vary by ±20 % from run to run, so every contender runs --rounds times,
 * interleaved with a rotating order (A B C, B C A, …), and the goals are judged on the medians.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs, promisify } from 'node:util';
import { type LocalServer, type ServerVersion, startServer } from '../packages/cli/src/local-servers';
import { openSession } from '../packages/cli/src/runner';
import { FileMigrationStore } from '../packages/cli/src/store';
import { DEFAULTS } from '../packages/core/src/index';
import { verifyTables } from '../packages/postgres/src/index';
import { runOk } from './lib';

const { values } = parseArgs({
  options: {
    dataset: { type: 'string', default: 'orders,pgbench' },
    /** Size of the orders database (tables and indexes), about. */
    'orders-mb': { type: 'string', default: '1290' },
    scale: { type: 'string', default: '50' },
    /** pgferry's --jobs and pg_restore's --jobs. */
    jobs: { type: 'string', default: String(DEFAULTS.jobs) },
    /** pgcopydb's --table-jobs and --index-jobs. */
    'copydb-jobs': { type: 'string', default: '2' },
    rounds: { type: 'string', default: '3' },
    /** Production durability (on) by default; off makes both servers skip every fsync. */
    fsync: { type: 'string', default: 'on' },
    /** The target server's major version (the source is 15: pg_dump 15 cannot dump a newer server). */
    'target-version': { type: 'string', default: '15' },
    json: { type: 'boolean', default: false },
    only: { type: 'string' },
    'split-mb': { type: 'string', default: String(DEFAULTS.splitTableBytes / 1024 / 1024) },
  },
});
const only = new Set((values.only ?? 'pgferry,dump,pgcopydb').split(','));
const datasets = (values.dataset ?? '').split(',').filter(Boolean);
const scale = Number(values.scale);
const ordersMB = Number(values['orders-mb']);
const jobs = Number(values.jobs);
const copydbJobs = Number(values['copydb-jobs']);
const rounds = Math.max(1, Number(values.rounds));
const SPLIT_BYTES = Number(values['split-mb']) * 1024 * 1024; // the same split threshold for pgferry and pgcopydb
const BIN = '/usr/lib/postgresql/15/bin';
/** The bundle `npm run bench` builds first, run as is (see pgferry-bundle.mjs). */
const PGFERRY = resolve(import.meta.dirname, 'pgferry-bundle.mjs');
const targetVersion = Number(values['target-version']);
const fail = (message: string) => {
  console.error(message);
  process.exit(2);
};
if (![15, 16, 17].includes(targetVersion))
  fail(`--target-version: ${values['target-version']} is not one of 15, 16, 17`);
if (!['on', 'off'].includes(values.fsync ?? '')) fail(`--fsync: ${values.fsync} is not on or off`);
for (const d of datasets) if (!['orders', 'pgbench'].includes(d)) fail(`--dataset: ${d} is not orders or pgbench`);
const durable = values.fsync === 'on';

const which = (cmd: string) =>
  promisify(execFile)('which', [cmd]).then(
    (r) => r.stdout.trim(),
    () => undefined,
  );

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

/** CPU seconds of a process as /proc gives them: its own, and (with `children`) those of its children it has waited for. */
function procCpu(pid: number | string, children: boolean): { cpu: number; ppid: number } {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After the command name, which may itself hold ") ".
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const own = Number(f[11]) + Number(f[12]);
    return { cpu: (own + (children ? Number(f[13]) + Number(f[14]) : 0)) / 100, ppid: Number(f[1]) };
  } catch {
    return { cpu: 0, ppid: -1 };
  }
}

/**
 * CPU seconds used so far by both servers (every process of theirs, ended backends included) and by
 * the commands this process ran and waited for (a contender and whatever it started): their
 * difference over a run is what the run cost the machine, whatever else it was doing.
 */
function cpuSeconds(servers: LocalServer[]): number {
  let total = procCpu('self', true).cpu - procCpu('self', false).cpu;
  const pids = readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  for (const server of servers) {
    const postmaster = Number(readFileSync(join(server.baseDir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
    total += procCpu(postmaster, true).cpu;
    for (const pid of pids) {
      const p = procCpu(pid, false);
      if (p.ppid === postmaster) total += p.cpu;
    }
  }
  return total;
}
const CORES = availableParallelism();

const loadAverage = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

interface Result {
  dataset: string;
  name: string;
  round: number;
  seconds?: number;
  /** Share of the machine's CPU in use while it ran. */
  busy?: number;
  /** CPU seconds the command cost: both servers, the command and what it started (cpuSeconds). */
  cpu?: number;
  /** The contender's own steps, as it reports them. */
  phases?: string;
  countsOk?: boolean;
  /** pgferry only: the verify `pgferry cutover` runs before it freezes anything, timed after the load. */
  verify?: { seconds: number; sourceMiBps: number; targetMiBps: number; outcome: string };
}

/** The runner's events, unheard: the bench prints its own lines. */
const quiet = { log: () => {}, phase: () => {} };

const DUMP = 'pg_dump -Fc + pg_restore';
const COPYDB = 'pgcopydb clone';
const FERRY = 'pgferry migrate';

interface Dataset {
  name: string;
  label: string;
  tables: string[];
  generate(source: LocalServer, db: string): Promise<void>;
}

const pgbench: Dataset = {
  name: 'pgbench',
  label: `pgbench scale ${scale} + ${scale * 20_000} history rows`,
  tables: ['pgbench_accounts', 'pgbench_branches', 'pgbench_tellers', 'pgbench_history'],
  async generate(source, db) {
    await runOk(
      `${BIN}/pgbench`,
      ['-i', '-s', String(scale), '-q', '-h', '127.0.0.1', '-p', String(source.port), '-U', 'postgres', db],
      { PGPASSWORD: source.password },
    );
    // pgbench_history has no key; logical replication needs one, and every contender copies the same database.
    await source.query('ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY', [], db);
    await source.query(
      'INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1 + g % 10, 1, g, g % 100, now() FROM generate_series(1, $1) g',
      [scale * 20_000],
      db,
    );
  },
};

/** About 236 bytes per order in the heap and its three indexes (the customers included), measured at 4.7 M rows. */
const ORDER_BYTES = 236;
const orders: Dataset = {
  name: 'orders',
  label: `orders ~${ordersMB} MiB: bigint keys, timestamptz, numeric, text, jsonb, two secondary indexes, a foreign key`,
  tables: ['customers', 'orders'],
  async generate(source, db) {
    const rows = Math.round((ordersMB * 1024 * 1024) / ORDER_BYTES);
    const customers = Math.max(1000, Math.round(rows / 25));
    await source.query(
      `CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, created_at timestamptz NOT NULL);
       CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers (id),
         created_at timestamptz NOT NULL, amount numeric(12, 2) NOT NULL, status text NOT NULL, note text, payload jsonb NOT NULL)`,
      [],
      db,
    );
    await source.query(
      `INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com', '2020-01-01'::timestamptz + g * interval '1 min'
         FROM generate_series(1, $1) g`,
      [customers],
      db,
    );
    // In slices, so that no one transaction holds the whole table's WAL.
    const slice = 1_000_000;
    for (let from = 1; from <= rows; from += slice) {
      await source.query(
        `INSERT INTO orders
         SELECT g, 1 + (g * 7919) % $3, '2021-01-01'::timestamptz + g * interval '3 s', ((g * 37) % 100000) / 100.0,
                (ARRAY['new', 'paid', 'shipped', 'delivered', 'returned'])[1 + g % 5],
                CASE WHEN g % 3 = 0 THEN 'gift wrap, leave at the door ' || g END,
                jsonb_build_object('sku', 'SKU-' || (g % 5000), 'qty', 1 + g % 7, 'channel', (ARRAY['web', 'app', 'store'])[1 + g % 3],
                                   'tags', jsonb_build_array('t' || (g % 11), 't' || (g % 13)))
           FROM generate_series($1::bigint, $2::bigint) g`,
        [from, Math.min(rows, from + slice - 1), customers],
        db,
      );
    }
    await source.query(
      `CREATE INDEX orders_customer_id ON orders (customer_id);
       CREATE INDEX orders_created_at ON orders (created_at)`,
      [],
      db,
    );
  },
};

async function counts(server: LocalServer, db: string, tables: string[]): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const t of tables) out[t] = Number((await server.query(`SELECT count(*) AS n FROM ${t}`, [], db)).rows[0]?.n);
  return out;
}

/** pgcopydb's closing summary table: each step and its duration, as it prints them. */
function copydbSteps(out: string): string {
  const lines = out.split('\n');
  const head = lines.findIndex((l) => /Step\s+Connection\s+Duration/.test(l));
  if (head < 0) return '';
  return lines
    .slice(head + 1)
    .map((l) => l.trim().split(/\s{2,}/))
    .filter((c) => c.length >= 4 && !/^-+$/.test(c[0] ?? ''))
    .map((c) => `${c[0]} ${c[2]}`)
    .join(', ');
}

const work = mkdtempSync(join(tmpdir(), 'pgferry-bench-load-'));
// Production durability unless --fsync off: what a user's servers do, and what the issue measured.
const settings = durable ? { fsync: 'on', full_page_writes: 'on' } : { fsync: 'off', full_page_writes: 'off' };
const source = await startServer({ version: 15, name: 'bench-load-src', settings });
const target = await startServer({ version: targetVersion as ServerVersion, name: 'bench-load-tgt', settings });
const results: Result[] = [];
const sizes = new Map<string, number>();
const pgcopydb = only.has('pgcopydb') ? await which('pgcopydb') : undefined;
try {
  const log = (line: string) => {
    if (!values.json) console.log(line);
  };
  log(
    `servers: PostgreSQL 15 → ${targetVersion} on loopback, fsync=${durable ? 'on, full_page_writes=on (production durability)' : 'off, full_page_writes=off'}, the same for every contender; load average at start: ${loadAverage()}`,
  );
  log(
    `contenders: ${FERRY} --cutover manual --jobs ${jobs} · ${DUMP} --jobs ${jobs} · ${pgcopydb ? `${COPYDB} --table-jobs ${copydbJobs} --index-jobs ${copydbJobs} (${(await runOk(pgcopydb, ['--version'])).match(/pgcopydb version \S+/)?.[0] ?? 'version unknown'})` : only.has('pgcopydb') ? `${COPYDB}: not installed (apt-get install -y pgcopydb)` : `${COPYDB}: not run (--only)`}; tables over ${SPLIT_BYTES / 1024 / 1024} MiB split into ranges (pgferry, pgcopydb)`,
  );
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
  log(`warm-up: target wrote and recycled its WAL in ${secs(performance.now() - warm)}`);
  // Every contender starts from the same quiet state: no pending checkpoint, no autovacuum backlog,
  // and no dirty page cache of an earlier contender for the kernel to write back while this one runs.
  const settle = async () => {
    await source.query('CHECKPOINT');
    await target.query('CHECKPOINT');
    await runOk('sync', []);
  };

  for (const name of datasets) {
    const dataset = name === 'orders' ? orders : pgbench;
    const db = `bench_${name}`;
    await source.query(`CREATE DATABASE ${db}`);
    const t0 = performance.now();
    await dataset.generate(source, db);
    await source.query('VACUUM ANALYZE', [], db);
    const sizeBytes = Number((await source.query('SELECT pg_database_size($1) AS s', [db])).rows[0]?.s);
    sizes.set(name, sizeBytes);
    const expected = JSON.stringify(await counts(source, db, dataset.tables));
    log(
      `\ndataset ${name}: ${dataset.label}; ${(sizeBytes / 1024 / 1024).toFixed(0)} MiB (${(sizeBytes / 1024 ** 3).toFixed(2)} GiB), generated in ${secs(performance.now() - t0)}`,
    );
    const check = async (into: string) => JSON.stringify(await counts(target, into, dataset.tables)) === expected;

    const dumpRestore = async (round: number): Promise<Result> => {
      await target.query('CREATE DATABASE dump_restore');
      await settle();
      const file = join(work, 'bench.dump');
      const cpu0 = cpuSeconds([source, target]);
      const start = performance.now();
      await runOk('pg_dump', ['-Fc', '-f', file, '-d', source.url(db)]);
      const dumped = performance.now();
      await runOk('pg_restore', ['-j', String(jobs), '-d', target.url('dump_restore'), file]);
      const end = performance.now();
      const cpu = cpuSeconds([source, target]) - cpu0;
      const result = {
        cpu,
        dataset: name,
        name: DUMP,
        round,
        seconds: (end - start) / 1000,
        phases: `pg_dump ${secs(dumped - start)}, pg_restore ${secs(end - dumped)}`,
        countsOk: await check('dump_restore'),
      };
      await target.query('DROP DATABASE dump_restore');
      rmSync(file, { force: true });
      return result;
    };

    const copydb = async (round: number, bin: string): Promise<Result> => {
      await target.query('CREATE DATABASE pgcopydb');
      await settle();
      const dir = join(work, `pgcopydb-${name}-${round}`);
      const cpu0 = cpuSeconds([source, target]);
      const start = performance.now();
      const out = await runOk(bin, [
        'clone',
        '--source',
        source.url(db),
        '--target',
        target.url('pgcopydb'),
        '--table-jobs',
        String(copydbJobs),
        '--index-jobs',
        String(copydbJobs),
        '--split-tables-larger-than',
        `${SPLIT_BYTES / 1024 / 1024} MB`,
        '--dir',
        dir,
      ]);
      const seconds = (performance.now() - start) / 1000;
      const result = {
        cpu: cpuSeconds([source, target]) - cpu0,
        dataset: name,
        name: COPYDB,
        round,
        seconds,
        phases: copydbSteps(out),
        countsOk: await check('pgcopydb'),
      };
      await target.query('DROP DATABASE pgcopydb');
      rmSync(dir, { recursive: true, force: true });
      return result;
    };

    // The whole command, as a user runs it: the CLI process from start to exit.
    const ferry = async (round: number): Promise<Result> => {
      await target.query('CREATE DATABASE pgferry');
      const stateDir = join(work, `state-${name}-${round}`);
      const report = join(work, `report-${name}-${round}.json`);
      const id = `bench${name}${round}`;
      const cli = (args: string[]) => runOk(process.execPath, [PGFERRY, ...args, '--state-dir', stateDir]);
      await settle();
      const cpu0 = cpuSeconds([source, target]);
      const start = performance.now();
      const startedAt = Date.now();
      await cli([
        'migrate',
        '--source',
        source.url(db),
        '--target',
        target.url('pgferry'),
        '--cutover',
        'manual',
        '--yes',
        '--id',
        id,
        '--jobs',
        String(jobs),
        '--split-table-mb',
        String(SPLIT_BYTES / 1024 / 1024),
        '--report',
        report,
      ]);
      const seconds = (performance.now() - start) / 1000;
      const cpu = cpuSeconds([source, target]) - cpu0;
      const exitedAt = startedAt + seconds * 1000;
      const state = JSON.parse(readFileSync(report, 'utf8')) as {
        createdAt?: string;
        phases: Record<string, { startedAt?: string; endedAt?: string; summary?: string }>;
        verifyBeforeSwitch?: { ms: number };
      };
      const phases = Object.entries(state.phases)
        .filter(([, p]) => p.startedAt && p.endedAt)
        .map(([phase, p]) => `${phase} ${secs(Date.parse(p.endedAt as string) - Date.parse(p.startedAt as string))}`)
        .map((text) =>
          text.startsWith('catch-up ') && state.verifyBeforeSwitch
            ? `${text} (of which verify before the switch ${secs(state.verifyBeforeSwitch.ms)})`
            : text.startsWith('bulk-load ') && state.phases['bulk-load']?.summary
              ? `${text} (${state.phases['bulk-load'].summary})`
              : text,
        );
      const stamps = Object.values(state.phases).flatMap((p) => [
        Date.parse(p.startedAt ?? ''),
        Date.parse(p.endedAt ?? ''),
      ]);
      const first = Math.min(...stamps.filter(Number.isFinite));
      const last = Math.max(...stamps.filter(Number.isFinite));
      const result: Result = {
        cpu,
        dataset: name,
        name: FERRY,
        round,
        seconds,
        phases: `start-up ${secs(first - startedAt)}, ${phases.join(', ')}, exit ${secs(exitedAt - last)}`,
        countsOk: await check('pgferry'),
      };
      // After the load, not part of its time: the verify `pgferry cutover` runs before it freezes
      // anything (every table, both sides at matching points), as the cutover runs it.
      const session = await openSession({ store: new FileMigrationStore(stateDir), stateDir, events: quiet }, id);
      try {
        const t0 = performance.now();
        const v = await verifyTables(session.ctx);
        result.verify = {
          seconds: (performance.now() - t0) / 1000,
          sourceMiBps: v.sourceMiBps,
          targetMiBps: v.targetMiBps,
          outcome: v.outcome,
        };
      } finally {
        await session.close();
      }
      // Not timed: drop the slot, subscription and publication, so nothing stays on the source.
      await cli(['rollback', '--id', id]);
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
        log(
          `  round ${round}: ${value.name.padEnd(26)} ${(value.seconds ?? 0).toFixed(1).padStart(6)} s  (${value.phases})  load average ${loadAverage()}${value.verify ? `\n           then verify before the switch ${verifyText(value.verify)}` : ''}`,
        );
      }
    }
    await source.query(`DROP DATABASE ${db}`);
  }
} finally {
  await Promise.allSettled([source.stop(), target.stop()]);
  rmSync(work, { recursive: true, force: true });
}

function verifyText(v: NonNullable<Result['verify']>): string {
  return `${v.seconds.toFixed(1)} s (source ${v.sourceMiBps} MiB/s, target ${v.targetMiBps} MiB/s): ${v.outcome}`;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};
const timesOf = (dataset: string, name: string) =>
  results
    .filter((r) => r.dataset === dataset && r.name === name && r.seconds !== undefined)
    .map((r) => r.seconds as number);
const medianOf = (dataset: string, name: string) =>
  timesOf(dataset, name).length ? median(timesOf(dataset, name)) : undefined;
const allMatch = results.every((r) => r.countsOk);
if (values.json) {
  console.log(
    JSON.stringify({
      datasets: Object.fromEntries(
        datasets.map((d) => [
          d,
          {
            sizeBytes: sizes.get(d),
            medians: { dump: medianOf(d, DUMP), pgcopydb: medianOf(d, COPYDB), pgferry: medianOf(d, FERRY) },
          },
        ]),
      ),
      jobs,
      copydbJobs,
      rounds,
      fsync: durable,
      results,
      loadAverage: loadAverage(),
    }),
  );
} else {
  const goal = (ok: boolean | undefined) => (ok === undefined ? 'n/a' : ok ? 'met' : 'NOT met');
  for (const d of datasets) {
    const MiB = (sizes.get(d) ?? 0) / 1024 / 1024;
    console.log(
      `\n${d} (${MiB.toFixed(0)} MiB)\n${'contender'.padEnd(28)}${'round'.padStart(6)}${'wall s'.padStart(9)}${'MiB/s'.padStart(9)}${'CPU busy'.padStart(10)}${'CPU s'.padStart(8)}  rows`,
    );
    for (const r of results.filter((x) => x.dataset === d))
      console.log(
        `${r.name.padEnd(28)}${String(r.round).padStart(6)}${(r.seconds?.toFixed(1) ?? '-').padStart(9)}${(r.seconds ? (MiB / r.seconds).toFixed(1) : '-').padStart(9)}${(r.busy === undefined ? '-' : `${(r.busy * 100).toFixed(0)} %`).padStart(10)}${(r.cpu?.toFixed(1) ?? '-').padStart(8)}  ${r.countsOk ? 'match' : 'MISMATCH'}${r.phases ? `  (${r.phases})` : ''}`,
      );
    const baseline = medianOf(d, DUMP);
    const copydbMedian = medianOf(d, COPYDB);
    const ferryMedian = medianOf(d, FERRY);
    console.log(`medians over ${rounds} round(s):`);
    for (const name of [DUMP, COPYDB, FERRY]) {
      const m = medianOf(d, name);
      if (m === undefined) continue;
      const range = `${Math.min(...timesOf(d, name)).toFixed(1)}–${Math.max(...timesOf(d, name)).toFixed(1)} s`;
      const cpus = results
        .filter((r) => r.dataset === d && r.name === name && r.cpu !== undefined)
        .map((r) => r.cpu as number);
      const cpu = cpus.length ? median(cpus) : undefined;
      console.log(
        `  ${name.padEnd(28)}${m.toFixed(1).padStart(6)} s  ${(MiB / m).toFixed(1).padStart(6)} MiB/s  (range ${range})${cpu === undefined ? '' : `; ${cpu.toFixed(1)} CPU-seconds: on ${CORES} cores it cannot take less than ${(cpu / CORES).toFixed(1)} s`}`,
      );
    }
    const verifies = results.filter((r) => r.dataset === d && r.verify).map((r) => r.verify?.seconds as number);
    if (verifies.length && ferryMedian) {
      const v = median(verifies);
      console.log(
        `  verify before the switch (after pgferry's load)${v.toFixed(1).padStart(6)} s  = ${((v / ferryMedian) * 100).toFixed(0)} % of pgferry's load  (range ${Math.min(...verifies).toFixed(1)}–${Math.max(...verifies).toFixed(1)} s)`,
      );
      console.log(
        `goal (${d}): verify well under the load's time (≤ 50 % of it, medians): ${goal(v <= ferryMedian / 2)} (${((v / ferryMedian) * 100).toFixed(0)} %)`,
      );
    }
    const ratio = (a?: number, b?: number) => (a && b ? a / b : undefined);
    // What a goal asks against what the machine allows: the command's CPU-seconds over the cores.
    const ferryCpus = results.filter((r) => r.dataset === d && r.name === FERRY && r.cpu !== undefined);
    const floor = ferryCpus.length ? median(ferryCpus.map((r) => r.cpu as number)) / CORES : undefined;
    const needs = (other: number | undefined, factor: number) =>
      other && floor !== undefined
        ? `; needs ≤ ${(other / factor).toFixed(1)} s, and pgferry's CPU-seconds allow no less than ${floor.toFixed(1)} s on ${CORES} cores`
        : '';
    const vsDump = ratio(baseline, ferryMedian);
    const vsCopydb = ratio(copydbMedian, ferryMedian);
    console.log(
      `goal (${d}): pgferry ≥ 1.8× faster than dump+restore, whole command (medians): ${goal(vsDump === undefined ? undefined : vsDump >= 1.8)}${vsDump ? ` (${vsDump.toFixed(2)}×${needs(baseline, 1.8)})` : ''}`,
    );
    console.log(
      `goal (${d}): pgferry ≥ 1.2× faster than pgcopydb, whole command (medians): ${goal(vsCopydb === undefined ? undefined : vsCopydb >= 1.2)}${vsCopydb ? ` (${vsCopydb.toFixed(2)}×${needs(copydbMedian, 1.2)})` : ''}`,
    );
  }
  console.log(`\nevery contender's row counts match the source: ${allMatch ? 'yes' : 'NO'}`);
  console.log(`load average at the end: ${loadAverage()}`);
}
if (!allMatch) process.exitCode = 1;
