import { readFileSync } from 'node:fs';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { advance } from '../packages/cli/src/runner';
import {
  assess,
  connect,
  createSlotWithSnapshot,
  type Db,
  freezeHazards,
  slotExists,
} from '../packages/postgres/src/index';
import { frozen, loadSample, newMigration, sleep, type TestRuntime, testRuntime } from './harness/migration';
import { freshPair, type Pair } from './harness/pairs';

let pair: Pair | undefined;
let rt: TestRuntime | undefined;
const open: Db[] = [];
const stops: (() => Promise<unknown>)[] = [];

afterEach(async () => {
  for (const stop of stops.splice(0)) await stop();
  for (const db of open.splice(0)) await db.end();
  // Whatever a test left prepared on its database (DROP DATABASE refuses one with prepared transactions).
  if (pair) {
    for (const { gid } of await pair.source('SELECT gid FROM pg_prepared_xacts WHERE database = current_database()'))
      await pair.source(`ROLLBACK PREPARED '${gid}'`).catch(() => {});
    await pair.drop();
  }
  rt?.dispose();
  pair = undefined;
  rt = undefined;
});

/**
 * A transaction manager (JTA/XA, TransactionScope) on the source: prepares a write, holds it 1–3 s
 * (the other resources voting), then commits it where it prepared, reconnecting and retrying when its
 * session is ended (the freeze ends every session; COMMIT PREPARED works on a read-only database).
 * Once the switch file names the target the application has moved: it prepares nothing more there.
 */
class Coordinator {
  readonly acked: string[] = [];
  /** Commits made from a new session, after the one that prepared was ended. */
  committedAfterReconnect = 0;
  private running = true;
  private readonly loop: Promise<void>;

  constructor(
    private readonly sourceUrl: string,
    private readonly switchFile: string,
    private readonly name: string,
  ) {
    this.loop = this.run();
  }

  private async session(): Promise<pg.Client> {
    for (;;) {
      const c = new pg.Client({ connectionString: this.sourceUrl, application_name: `xa:${this.name}` });
      c.on('error', () => {});
      try {
        await c.connect();
        return c;
      } catch {
        await sleep(20);
      }
    }
  }

  private async run() {
    let n = 0;
    while (this.running && readFileSync(this.switchFile, 'utf8').trim() === this.sourceUrl) {
      const gid = `${this.name}-${n++}`;
      let client = await this.session();
      try {
        await client.query('BEGIN');
        await client.query("INSERT INTO writes (writer, payload) VALUES ('xa', $1)", [gid]);
        await client.query(`PREPARE TRANSACTION '${gid}'`);
      } catch {
        await client.end().catch(() => {}); // not prepared (read-only after the freeze): not acknowledged
        await sleep(50);
        continue;
      }
      await sleep(1000 + (n % 3) * 1000);
      for (let reconnected = false; ; reconnected = true) {
        try {
          await client.query(`COMMIT PREPARED '${gid}'`);
          this.acked.push(gid);
          if (reconnected) this.committedAfterReconnect++;
          break;
        } catch {
          await client.end().catch(() => {});
          await sleep(20);
          client = await this.session();
        }
      }
      await client.end().catch(() => {});
    }
  }

  async stop() {
    this.running = false;
    await this.loop;
  }
}

async function dbs(p: Pair) {
  const source = await connect(p.sourceUrl, { side: 'source', applicationName: 'pgferry:test' });
  const target = await connect(p.targetUrl, { side: 'target', applicationName: 'pgferry:test' });
  open.push(source, target);
  return { source, target };
}

