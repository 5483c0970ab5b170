import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { startServer } from '../packages/cli/src/local-servers';
import { describeState } from '../packages/cli/src/output';
import { advance, createMigration, inspectMigration, openSession } from '../packages/cli/src/runner';
import { SAMPLE_SCHEMA, sampleData } from '../packages/cli/src/sample';
import { nextStep } from '../packages/cli/src/status';
import { LiveWriter } from '../packages/cli/src/writer';
import type { PgferryEvent } from '../packages/core/src/index';
import {
  type GateMemory,
  IDLE_SAMPLE_INTERVAL_MS,
  reasonsShape,
  runWorkflowTask,
  sampleGate,
  sampleIntervalMs,
} from '../packages/postgres/src/index';
import { frozen, migrationFixture, newMigration, sleep, type TestRuntime, testRuntime } from './harness/migration';
import type { Pair } from './harness/pairs';

const fixture = migrationFixture();

/**
 * The target's apply of table churn stalls behind a lock while a writer rewrites every row of it in a
 * tight loop on the source; `end` stops the writer and lets the apply go.
 */
async function stallApply(pair: Pair) {
  const locker = new pg.Client({ connectionString: pair.targetUrl });
  await locker.connect();
  await locker.query('BEGIN');
  await locker.query('LOCK TABLE churn IN SHARE MODE');
  let stop = false;
  const writer = (async () => {
    const c = new pg.Client({ connectionString: pair.sourceUrl });
    await c.connect();
    try {
      while (!stop) await c.query('UPDATE churn SET v = v + 1');
    } finally {
      await c.end();
    }
  })();
  return {
    async end() {
      stop = true;
      await writer;
      await locker.query('ROLLBACK');
      await locker.end();
    },
  };
}

