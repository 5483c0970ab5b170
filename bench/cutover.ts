/**
 * Cutover benchmark (not a test): migrates under pgbench load several times and prints the write gap
 * (median, max), what the live writers saw, lag p50/p99 during catch-up, and lost commits.
 *
 *   npm run bench:cutover -- [--scale N] [--cutovers N] [--clients N] [--tables N] [--neighbour-clients N] [--churn] [--target-version 15|16|17] [--json]
 *
 * --tables N adds N small tables, each with its own sequence (a bigserial key), index and 20 rows: every
 * sequence is synced inside the write gap.
 *
 * --neighbour-clients N runs pgbench with N clients on another database of the source server the whole
 * time (one instance, several databases, one of them migrated): the freeze is per database, so it keeps
 * committing through every write gap.
 *
 * --churn adds a writer that rewrites 3,000 rows per transaction in a tight loop, as fast as the target's
 * apply sustains: it pauses while the slot's unconfirmed WAL is over 2 MiB and goes on below 0.5 MiB
 * (more, and the lag stays over the gate's time limit: it never opens). Each cutover then also prints the drain predicted before the freeze and
 * the one measured inside the write gap, drains given up past the budget, and lag in bytes and seconds.
 *
 * pgbench supplies the load (it cannot follow a switch, so its clients end at the freeze); two LiveWriters
 * commit through the switch file and every one of their acknowledged commits is looked up on the target.
 * Once the switch file names the target, a second pgbench runs there while verify reads both sides, as
 * the application would, and each cutover's verify result is printed.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { startServer } from '../packages/cli/src/local-servers';
import { advance, cleanupMigration, createMigration, type Runtime } from '../packages/cli/src/runner';
import { FileMigrationStore } from '../packages/cli/src/store';
import { LiveWriter, type WriterStats } from '../packages/cli/src/writer';
import { type MigrationState, PHASE_TITLES, phaseAttempts } from '../packages/core/src/index';
import { run } from './lib';

const { values } = parseArgs({
  options: {
    scale: { type: 'string', default: '10' },
    cutovers: { type: 'string', default: '5' },
    clients: { type: 'string', default: '4' },
    tables: { type: 'string', default: '0' },
    'neighbour-clients': { type: 'string', default: '0' },
    churn: { type: 'boolean', default: false },
    'target-version': { type: 'string', default: '15' },
    json: { type: 'boolean', default: false },
  },
});
const scale = Number(values.scale);
const cutovers = Number(values.cutovers);
const clients = Number(values.clients);
const extraTables = Number(values.tables);
const neighbourClients = Number(values['neighbour-clients']);
const targetVersion = Number(values['target-version']) as 15 | 16 | 17;
const churn = values.churn;
const CHURN_ROWS = 100_000;
const CHURN_BATCH = 3_000;
const MiB = 1024 * 1024;
/** The churn writer pauses while the slot's backlog is over this, and goes on once it is under the second. */
const CHURN_PAUSE_BYTES = 2 * MiB;
const CHURN_RESUME_BYTES = MiB / 2;
const PGBENCH = '/usr/lib/postgresql/15/bin/pgbench';

const phaseMs = (p?: { startedAt?: string; endedAt?: string }) =>
  p?.startedAt && p.endedAt ? Date.parse(p.endedAt) - Date.parse(p.startedAt) : Number.NaN;

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? 0) : 0;
};

/** The phase(s) during which the longest writer pause of `stats` began and ended. */
function pausedIn(state: MigrationState, stats: WriterStats[]) {
  const w = stats.reduce((a, b) => (b.maxPauseMs > a.maxPauseMs ? b : a));
  const at = (t: number) => {
    const a = phaseAttempts(state).findLast(
      (p) => Date.parse(p.startedAt) <= t && (!p.endedAt || t <= Date.parse(p.endedAt)),
    );
    if (a) return PHASE_TITLES[a.phase];
    // The verify before the switch runs between two catch-up attempts (its result is stamped at its end).
    const v = state.verifyBeforeSwitch;
    const vEnd = v ? Date.parse(v.at) : Number.NaN;
    return v && t >= vEnd - v.ms && t <= vEnd ? 'the verify before the switch' : 'between phases';
  };
  const from = at(w.maxPauseEndedAt - w.maxPauseMs);
  const to = at(w.maxPauseEndedAt);
  return from === to ? `during ${from}` : `from ${from} to ${to}`;
}

// Loaded once before the first cutover, as the CLI's bundle has it loaded: run from the sources, the first
// migration otherwise loads it (and the validator the bundle leaves out) in the middle of its verify,
// half a second of the event loop the writers would be charged for.
await import('aws-local-stepfunctions');