describe('two-phase commit', () => {
  it('blocks the assessment on an orphaned prepared transaction, naming it, and only informs of one in flight', async () => {
    pair = await freshPair(15, 'xaassess');
    await loadSample(pair, 50);
    await pair.source("BEGIN; INSERT INTO writes (writer, payload) VALUES ('xa', 'x'); PREPARE TRANSACTION 'xa-young'");
    const { source, target } = await dbs(pair);
    const young = await assess(source, target);
    expect(young.findings.filter((f) => f.level === 'blocker')).toEqual([]);
    expect(young.findings.find((f) => f.code === 'prepared-transactions')?.message).toMatch(
      /^1 prepared transaction\(s\) in flight \('xa-young' \(owner postgres, prepared \d+ s ago\)\)/,
    );
    expect(await freezeHazards(source)).toEqual([]);
    // Past the threshold it is an orphan: named with its owner and age, and it blocks.
    await sleep(50);
    const old = await assess(source, target, { preparedOrphanMs: 10 });
    expect(old.findings.filter((f) => f.level === 'blocker')).toEqual([
      expect.objectContaining({
        code: 'prepared-transaction-orphan',
        object: 'xa-young',
        message: expect.stringMatching(
          /^prepared transaction 'xa-young' \(owner postgres, prepared \d+ s ago\) is older than 0 s: an orphan/,
        ),
      }),
    ]);
    expect((await freezeHazards(source, { preparedOrphanMs: 10 })).map((h) => h.kind)).toEqual([
      'prepared-transaction',
    ]);
  });

  it('names the prepared transaction that keeps the slot from being created, within its bound', async () => {
    pair = await freshPair(15, 'xaslot');
    await loadSample(pair, 10);
    await pair.source("BEGIN; INSERT INTO writes (writer, payload) VALUES ('xa', 'x'); PREPARE TRANSACTION 'xa-stuck'");
    const { source } = await dbs(pair);
    const logs: string[] = [];
    const err = await createSlotWithSnapshot(source, pair.sourceUrl, 'pgferry_xaslot', {
      applicationName: 'pgferry:test:slot',
      timeoutMs: 2500,
      log: (m) => logs.push(m),
      major: 15,
    }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(
      /open transaction\(s\) on the source hold it back: prepared transaction 'xa-stuck' \(owner postgres, database src_xaslot_\w+, prepared \d+ s ago\)/,
    );
    expect(
      logs.some((l) =>
        l.includes("waiting for 1 open transaction(s) on the source to finish: prepared transaction 'xa-stuck'"),
      ),
    ).toBe(true);
    expect(await slotExists(source, 'pgferry_xaslot')).toBe(false);
  });

  it('keeps every commit of a transaction manager whose prepared transactions are in flight across the cutover', async () => {
    pair = await freshPair(15, 'xacut');
    rt = testRuntime();
    await loadSample(pair, 200);
    // The wait outlasts the longest hold (3 s), so no attempt gives up on a loaded machine either; giving up
    // and trying again is the next test's.
    const m = await newMigration(rt, pair, { cutover: 'auto', catchUpTimeoutMs: 30_000, maxPreparedWaitMs: 6000 });
    const coordinators = ['a', 'b', 'c'].map((x) => new Coordinator(pair!.sourceUrl, rt!.switchFile, `xa-${x}`));
    stops.push(...coordinators.map((c) => () => c.stop()));
    await sleep(1500); // prepared transactions in flight from the start: assessment, slot, gate and freeze
    const state = await advance(rt, m.id, { cutover: 'auto' });
    for (const c of coordinators) await c.stop();
    expect(state.status).toBe('cut-over');
    expect(state.verify?.ok).toBe(true);
    const acked = coordinators.flatMap((c) => c.acked);
    expect(acked.length).toBeGreaterThan(3);
    // Some were committed from a new session after the freeze ended the one that prepared them...
    expect(coordinators.reduce((n, c) => n + c.committedAfterReconnect, 0)).toBeGreaterThan(0);
    // ...and every acknowledged commit is on the target: the drain LSN was read after them.
    const onTarget = (await pair.target("SELECT payload FROM writes WHERE writer = 'xa'")).map((r) => r.payload);
    expect(acked.filter((gid) => !onTarget.includes(gid))).toEqual([]);
    expect(await pair.source('SELECT gid FROM pg_prepared_xacts WHERE database = current_database()')).toEqual([]);
  });

  it('unfreezes and returns to catch-up when a prepared transaction outlasts --max-prepared-wait-ms, naming it, then cuts over', async () => {
    pair = await freshPair(15, 'xawait');
    rt = testRuntime();
    await loadSample(pair, 100);
    const m = await newMigration(rt, pair, { cutover: 'manual', maxPreparedWaitMs: 300 });
    await advance(rt, m.id, { cutover: 'manual' });
    await pair.source(
      "BEGIN; INSERT INTO writes (writer, payload) VALUES ('xa', 'slow'); PREPARE TRANSACTION 'xa-slow'",
    );
    const committed = (async () => {
      const until = Date.now() + 30_000;
      while (!rt!.logs.some((l) => /back to catch-up/.test(l)) && Date.now() < until) await sleep(50);
      expect(await frozen(pair!, 'source')).toBe(false); // unfrozen while the cutover waits again
      await pair!.source("COMMIT PREPARED 'xa-slow'");
    })();
    const state = await advance(rt, m.id, { cutover: 'now' });
    await committed;
    expect(
      rt.logs.some((l) =>
        /1 prepared transaction\(s\) of the source database were neither committed nor rolled back within 300 ms of the freeze: 'xa-slow' \(owner postgres, prepared \d+ s ago\); the source was unfrozen; back to catch-up \(attempt 2 of 3\)/.test(
          l,
        ),
      ),
    ).toBe(true);
    expect(state.status).toBe('cut-over');
    expect(await pair.target("SELECT count(*)::int AS n FROM writes WHERE payload = 'slow'")).toEqual([{ n: 1 }]);
  });
});