describe('cutover gate', () => {
  it('stays closed while the unconfirmed WAL grows under a churning writer, naming both rates and the likely causes', async () => {
    const { pair, rt } = await fixture.setup('churn', 300);
    await pair.source('CREATE TABLE churn (id int PRIMARY KEY, v bigint NOT NULL, pad text NOT NULL)');
    await pair.source("INSERT INTO churn SELECT g, 0, repeat('x', 100) FROM generate_series(1, 3000) g");
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    // The target's apply stalls on a lock (as behind a slow or saturated target) while a writer rewrites
    // 3,000 rows per transaction in a tight loop on the source.
    const stall = await stallApply(pair);
    await sleep(500);
    const session = await openSession(rt, m.id);
    const memory: GateMemory = { wal: false };
    const samples: { reasons: string[]; bytes: number }[] = [];
    try {
      for (let i = 0; i < 8; i++) {
        const g = await sampleGate(session.ctx, memory, { catalog: i === 0 });
        samples.push({ reasons: g.reasons, bytes: g.lagBytes });
        await sleep(250);
      }
    } finally {
      await stall.end();
      await session.close();
    }
    // Closed on every sample: never a streak that could open it.
    for (const s of samples) expect(s.reasons, JSON.stringify(samples)).not.toEqual([]);
    const last = samples.at(-1)?.reasons.join('; ') ?? '';
    expect((samples.at(-1)?.bytes ?? 0) > (samples[1]?.bytes ?? 0)).toBe(true);
    expect(last).toMatch(/lag growing: /);
    expect(last).toMatch(/lag \d+ ms ≥ 1000 ms/);
    expect(last).toMatch(
      /apply cannot keep up with the source: the source generates [\d.]+ MB\/s, the target applies [\d.]+ MB\/s; likely causes: REPLICA IDENTITY FULL without an index the target can use on public\.audit_log/,
    );
    // Recorded in the state with both figures.
    const state = await rt.store.get(m.id);
    const lag = state.lag?.at(-1);
    expect(lag?.bytes).toBeGreaterThan(1024 * 1024);
    expect(lag?.generatedBps).toBeGreaterThan(0);
    expect(lag?.ms).toBeGreaterThanOrEqual(1000);
  });

  it('says why it stays closed when the reasons change, not at every sample whose figures do', async () => {
    const { pair, rt } = await fixture.setup('gatelog', 100);
    await pair.source('CREATE TABLE churn (id int PRIMARY KEY, v bigint NOT NULL)');
    await pair.source('INSERT INTO churn SELECT g, 0 FROM generate_series(1, 2000) g');
    const m = await newMigration(rt, pair, { cutover: 'manual', catchUpTimeoutMs: 3000, lagSampleIntervalMs: 100 });
    await advance(rt, m.id, { cutover: 'manual' });
    // Apply stalls behind a lock while a writer goes on: the lag, and the line's figures, grow at every sample.
    const stall = await stallApply(pair);
    const session = await openSession(rt, m.id);
    const before = rt.logs.length;
    try {
      const { catchUp } = await import('../packages/postgres/src/index');
      await expect(catchUp(session.ctx)).rejects.toMatchObject({ name: 'LagTimeoutError' });
    } finally {
      await stall.end();
      await session.close();
    }
    const closed = rt.logs.slice(before).filter((l) => l.startsWith('cutover gate closed: '));
    // Growing lag: said when it began and when another reason came, not at each of some 20 samples in 3 s.
    expect(closed.length).toBeGreaterThan(0);
    // (Each line a new set of reasons: lag over its limits, growing, the drain's forecast, the apply's rates.)
    expect(closed.length).toBeLessThanOrEqual(6);
    expect(closed.join('\n')).toMatch(/lag/);
  });

  it('tells a change of reasons from a change of figures alone', () => {
    const shape = (t: string) => reasonsShape(t);
    expect(shape('lag 17.3 MiB ≥ 16.0 MiB; lag 1072 ms ≥ 1000 ms')).toBe(
      shape('lag 64.6 MiB ≥ 16.0 MiB; lag 9 ms ≥ 1000 ms'),
    );
    // A name with a digit in it is no figure: another table is another reason.
    expect(shape('statistics of "public"."t1" are being gathered')).not.toBe(
      shape('statistics of "public"."t2" are being gathered'),
    );
  });

  it('samples quickly while there is nothing to catch up, at the configured interval while there is', async () => {
    const quiet = { bytes: 0, ms: 0, generatedBps: 0, appliedBps: 0, predictedDrainMs: 0 };
    expect(sampleIntervalMs(quiet, [], 500)).toBe(IDLE_SAMPLE_INTERVAL_MS);
    expect(sampleIntervalMs(quiet, [], 50)).toBe(50);
    expect(sampleIntervalMs({ ...quiet, bytes: 4 * 1024 * 1024 }, [], 500)).toBe(500);
    expect(sampleIntervalMs(quiet, ['the subscription is not connected to the slot'], 500)).toBe(500);
    // A migration with nothing written after its load: the streak's samples are not an interval apart.
    const { pair, rt } = await fixture.setup('idlegate', 100);
    const m = await newMigration(rt, pair, { cutover: 'manual', lagSamples: 4, lagSampleIntervalMs: 5_000 });
    const state = await advance(rt, m.id, { cutover: 'manual' });
    const times = (state.lag ?? []).slice(-4).map((l) => Date.parse(l.at));
    expect(times).toHaveLength(4);
    for (let i = 1; i < times.length; i++)
      expect((times[i] as number) - (times[i - 1] as number), JSON.stringify(state.lag)).toBeLessThan(5_000);
  });

  it("keeps the gate closed outside a plan's cutover window when caught up, saying when it opens, and opens inside it", async () => {
    const { pair, rt } = await fixture.setup('windowgate', 100);
    const m = await newMigration(rt, pair, { cutover: 'manual', lagSamples: 2 });
    await advance(rt, m.id, { cutover: 'manual' });
    // A window that opens in two hours (UTC, every day), then one open all day.
    const inTwoHours = new Date(Date.now() + 2 * 3_600_000);
    const hhmm = (d: Date) => d.toISOString().slice(11, 16);
    const closed = { start: hhmm(inTwoHours), end: hhmm(new Date(inTwoHours.getTime() + 3_600_000)), timezone: 'UTC' };
    const setWindow = async (window: typeof closed) => {
      const state = await rt.store.get(m.id);
      await rt.store.put({ ...state, config: { ...state.config, cutover: 'auto', cutoverWindow: window } });
    };
    const samples = async (n: number) => {
      let gate: unknown;
      const out: { ready: boolean; summary: string }[] = [];
      for (let i = 0; i < n; i++) {
        const step = (await runWorkflowTask(
          'checkLag',
          { migrationId: m.id, gate },
          { store: rt.store, log: () => {} },
        )) as {
          ready: boolean;
          summary: string;
        };
        gate = step;
        out.push(step);
        if (step.ready) break;
        await sleep(150);
      }
      return out;
    };
    await setWindow(closed);
    const outside = await samples(5);
    expect(outside.some((s) => s.ready)).toBe(false);
    const waiting = outside.at(-1)!.summary;
    expect(waiting).toContain(`waiting for the cutover window ${closed.start}–${closed.end} UTC`);
    expect(waiting).toContain(`opens at ${inTwoHours.toISOString().slice(0, 16)}`);
    await setWindow({ start: '00:00', end: '00:00', timezone: 'UTC' });
    const inside = await samples(10);
    expect(inside.at(-1)).toMatchObject({ ready: true });
  });

  it('stops a --cutover manual migration once caught up when only what the cutover needs is missing, naming it; the cutover holds on it until it is put right', async () => {
    const { pair, rt } = await fixture.setup('forcutover', 100);
    // A role whose own setting would override the freeze: a person has to reset it before any cutover.
    const role = `w_${pair.sourceDb.slice(-8)}`;
    await pair.source(
      `CREATE ROLE ${role} LOGIN; ALTER ROLE ${role} IN DATABASE ${pair.sourceDb} SET default_transaction_read_only = off`,
    );
    try {
      const m = await newMigration(rt, pair, { cutover: 'manual', catchUpTimeoutMs: 4000 });
      // Before: the gate stayed closed on it, so migrate waited out the catch-up timeout and failed (exit 5).
      const state = await advance(rt, m.id, { cutover: 'manual' });
      const hazard = `role ${role} has its own default_transaction_read_only=off, which overrides the freeze: its sessions could write after it. Until the migration is over, run ALTER ROLE "${role}" IN DATABASE "${pair.sourceDb}" RESET default_transaction_read_only`;
      expect(state.status).toBe('awaiting-cutover');
      expect(state.beforeCutover).toEqual([hazard]);
      expect(state.phases['catch-up']?.summary).toContain(`; before the cutover can switch, put right: ${hazard}`);
      expect(nextStep(state)).toContain(`the cutover's gate stays closed until this is put right: ${hazard}`);
      // An approval window's sample (AWS) names it too, and calls the gate closed: a cutover could not go through.
      const published: PgferryEvent[] = [];
      const window = await runWorkflowTask(
        'awaitApproval',
        {
          migrationId: m.id,
          taskToken: 'token-of-window',
          approvalWait: { since: new Date().toISOString(), windowSeconds: 600, deadlineSeconds: 3600 },
        },
        { store: rt.store, log: () => {}, events: { publish: async (e: PgferryEvent[]) => void published.push(...e) } },
      );
      expect(window.summary).toContain(`within the gate's limits; before the cutover can switch, put right: ${hazard}`);
      expect(published).toEqual([
        expect.objectContaining({
          type: 'Replication Lag Sampled',
          detail: expect.objectContaining({ gateOpen: false }),
        }),
      ]);
      expect((await rt.store.get(m.id)).approvalWait).toMatchObject({ gateOpen: false, reasons: [] });
      // Status reads it again from the servers: put right meanwhile, it is no longer named.
      const live = await inspectMigration(rt, m.id);
      expect(live.attention).toContain(`before the cutover can switch, put right: ${hazard}`);
      expect(nextStep(state, undefined, false, live)).toContain(`put right: ${hazard}`);
      const reset = `ALTER ROLE ${role} IN DATABASE ${pair.sourceDb} RESET default_transaction_read_only`;
      await pair.source(reset);
      const fixed = await inspectMigration(rt, m.id);
      expect(fixed.attention).toEqual([]);
      expect(nextStep(state, undefined, false, fixed)).toMatch(/^caught up and replicating: /);
      expect(describeState(state, { liveChecked: true })).not.toMatch(/^ {2}before the cutover can switch/m);
      // Offline, the last sample's finding, said as such; never once a cutover is moot.
      expect(describeState(state)).toContain(
        `before the cutover can switch, put right (at the last gate sample): ${hazard}`,
      );
      expect(describeState({ ...state, status: 'rolled-back' })).not.toMatch(/^ {2}before the cutover can switch/m);
      await pair.source(`ALTER ROLE ${role} IN DATABASE ${pair.sourceDb} SET default_transaction_read_only = off`);
      // The cutover's gate holds on it: nothing frozen, and past the catch-up timeout it says why.
      const err = await advance(rt, m.id, { cutover: 'now' }).catch((e) => e);
      expect(err.name).toBe('LagTimeoutError');
      expect(err.message).toContain(hazard);
      expect(await frozen(pair, 'source')).toBe(false);
      await pair.source(reset);
      const over = await advance(rt, m.id, { cutover: 'now' });
      expect(over.status).toBe('cut-over');
      expect(over.beforeCutover).toBeUndefined();
    } finally {
      await pair.source(`DROP ROLE IF EXISTS ${role}`).catch(() => {});
    }
  });

  it('makes the subscriptions apply in binary and stream large transactions where both servers allow it', async () => {
    const { pair, rt } = await fixture.setup('tuning', 100, 16);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    await advance(rt, m.id, { cutover: 'auto' });
    const sub = (side: 'source' | 'target', name: string) =>
      pair[side](`SELECT subbinary, substream::text AS stream FROM pg_subscription WHERE subname = '${name}'`);
    // 15 → 16: binary (every column type is built in), streaming in parallel on the 16 subscriber...
    expect(await rt.store.get(m.id).then((s) => s.phases['start-replication']?.summary)).toMatch(
      /apply: binary, streaming parallel/,
    );
    // ...and back on the 15 source, streaming (a bool there).
    expect(await sub('source', `pgferry_${m.id}_rev`)).toEqual([{ subbinary: true, stream: 'true' }]);
  });

  it('keeps text apply for a table with an enum column (its OID differs on the other server)', async () => {
    const { pair, rt } = await fixture.setup('enum', 100, 16);
    await pair.source(`CREATE TYPE mood AS ENUM ('ok', 'sad');
      CREATE TABLE moods (id int PRIMARY KEY, m mood NOT NULL, ms mood[] NOT NULL);
      INSERT INTO moods SELECT g, 'ok', ARRAY['ok', 'sad']::mood[] FROM generate_series(1, 10) g`);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    expect(
      await pair.target(
        `SELECT subbinary, substream::text AS stream FROM pg_subscription WHERE subname = 'pgferry_${m.id}'`,
      ),
    ).toEqual([{ subbinary: false, stream: 'p' }]);
    await pair.source("UPDATE moods SET m = 'sad', ms = ARRAY['sad']::mood[] WHERE id = 3");
    await advance(rt, m.id, { cutover: 'now' });
    expect(await pair.target('SELECT m::text, ms::text FROM moods WHERE id = 3')).toEqual([{ m: 'sad', ms: '{sad}' }]);
  });

  /** Once the runtime's next catch-up has begun (a migration's commands start with other phases and checks). */
  async function catchUpRunning(r: TestRuntime) {
    const started = () => r.logs.filter((l) => l.startsWith('start catch-up')).length;
    const before = started();
    const until = Date.now() + 60_000;
    while (started() === before && Date.now() < until) await sleep(20);
    await sleep(300);
  }

  it('rides out a restart of the target and of the source during catch-up, and stops with the truth past its window', async () => {
    const [source, target] = await Promise.all([
      startServer({ version: 15, name: 'outage-src' }),
      startServer({ version: 15, name: 'outage-tgt' }),
    ]);
    const runtimes: TestRuntime[] = [];
    const writers: LiveWriter[] = [];
    try {
      const migrate = async (db: string, extra: Record<string, unknown>) => {
        await source.query(`CREATE DATABASE ${db}`);
        await target.query(`CREATE DATABASE ${db}`);
        await source.query(SAMPLE_SCHEMA, [], db);
        await source.query(sampleData(300), [], db);
        const r = testRuntime();
        runtimes.push(r);
        const { writeFileSync } = await import('node:fs');
        writeFileSync(r.switchFile, `${source.url(db)}\n`);
        const w = new LiveWriter({ switchFile: r.switchFile, name: 'app', intervalMs: 5 });
        w.start();
        writers.push(w);
        const m = await createMigration(r, {
          id: `out${db}`,
          sourceUrl: source.url(db),
          targetUrl: target.url(db),
          jobs: 2,
          lagSamples: 2,
          lagSampleIntervalMs: 100,
          longTransactionMs: 500,
          switchFile: r.switchFile,
          ...extra,
        });
        await advance(r, m.id, { cutover: 'manual' });
        // A long transaction keeps the gate closed, so catch-up is running when the servers go away.
        const blocker = new pg.Client({ connectionString: source.url(db) });
        blocker.on('error', () => {});
        await blocker.connect();
        await blocker.query("BEGIN; INSERT INTO audit_log (actor, action) VALUES ('batch', 'long')");
        await sleep(700); // older than longTransactionMs before the next catch-up's first sample
        return { r, w, m, blocker };
      };

      // Past the window: stops, undoing nothing, and says so.
      const a = await migrate('shortwait', { reconnectTimeoutMs: 1500 });
      const failing = advance(a.r, a.m.id, { cutover: 'now' }).catch((e) => e);
      await catchUpRunning(a.r);
      await target.restart(4000);
      const err = await failing;
      expect(err.name, err.message).toBe('ConnectionLostError');
      expect(err.exitCode).toBe(3);
      expect(err.message).toMatch(
        /did not answer for \d+ s during catch-up.*Nothing was undone: slot pgferry_outshortwait stays/,
      );
      let state = await a.r.store.get(a.m.id);
      expect(state.status).toBe('running');
      expect(
        await source.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'pgferry_outshortwait'"),
      ).toHaveProperty('rowCount', 1);
      await a.blocker.query('ROLLBACK');
      await a.blocker.end();
      // Both servers back: resume goes on from there.
      state = await advance(a.r, a.m.id, { cutover: 'now' });
      expect(state.status).toBe('cut-over');
      expect(state.verify?.outcome).toBe('ok');

      // Within the window (the default): the target restarts, then the source; catch-up rides both out.
      const b = await migrate('ride', {});
      const riding = advance(b.r, b.m.id, { cutover: 'now' });
      await catchUpRunning(b.r);
      await target.restart(3000);
      await sleep(1000);
      await b.blocker.query('ROLLBACK').catch(() => {});
      await b.blocker.end().catch(() => {});
      await source.restart(2000);
      state = await riding;
      expect(state.status).toBe('cut-over');
      expect(state.verify?.outcome).toBe('ok');
      expect(b.r.logs.some((l) => /lost the connection during catch-up/.test(l))).toBe(true);
      expect(b.r.logs.some((l) => /the servers answer again after [\d.]+ s/.test(l))).toBe(true);
      for (const [w, db] of [
        [a.w, 'shortwait'],
        [b.w, 'ride'],
      ] as const) {
        await w.stop();
        expect(await w.lostWrites(target.url(db))).toEqual([]);
      }
    } finally {
      for (const w of writers) await w.stop().catch(() => {});
      for (const r of runtimes) r.dispose();
      await Promise.allSettled([source.stop(), target.stop()]);
    }
  });
});