const work = mkdtempSync(join(tmpdir(), 'pgferry-bench-cutover-'));
const source = await startServer({ version: 15, name: 'bench-src' });
const target = await startServer({ version: targetVersion, name: 'bench-tgt' });
const results: {
  writeGapMs: number;
  writerPauseMs: number;
  writerPauseIn: string;
  loopStallMs: number;
  holds: string;
  holdsGivenUp: number;
  lost: number;
  acked: number;
  lagMs: number[];
  lagBytes: number[];
  sessionsEnded: number;
  verify: string;
  predictedDrainMs: number;
  drainMs: number;
  abandoned: number;
  attempts: number;
  churnTxns: number;
  loadMs: number;
  verifyBeforeMs: number;
  verifyMiBps: string;
}[] = [];

/**
 * The churn writer (--churn): 3,000 rows per transaction, as fast as the apply sustains (paused while
 * the slot's backlog is over CHURN_PAUSE_BYTES, until it is under CHURN_RESUME_BYTES). Ends when the freeze ends its session.
 */
function churnWriter(url: string, slot: string) {
  let stop = false;
  let txns = 0;
  const done = (async () => {
    const c = new pg.Client({ connectionString: url });
    const probe = new pg.Client({ connectionString: url });
    c.on('error', () => {});
    probe.on('error', () => {});
    await c.connect();
    await probe.connect();
    let paused = false;
    try {
      for (let i = 0; !stop; i++) {
        if (i % 5 === 0) {
          const [row] = (
            await probe.query(
              'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8 AS b FROM pg_replication_slots WHERE slot_name = $1',
              [slot],
            )
          ).rows;
          const backlog = Number(row?.b ?? 0);
          paused = paused ? backlog > CHURN_RESUME_BYTES : backlog > CHURN_PAUSE_BYTES;
        }
        if (paused) {
          await new Promise((r) => setTimeout(r, 20));
          continue;
        }
        const from = ((txns * CHURN_BATCH) % CHURN_ROWS) + 1;
        await c.query('UPDATE churn SET v = v + 1 WHERE id BETWEEN $1 AND $2', [from, from + CHURN_BATCH - 1]);
        txns++;
      }
    } catch {
      // The freeze ended the session: the churn stops here, as pgbench's clients do.
    } finally {
      await c.end().catch(() => {});
      await probe.end().catch(() => {});
    }
    return txns;
  })();
  return {
    stop: async () => {
      stop = true;
      return done;
    },
  };
}
/** pgbench on another database of the source server (--neighbour-clients). */
let neighbour: ReturnType<typeof spawn> | undefined;
try {
  // Each cutover starts from a fresh copy of this template: after a cutover the source's sequences are
  // behind the rows reverse replication brought back, as they would be in production until rollback.
  await source.query('CREATE DATABASE bench_template');
  const env = { PGPASSWORD: source.password };
  const conn = ['-h', '127.0.0.1', '-p', String(source.port), '-U', 'postgres'];
  console.log(
    `dataset: pgbench -i -s ${scale}${extraTables ? ` + ${extraTables} small tables with a sequence each` : ''}${churn ? ` + churn (${CHURN_ROWS} rows, ${CHURN_BATCH} rewritten per transaction in a tight loop)` : ''} (PostgreSQL 15 → ${targetVersion}); ${cutovers} cutovers under ${clients} pgbench clients${neighbourClients ? `; ${neighbourClients} more on another database of the source server` : ''}`,
  );
  const init = await run(PGBENCH, ['-i', '-s', String(scale), '-q', ...conn, 'bench_template'], env);
  if (init.code !== 0) throw new Error(`pgbench -i failed: ${init.out}`);
  // pgbench_history has no key; give it one (pgbench names its columns, so the default fills it).
  await source.query('ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY', [], 'bench_template');
  await source.query(
    'CREATE TABLE writes (id bigserial PRIMARY KEY, writer text NOT NULL, payload text NOT NULL)',
    [],
    'bench_template',
  );

  if (churn)
    await source.query(
      `CREATE TABLE churn (id int PRIMARY KEY, v bigint NOT NULL, pad text NOT NULL);
       INSERT INTO churn SELECT g, 0, repeat('x', 100) FROM generate_series(1, ${CHURN_ROWS}) g`,
      [],
      'bench_template',
    );
  if (extraTables > 0)
    await source.query(
      `DO $$ BEGIN FOR i IN 1..${extraTables} LOOP
         EXECUTE format('CREATE TABLE extra_%s (id bigserial PRIMARY KEY, v text, at timestamptz DEFAULT now())', i);
         EXECUTE format('CREATE INDEX ON extra_%s (at)', i);
         EXECUTE format('INSERT INTO extra_%s (v) SELECT g::text FROM generate_series(1, 20) g', i);
       END LOOP; END $$`,
      [],
      'bench_template',
    );
  // Another database of the same server, busy throughout (not migrated, not frozen).
  if (neighbourClients > 0) {
    await source.query('CREATE DATABASE neighbour TEMPLATE bench_template');
    neighbour = spawn(PGBENCH, ['-c', String(neighbourClients), '-j', '1', '-T', '86400', '-n', ...conn, 'neighbour'], {
      env: { ...process.env, ...env },
      stdio: 'ignore',
    });
  }
  for (let i = 1; i <= cutovers; i++) {
    const db = `target_${i}`;
    const src = `bench_${i}`;
    await target.query(`CREATE DATABASE ${db}`);
    await source.query(`CREATE DATABASE ${src} TEMPLATE bench_template`);
    const switchFile = join(work, `url-${i}`);
    writeFileSync(switchFile, source.url(src));
    // Load for the whole migration; its clients end when the source freezes.
    const load = run(PGBENCH, ['-c', String(clients), '-j', '2', '-T', '600', '-n', ...conn, src], env);
    // The application's load follows it to the target (pgbench's own tables: updates of hot rows).
    const tconn = ['-h', '127.0.0.1', '-p', String(target.port), '-U', 'postgres'];
    let after: ReturnType<typeof run> | undefined;
    const follow = setInterval(() => {
      if (!after && readFileSync(switchFile, 'utf8').includes(`:${target.port}/`))
        after = run(PGBENCH, ['-c', String(clients), '-j', '2', '-T', '5', '-n', ...tconn, db], {
          PGPASSWORD: target.password,
        });
    }, 2);
    const churner = churn ? churnWriter(source.url(src), `pgferry_bench${i}`) : undefined;
    const writers = ['w1', 'w2'].map((name) => new LiveWriter({ switchFile, name, intervalMs: 1 }));
    for (const w of writers) w.start();
    const stateDir = join(work, `state-${i}`);
    // Verify's reads with a table's writes held (the application's writers of that table wait meanwhile).
    const holds: number[] = [];
    let holdsGivenUp = 0;
    const rt: Runtime = {
      store: new FileMigrationStore(stateDir),
      stateDir,
      events: {
        log: (line: string) => {
          const held = /with its writes held for (\d+) ms/.exec(line);
          if (held) holds.push(Number(held[1]));
          if (/no last recheck with its writes held/.test(line)) holdsGivenUp++;
        },
        phase: () => {},
      },
    };
    const m = await createMigration(rt, {
      id: `bench${i}`,
      sourceUrl: source.url(src),
      targetUrl: target.url(db),
      cutover: 'auto',
      jobs: 2,
      maxLagMs: 500,
      lagSamples: 5,
      lagSampleIntervalMs: 200,
      switchFile,
    });
    // The writers share this process with pgferry's engine: a stretch of its event loop that never
    // yields delays them as well, so it is measured and printed beside their pause.
    const loop = monitorEventLoopDelay({ resolution: 10 });
    loop.enable();
    const state = await advance(rt, m.id, { cutover: 'auto' });
    loop.disable();
    const churnTxns = (await churner?.stop()) ?? 0;
    clearInterval(follow);
    await new Promise((r) => setTimeout(r, 1000));
    const stats = await Promise.all(writers.map((w) => w.stop()));
    const lost = (await Promise.all(writers.map((w) => w.lostWrites(target.url(db))))).flat().length;
    await load;
    const afterLoad = await after;
    await cleanupMigration(rt, m.id);
    const mismatched = (state.verify?.tables ?? []).filter((t) => t.mismatchedRanges.length > 0);
    const verify = !state.verify
      ? 'not run'
      : state.verify.ok
        ? 'ok'
        : `MISMATCH ${mismatched.map((t) => `${t.table} [${t.mismatchedRanges.join(', ')}]`).join('; ')}`;
    const targetTps = /tps = ([\d.]+)/.exec(afterLoad?.out ?? '')?.[1];
    const r = {
      writeGapMs: state.cutover?.writeGapMs ?? Number.NaN,
      writerPauseMs: Math.max(...stats.map((s) => s.maxPauseMs)),
      writerPauseIn: pausedIn(state, stats),
      loopStallMs: Math.round(loop.max / 1e6),
      holds: holds.length ? `${holds.length}, longest ${Math.max(...holds)} ms` : 'none',
      holdsGivenUp,
      lost,
      acked: stats.reduce((s, x) => s + x.acked, 0),
      lagMs: (state.lag ?? []).map((l) => l.ms),
      lagBytes: (state.lag ?? []).map((l) => l.bytes),
      sessionsEnded: state.cutover?.sessionsEnded ?? 0,
      verify,
      predictedDrainMs: state.cutover?.predictedDrainMs ?? Number.NaN,
      drainMs: state.cutover?.drainMs ?? Number.NaN,
      abandoned: state.events.filter((e) => /drain abandoned/.test(e.message)).length,
      attempts: state.phases.cutover?.attempts ?? 0,
      churnTxns,
      loadMs: phaseMs(state.phases['bulk-load']),
      verifyBeforeMs: state.verifyBeforeSwitch?.ms ?? Number.NaN,
      verifyMiBps: state.verifyBeforeSwitch
        ? `source ${state.verifyBeforeSwitch.sourceMiBps}, target ${state.verifyBeforeSwitch.targetMiBps} MiB/s`
        : 'not run',
    };
    results.push(r);
    if (!values.json) {
      const steps = Object.entries(state.cutover?.stepsMs ?? {})
        .map(([k, v]) => `${k} ${v}`)
        .join(', ');
      console.log(
        `cutover ${i}: bulk load ${r.loadMs} ms, verify before the switch ${r.verifyBeforeMs} ms (${r.verifyMiBps}); write gap ${r.writeGapMs} ms (${steps}); drain predicted ${r.predictedDrainMs} ms, measured ${r.drainMs} ms; ${r.attempts} attempt(s), ${r.abandoned} drain(s) given up; lag at the last samples ${r.lagBytes
          .slice(-3)
          .map((b) => `${(b / MiB).toFixed(1)} MiB`)
          .join(
            ', ',
          )} / ${r.lagMs.slice(-3).join(', ')} ms${churn ? `; ${r.churnTxns} churn transactions` : ''}; longest writer pause ${r.writerPauseMs} ms (${r.writerPauseIn}; the engine's event loop stalled up to ${r.loopStallMs} ms); verify's holds of a table's writes: ${r.holds}, ${r.holdsGivenUp} given up; ${r.sessionsEnded} sessions ended, ${r.acked} acknowledged, ${r.lost} lost; verify under pgbench on the target (${targetTps ?? '?'} tps): ${r.verify}`,
      );
    }
  }
} finally {
  neighbour?.kill();
  await Promise.allSettled([source.stop(), target.stop()]);
  rmSync(work, { recursive: true, force: true });
}

const gaps = results.map((r) => r.writeGapMs);
const lags = results.flatMap((r) => r.lagMs);
const lagBytes = results.flatMap((r) => r.lagBytes);
const drains = results.map((r) => r.drainMs);
const median = (xs: number[]) => quantile(xs, 0.5);
const summary = {
  cutovers: results.length,
  writeGapMedianMs: median(gaps),
  writeGapMaxMs: Math.max(...gaps),
  writerPauseMedianMs: median(results.map((r) => r.writerPauseMs)),
  writerPauseMaxMs: Math.max(...results.map((r) => r.writerPauseMs)),
  lagP50Ms: median(lags),
  lagP99Ms: quantile(lags, 0.99),
  lagSamples: lags.length,
  lagBytesP50: median(lagBytes),
  lagBytesP99: quantile(lagBytes, 0.99),
  predictedDrainMedianMs: median(results.map((r) => r.predictedDrainMs)),
  drainMedianMs: median(drains),
  drainMaxMs: Math.max(...drains),
  drainsGivenUp: results.reduce((s, r) => s + r.abandoned, 0),
  acknowledgedCommits: results.reduce((s, r) => s + r.acked, 0),
  lostCommits: results.reduce((s, r) => s + r.lost, 0),
  verifyOk: results.filter((r) => r.verify === 'ok').length,
};
if (values.json) console.log(JSON.stringify(summary));
else {
  console.log(
    `\nwrite gap (freeze → switch): median ${summary.writeGapMedianMs} ms, max ${summary.writeGapMaxMs} ms over ${summary.cutovers} cutovers`,
  );
  console.log(
    `longest pause seen by a writer: median ${summary.writerPauseMedianMs} ms, max ${summary.writerPauseMaxMs} ms`,
  );
  console.log(
    `lag during catch-up: p50 ${summary.lagP50Ms} ms, p99 ${summary.lagP99Ms} ms (${summary.lagSamples} samples)`,
  );
  console.log(
    `lag during catch-up in bytes: p50 ${(summary.lagBytesP50 / MiB).toFixed(2)} MiB, p99 ${(summary.lagBytesP99 / MiB).toFixed(2)} MiB`,
  );
  console.log(
    `drain: predicted median ${summary.predictedDrainMedianMs} ms; measured median ${summary.drainMedianMs} ms, max ${summary.drainMaxMs} ms; ${summary.drainsGivenUp} given up past the budget`,
  );
  console.log(`lost commits: ${summary.lostCommits} of ${summary.acknowledgedCommits} acknowledged`);
  console.log(`verify with the application writing to the target: ok in ${summary.verifyOk} of ${summary.cutovers}`);
  const met = summary.writeGapMedianMs <= 500 && summary.lostCommits === 0;
  console.log(`goal: write gap ≤ 0.5 s median with 0 lost commits: ${met ? 'met' : 'NOT met'}`);
}
