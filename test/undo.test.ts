import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import {
  advance,
  cleanupMigration,
  inspectMigration,
  openSession,
  rollbackMigration,
  unfreezeMigration,
} from '../packages/cli/src/runner';
import type { FileMigrationStore } from '../packages/cli/src/store';
import type { PgferryError } from '../packages/core/src/index';
import { assess, cleanup, connect, runWorkflowTask, type TaskDeps } from '../packages/postgres/src/index';
import {
  frozen,
  loadSample,
  newMigration,
  sleep,
  type TestRuntime,
  testRuntime,
  verifyHeldAtRead,
} from './harness/migration';
import { freshPair, leftovers, type Pair, serverUrl, sql } from './harness/pairs';

let pair: Pair | undefined;
let rt: TestRuntime | undefined;

afterEach(async () => {
  if (pair) {
    for (const side of ['source', 'target'] as const) await allowConnections(pair, side);
    await pair.drop();
  }
  rt?.dispose();
  pair = undefined;
  rt = undefined;
});

/**
 * A shell command (run as --on-switch) that cuts pgferry off one side, for real: no new connection to
 * that database is allowed (superusers included), and pgferry's sessions there are ended.
 */
function cutOff(p: Pair, side: 'source' | 'target') {
  const admin = serverUrl(side === 'source' ? p.sourceServer : p.targetServer);
  const db = side === 'source' ? p.sourceDb : p.targetDb;
  return `psql '${admin}' -qAt -v ON_ERROR_STOP=1 -c 'ALTER DATABASE "${db}" ALLOW_CONNECTIONS false' -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '${db}' AND application_name LIKE 'pgferry:%'" >/dev/null`;
}

/** The error `p` rejects with (a test failure if it resolves). */
async function failure(p: Promise<unknown>): Promise<Error> {
  return p.then(
    () => {
      throw new Error('expected a failure');
    },
    (e: Error) => e,
  );
}

async function allowConnections(p: Pair, side: 'source' | 'target') {
  const server = side === 'source' ? p.sourceServer : p.targetServer;
  const db = side === 'source' ? p.sourceDb : p.targetDb;
  await sql(serverUrl(server), `ALTER DATABASE ${pg.escapeIdentifier(db)} ALLOW_CONNECTIONS true`);
}

/** A fresh 15 → 15 pair with 50 sample rows, and a migration advanced as far as `cutover` takes it. */
async function advancedMigration(label: string, cutover: 'auto' | 'manual') {
  const p = await freshPair(15, label);
  const r = testRuntime();
  pair = p;
  rt = r;
  await loadSample(p, 50);
  const m = await newMigration(r, p, { cutover });
  await advance(r, m.id, { cutover });
  return { p, r, m };
}

/** A cut-over migration whose rollback was killed in its write gap: the target frozen, not yet switched back. */
async function rollbackKilledInItsGap(label: string) {
  const { p, r, m } = await advancedMigration(label, 'auto');
  await p.target(`ALTER DATABASE ${pg.escapeIdentifier(p.targetDb)} SET default_transaction_read_only = on`);
  const state = await r.store.get(m.id);
  await r.store.put({
    ...state,
    rollback: { freezeAt: new Date().toISOString(), direction: 'reverse', wasFrozen: false },
  });
  return { pair: p, rt: r, m };
}

describe('undo paths', () => {
  it('keeps the breadcrumb of a cutover whose undo fails, and status names the frozen source, its slot and the command that ends it', async () => {
    pair = await freshPair(15, 'undocut');
    rt = testRuntime();
    await loadSample(pair, 100);
    // The switch command fails, and there is no switch file: the cutover is undone, with the source cut off.
    const onSwitch = `${cutOff(pair, 'source')}; exit 3`;
    // (Its undo tries again while the source is away: for 1 s here, then it fails.)
    const m = await newMigration(rt, pair, {
      cutover: 'manual',
      switchFile: undefined,
      onSwitch,
      reconnectTimeoutMs: 1000,
    });
    await advance(rt, m.id, { cutover: 'manual' });
    const err = await failure(advance(rt, m.id, { cutover: 'now' }));
    await allowConnections(pair, 'source');
    expect(err.name).toBe('UndoFailedError');
    expect(err.message).toMatch(
      /^the undo of the cutover failed \(.*unfreeze the source: .*\); it was undoing: --on-switch command failed \(exit 3\)/,
    );
    const state = await rt.store.get(m.id);
    expect(state.status).toBe('running');
    expect(state.cutover?.freezeAt).toBeDefined(); // the breadcrumb resume undoes again
    expect(state.cutover?.switchStartedAt).toBeUndefined(); // (and does not mistake for a switch)
    expect(state.undoFailed?.command).toBe(`pgferry resume --id ${m.id}`);
    expect(await frozen(pair, 'source')).toBe(true);
    const live = await inspectMigration(rt, m.id);
    expect(live.attention[0]).toMatch(
      new RegExp(
        // (The slot is named while it is unread: the subscription may have reconnected by now.)
        `^the undo of the cutover failed at .*: the source database is read-only; (.*slot pgferry_${m.id} on the source retains .* of WAL, unread.*; )?\`pgferry resume --id ${m.id}\` ends it$`,
      ),
    );
    const { describeState } = await import('../packages/cli/src/output');
    expect(describeState(state)).toContain(`\`pgferry resume --id ${m.id}\` ends it`);
    // Once the source answers, resume finishes the undo: writable, replicating, caught up.
    const resumed = await advance(rt, m.id, { cutover: 'manual' });
    expect(resumed.status).toBe('awaiting-cutover');
    expect(resumed.undoFailed).toBeUndefined();
    expect(resumed.cutover).toBeUndefined();
    expect(await frozen(pair, 'source')).toBe(false);
  });

  it('rides out a source away for a moment while it undoes a cutover: the source is writable again without anyone', async () => {
    pair = await freshPair(15, 'undoretry');
    rt = testRuntime();
    await loadSample(pair, 100);
    // The switch command fails after cutting the source off; the source takes connections again 1.5 s later.
    const admin = serverUrl(pair.sourceServer);
    const back = `psql '${admin}' -qAt -c 'ALTER DATABASE "${pair.sourceDb}" ALLOW_CONNECTIONS true'`;
    const onSwitch = `${cutOff(pair, 'source')}; (sleep 1.5; ${back}) >/dev/null 2>&1 & exit 3`;
    const m = await newMigration(rt, pair, { cutover: 'manual', switchFile: undefined, onSwitch });
    await advance(rt, m.id, { cutover: 'manual' });
    const err = await failure(advance(rt, m.id, { cutover: 'now' }));
    // The cutover failed for its switch command, and its undo went through once the source was back:
    // no breadcrumb left for a person to find at 3 a.m., the source writable.
    expect(err.name).toBe('CutoverFailedError');
    expect(err.message).toContain('--on-switch command failed (exit 3)');
    // (Its first error is either, as the cut-off's timing has it: a pooled session ended, or a new one refused.)
    expect(rt.logs.join('\n')).toMatch(
      /the undo of the cutover could not .*unfreeze the source \(.*(?:not currently accepting connections|terminating connection due to administrator command)\); trying again for up to 300 s/,
    );
    expect(await frozen(pair, 'source')).toBe(false);
    const state = await rt.store.get(m.id);
    expect(state.undoFailed).toBeUndefined();
    expect(state.cutover).toBeUndefined();
  });

  it('undoes a cutover whose wait for the drain fails, keeping the load (not rolled back), and resume cuts over', async () => {
    pair = await freshPair(15, 'drainfail');
    rt = testRuntime();
    await loadSample(pair, 100);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    // Inside the write gap, while the drain is waited for: the query fails as a dropped connection's does.
    let failures = 1;
    rt.faults = {
      async duringDrain() {
        if (failures-- > 0) throw new Error('Connection terminated unexpectedly');
      },
    };
    const err = await failure(advance(rt, m.id, { cutover: 'now' }));
    expect(err.name).toBe('CutoverFailedError');
    expect(err.message).toMatch(/^waiting for the drain failed; the source was unfrozen: Connection terminated/);
    const state = await rt.store.get(m.id);
    // (A raw error from the drain reached the failure policy, which rolled the whole load back.)
    expect(state.status).toBe('running');
    expect(state.cutover).toBeUndefined();
    expect(await frozen(pair, 'source')).toBe(false);
    expect(await pair.target('SELECT count(*)::int AS n FROM orders')).toEqual([{ n: 100 }]);
    const done = await advance(rt, m.id, { cutover: 'now' });
    expect(done.status).toBe('cut-over');
    expect(done.verify?.ok).toBe(true);
  });

  it('undoes a cutover whose switch file cannot be written, keeping the load, and cuts over once it can', async () => {
    pair = await freshPair(15, 'switchfail');
    rt = testRuntime();
    await loadSample(pair, 100);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    // The switch file's path became a directory (as a full disk, the write fails with a raw error).
    rmSync(rt.switchFile);
    mkdirSync(rt.switchFile);
    writeFileSync(join(rt.switchFile, 'kept'), '');
    const err = await failure(advance(rt, m.id, { cutover: 'now' }));
    expect(err.name).toBe('CutoverFailedError');
    expect(err.message).toMatch(/^the switch failed; the cutover was undone: /);
    const state = await rt.store.get(m.id);
    // (The raw error reached the failure policy, which rolled the whole load back.)
    expect(state.status).toBe('running');
    expect(await frozen(pair, 'source')).toBe(false);
    expect(await pair.target('SELECT count(*)::int AS n FROM orders')).toEqual([{ n: 100 }]);
    rmSync(rt.switchFile, { recursive: true });
    const done = await advance(rt, m.id, { cutover: 'now' });
    expect(done.status).toBe('cut-over');
    expect(readFileSync(rt.switchFile, 'utf8').trim()).toBe(pair.targetUrl);
  });

  it('records a failure after the switch as cut-over, and resume goes on from there', async () => {
    pair = await freshPair(15, 'undoafter');
    rt = testRuntime();
    await loadSample(pair, 100);
    // The switch succeeds and then the target is cut off: dropping forward replication fails after it.
    const m = await newMigration(rt, pair, { cutover: 'auto', onSwitch: cutOff(pair, 'target') });
    const err = await failure(advance(rt, m.id, { cutover: 'auto' }));
    await allowConnections(pair, 'target');
    // Said as what it is, a server away after the switch (exit 3), with the command that finishes it:
    // not a bare query error with exit 1, which reads as a cutover rolled back.
    expect(err).toMatchObject({
      exitCode: 3,
      message: expect.stringContaining('the application was switched to the target, but finishing the cutover failed'),
      hint: expect.stringContaining(`\`pgferry resume --id ${m.id}\` finishes the cutover`),
    });
    const state = await rt.store.get(m.id);
    expect(state.cutover?.switchAt).toBeDefined();
    expect(state.status).toBe('cut-over'); // the application is on the target, with a way back
    expect(state.failure?.phase).toBe('cutover');
    const resumed = await advance(rt, m.id, { cutover: 'now' });
    expect(resumed.status).toBe('cut-over');
    expect(resumed.verify?.ok).toBe(true);
    expect(resumed.failure).toBeUndefined();
  });

  it('freezes the source again as the cutover does when a rollback is undone, ending a session that connected meanwhile', async () => {
    pair = await freshPair(15, 'undorefreeze');
    rt = testRuntime();
    await loadSample(pair, 100);
    const marker = join(rt.dir, 'switching-back');
    const onSwitch = `[ "$PGFERRY_DIRECTION" = forward ] || { touch ${marker}; sleep 1; exit 4; }`;
    const m = await newMigration(rt, pair, { cutover: 'auto', switchFile: undefined, onSwitch });
    expect((await advance(rt, m.id, { cutover: 'auto' })).status).toBe('cut-over');
    // While the switch back runs, the source is writable: a session connects to it then.
    const late = (async () => {
      const until = Date.now() + 30_000;
      while (!existsSync(marker) && Date.now() < until) await sleep(10);
      const c = new pg.Client({ connectionString: pair!.sourceUrl, application_name: 'late' });
      c.on('error', () => {});
      await c.connect();
      return c;
    })();
    const err = await failure(rollbackMigration(rt, m.id));
    const client = await late;
    try {
      expect(err.message).toMatch(/^the switch back failed; the rollback was undone/);
      // Its session was ended by the freeze: it cannot write to the source while the application writes to the target.
      await expect(
        client.query("INSERT INTO audit_log (actor, action) VALUES ('late', 'both sides')"),
      ).rejects.toThrow();
    } finally {
      await client.end().catch(() => {});
    }
    expect(await pair.source("SELECT count(*)::int AS n FROM audit_log WHERE actor = 'late'")).toEqual([{ n: 0 }]);
    expect(await frozen(pair, 'source')).toBe(true);
    expect(await frozen(pair, 'target')).toBe(false);
    expect((await rt.store.get(m.id)).rollback).toBeUndefined();
  });

  it('does not freeze the target for a rollback while the reverse drain is predicted over its budget, and rolls back once it fits', async () => {
    pair = await freshPair(15, 'rollbackgate');
    rt = testRuntime();
    await loadSample(pair, 200);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    expect((await advance(rt, m.id, { cutover: 'auto' })).status).toBe('cut-over');
    // Reverse apply stalls behind a lock on the source while the application writes to the target.
    const holder = new pg.Client({ connectionString: pair.sourceUrl, application_name: 'holder' });
    await holder.connect();
    let sawFrozen = false;
    let watching = true;
    const watch = (async () => {
      while (watching) {
        sawFrozen ||= await frozen(pair!, 'target');
        await sleep(20);
      }
    })();
    try {
      await holder.query('BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE');
      await pair.target('UPDATE orders SET amount = amount + 1');
      const err = await failure(rollbackMigration(rt, m.id));
      expect(err.name).toBe('DrainTimeoutError');
      expect(err.message).toMatch(
        /^not freezing the target: the reverse drain is predicted at \d+ ms, over the budget of 1000 ms/,
      );
      expect(sawFrozen).toBe(false);
      const state = await rt.store.get(m.id);
      expect(state.rollback).toBeUndefined();
      expect(state.status).toBe('cut-over');
    } finally {
      await holder.query('ROLLBACK').catch(() => {});
      await holder.end();
      watching = false;
      await watch;
    }
    // Caught up, the same command rolls back.
    const rolled = await rollbackMigration(rt, m.id);
    expect(rolled.status).toBe('rolled-back');
    expect(await pair.source('SELECT count(*)::int AS n FROM orders')).toEqual(
      await pair.target('SELECT count(*)::int AS n FROM orders'),
    );
    expect(await frozen(pair, 'source')).toBe(false);
  });

  it('refuses a rollback that would leave behind the rows of a table made on the target after the cutover, and carries them once it is replicated', async () => {
    pair = await freshPair(15, 'rollbacknew');
    rt = testRuntime();
    await loadSample(pair, 50);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    expect((await advance(rt, m.id, { cutover: 'auto' })).status).toBe('cut-over');
    // The application's next deploy adds a table on the target, which the reverse publication does not list.
    await pair.target(
      'CREATE TABLE coupons (id int PRIMARY KEY, code text); INSERT INTO coupons VALUES (1, $$X1$$), (2, $$X2$$)',
    );
    const err = await failure(rollbackMigration(rt, m.id));
    expect(err.name).toBe('RollbackFailedError');
    const pub = `pgferry_${m.id}_rev`;
    expect(err.message).toContain(
      `table public.coupons is not replicated (created on the target after the cutover): create it on the source too, with the same columns (the source is read-only: SET default_transaction_read_only = off in that session first), then on the target run ALTER PUBLICATION "${pub}" ADD TABLE "public"."coupons", then on the source ALTER SUBSCRIPTION "${pub}" REFRESH PUBLICATION (which copies its rows)`,
    );
    expect(await frozen(pair, 'target')).toBe(false);
    const state = await rt.store.get(m.id);
    expect(state.rollback).toBeUndefined();
    expect(state.status).toBe('cut-over');
    // Done as it says, the same command rolls back, rows and all.
    await pair.source('CREATE TABLE coupons (id int PRIMARY KEY, code text)');
    // On the source now: the steps left are the publication and the subscription.
    const again = await failure(rollbackMigration(rt, m.id));
    expect(again.message).toContain(
      `table public.coupons is not replicated (created on the target after the cutover): on the target run ALTER PUBLICATION "${pub}"`,
    );
    await pair.target(`ALTER PUBLICATION ${pub} ADD TABLE public.coupons`);
    await pair.source(`ALTER SUBSCRIPTION ${pub} REFRESH PUBLICATION`);
    for (let i = 0; i < 200; i++) {
      const [row] = await pair.source(
        "SELECT bool_and(srsubstate = 'r') AS ready FROM pg_subscription_rel WHERE srrelid = 'coupons'::regclass",
      );
      if (row?.ready) break;
      await sleep(50);
    }
    await pair.target('INSERT INTO coupons VALUES (3, $$X3$$)');
    const rolled = await rollbackMigration(rt, m.id);
    expect(rolled.status).toBe('rolled-back');
    expect(await pair.source('SELECT id FROM coupons ORDER BY id')).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }]);
  });

  it('keeps the breadcrumb of a rollback whose undo fails, and status names the command that ends it', async () => {
    pair = await freshPair(15, 'undorb');
    rt = testRuntime();
    await loadSample(pair, 100);
    const once = join(rt.dir, 'cut-once');
    const onSwitch = `[ "$PGFERRY_DIRECTION" = forward ] || test -f ${once} || { touch ${once}; ${cutOff(pair, 'source')}; exit 4; }`;
    const m = await newMigration(rt, pair, {
      cutover: 'auto',
      switchFile: undefined,
      onSwitch,
      reconnectTimeoutMs: 1000,
    });
    expect((await advance(rt, m.id, { cutover: 'auto' })).status).toBe('cut-over');
    const err = await failure(rollbackMigration(rt, m.id));
    await allowConnections(pair, 'source');
    expect(err.name).toBe('UndoFailedError');
    expect(err.message).toMatch(
      /^the undo of the rollback failed \(freeze the source again: .*resume reverse replication: .*\); it was undoing: --on-switch command failed \(exit 4\)/,
    );
    const state = await rt.store.get(m.id);
    expect(state.rollback?.freezeAt).toBeDefined();
    expect(state.undoFailed?.command).toBe(`pgferry rollback --id ${m.id}`);
    const live = await inspectMigration(rt, m.id);
    expect(live.attention[0]).toMatch(
      new RegExp(`^the undo of the rollback failed at .*; \`pgferry rollback --id ${m.id}\` ends it$`),
    );
    // The command it names finishes the rollback.
    const rolled = await rollbackMigration(rt, m.id);
    expect(rolled.status).toBe('rolled-back');
    expect(rolled.undoFailed).toBeUndefined();
    expect(await frozen(pair, 'source')).toBe(false);
  });

  it('unfreezes the source on clean-up of a cutover that froze it and never switched, and refuses one whose switch began', async () => {
    pair = await freshPair(15, 'cleanfrozen');
    rt = testRuntime();
    await loadSample(pair, 50);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    // What a cutover killed in its write gap (or whose undo failed) leaves: the source frozen by it.
    await pair.source(`ALTER DATABASE ${pg.escapeIdentifier(pair.sourceDb)} SET default_transaction_read_only = on`);
    const state = await rt.store.get(m.id);
    const frozenAt = new Date().toISOString();
    await rt.store.put({
      ...state,
      cutover: { freezeAt: frozenAt, direction: 'forward', wasFrozen: false, switchStartedAt: frozenAt },
    });
    // Its switch began: the application may be on the target; cleaning up is refused, nothing touched.
    const refused = await failure(cleanupMigration(rt, m.id, { force: true }));
    expect(refused.message).toMatch(/began to switch the application .* and did not finish$/);
    expect(await frozen(pair, 'source')).toBe(true);
    const again = await rt.store.get(m.id);
    await rt.store.put({ ...again, cutover: { freezeAt: frozenAt, direction: 'forward', wasFrozen: false } });
    const cleaned = await cleanupMigration(rt, m.id, { force: true });
    expect(cleaned.status).toBe('cleaned-up');
    // (Left read-only before: the application's database closed for good, and nothing said so.)
    expect(await frozen(pair, 'source')).toBe(false);
    expect(cleaned.events.map((e) => e.message).join('\n')).toContain(
      "the source's default_transaction_read_only (set by the cutover that did not switch)",
    );
  });

  it("keeps the marker schema when another migration's marker cannot be read, instead of dropping it", async () => {
    pair = await freshPair(15, 'undomarker');
    rt = testRuntime();
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await pair.target(
      `CREATE SCHEMA pgferry; CREATE TABLE pgferry.migration (id text PRIMARY KEY); INSERT INTO pgferry.migration VALUES ('${m.id}'), ('another')`,
    );
    // Another process holds the marker table: reading it fails (lock timeout), for real.
    const locker = new pg.Client({ connectionString: pair.targetUrl });
    await locker.connect();
    await locker.query('BEGIN; LOCK TABLE pgferry.migration IN ACCESS EXCLUSIVE MODE');
    const session = await openSession(rt, m.id);
    const target = await connect(pair.targetUrl, {
      side: 'target',
      applicationName: 'pgferry:test',
      lockTimeoutMs: 300,
    });
    try {
      let settled = false;
      const cleaning = cleanup({ ...session.ctx, target })
        .catch((e: Error) => e)
        .finally(() => {
          settled = true;
        });
      // Released once the clean-up failed, or once it went on to DROP SCHEMA (which then goes through).
      const until = Date.now() + 20_000;
      while (!settled && Date.now() < until) {
        const dropping = await pair.target("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'DROP SCHEMA%'");
        if (dropping.length) break;
        await sleep(20);
      }
      await locker.query('ROLLBACK');
      const result = await cleaning;
      expect(result).toBeInstanceOf(Error);
      expect((result as Error).message).toMatch(/lock timeout/);
    } finally {
      await locker.end();
      await target.end();
      await session.close();
    }
    expect(await pair.target('SELECT id FROM pgferry.migration ORDER BY id')).toEqual([
      { id: 'another' },
      { id: m.id },
    ]);
  });
});

describe('a second migration, and a rollback run again', () => {
  it('blocks the assessment of a source another migration cut over: its objects and its freeze', async () => {
    pair = await freshPair(15, 'second');
    rt = testRuntime();
    await loadSample(pair, 50);
    const first = await newMigration(rt, pair, { cutover: 'auto' });
    expect((await advance(rt, first.id, { cutover: 'auto' })).status).toBe('cut-over');
    const source = await connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test' });
    try {
      const report = await assess(source, undefined, { migrationId: 'second' });
      const blockers = report.findings.filter((f) => f.level === 'blocker');
      expect(blockers.map((f) => f.code).sort()).toEqual(['source-frozen', 'source-other-migration']);
      expect(blockers.find((f) => f.code === 'source-other-migration')?.message).toContain(
        `subscription pgferry_${first.id}_rev`,
      );
    } finally {
      await source.end();
    }
  });

  it('leaves a freeze it did not set when it undoes a cutover', async () => {
    pair = await freshPair(15, 'notmine');
    rt = testRuntime();
    await loadSample(pair, 50);
    const m = await newMigration(rt, pair, { cutover: 'manual', switchFile: undefined, onSwitch: 'exit 3' });
    await advance(rt, m.id, { cutover: 'manual' });
    // Someone else froze the source meanwhile (another migration's cutover, its DBA).
    await pair.source(`ALTER DATABASE ${pg.escapeIdentifier(pair.sourceDb)} SET default_transaction_read_only = on`);
    const err = await failure(advance(rt, m.id, { cutover: 'now' }));
    expect(err.message).toMatch(/--on-switch command failed \(exit 3\)/);
    expect((await rt.store.get(m.id)).cutover).toBeUndefined(); // undone...
    expect(await frozen(pair, 'source')).toBe(true); // ...but not that freeze
  });

  it('checks again inside the gap, when run again after a rollback killed in it, for a table the reverse stream does not carry', async () => {
    // A rollback killed in its gap (target frozen, not yet switched), then a table made on the target by a
    // session that turned read-only off, with rows: the run again has no check before its freeze.
    const { pair, rt, m } = await rollbackKilledInItsGap('rollbackagain');
    await pair.target('CREATE TABLE coupons (id int PRIMARY KEY); INSERT INTO coupons VALUES (1)');
    const err = await failure(rollbackMigration(rt, m.id));
    expect(err.name).toBe('RollbackFailedError');
    expect(err.message).toMatch(
      /^switching back would leave rows behind: table public\.coupons is not replicated \(created on the target after the cutover\).*; the target was unfrozen and the application stays on it$/,
    );
    expect(await frozen(pair, 'target')).toBe(false);
    expect(readFileSync(rt.switchFile, 'utf8').trim()).toBe(pair.targetUrl);
  });

  it('undoes nothing toward the target when a rollback run again after its switch back began fails: the target stays frozen, the breadcrumb stays', async () => {
    pair = await freshPair(15, 'rbswitching');
    rt = testRuntime();
    await loadSample(pair, 50);
    const m = await newMigration(rt, pair, { cutover: 'auto', drainTimeoutMs: 1500 });
    await advance(rt, m.id, { cutover: 'auto' });
    // What a rollback killed after it unfroze the source and began to switch back leaves: reverse
    // stream stopped with a write of the application's on the target still to bring over, target
    // frozen, source writable (the application may be on it).
    const rev = `pgferry_${m.id}_rev`;
    await pair.source(`ALTER SUBSCRIPTION ${rev} DISABLE`);
    await pair.target("INSERT INTO orders (customer_id, amount, status) VALUES (1, 1, 'late')");
    await pair.target(`ALTER DATABASE ${pg.escapeIdentifier(pair.targetDb)} SET default_transaction_read_only = on`);
    await pair.source(`ALTER DATABASE ${pg.escapeIdentifier(pair.sourceDb)} RESET default_transaction_read_only`);
    const state = await rt.store.get(m.id);
    const begun = new Date().toISOString();
    await rt.store.put({
      ...state,
      rollback: { freezeAt: begun, direction: 'reverse', wasFrozen: false, switchStartedAt: begun },
    });
    // The run again fails before its switch: the reverse drain is held up by a lock on the source.
    const locker = new pg.Client({ connectionString: pair.sourceUrl });
    await locker.connect();
    try {
      await locker.query('BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE');
      const err = await failure(rollbackMigration(rt, m.id));
      expect(err.message).toMatch(/^the reverse drain did not finish: .*; not undone: an earlier attempt/);
      // (Undone toward the target, it was unfrozen with the source writable too, and the breadcrumb gone.)
      expect(await frozen(pair, 'target')).toBe(true);
      expect((await rt.store.get(m.id)).rollback?.switchStartedAt).toBe(begun);
      await locker.query('ROLLBACK');
    } finally {
      await locker.end();
    }
    const rolled = await rollbackMigration(rt, m.id);
    expect(rolled.status).toBe('rolled-back');
    expect(await pair.source("SELECT 1 FROM orders WHERE status = 'late'")).toHaveLength(1);
  });

  it('cleans up after `pgferry unfreeze` whatever was half done, where rollback, resume and clean-up all refused', async () => {
    // A rollback killed in its write gap (the target frozen), then the target given up: unfreeze.
    const { pair, rt, m } = await rollbackKilledInItsGap('unfrozenhalf');
    await unfreezeMigration(rt, m.id);
    const { nextStep } = await import('../packages/cli/src/status');
    expect(nextStep(await rt.store.get(m.id))).toMatch(
      /^the source was made writable without the target .*`pgferry cleanup --id /,
    );
    // (Refused before: "a rollback … did not finish: run rollback first", which refuses after an unfreeze.)
    const cleaned = await cleanupMigration(rt, m.id);
    expect(cleaned.status).toBe('cleaned-up');
    expect(await leftovers(pair)).toEqual([]);
  });

  it('refuses the cutover, nothing frozen, while the source subscribes to another server, and cuts over once that is disabled', async () => {
    const { p, r, m } = await advancedMigration('upstream', 'manual');
    // An upstream database the source subscribes to (its publication has no table: the apply worker
    // runs and writes nothing; one that writes was seen to write through the freeze).
    const upstreamDb = `up_${m.id}`;
    const admin = serverUrl(p.targetServer);
    await sql(admin, `CREATE DATABASE ${upstreamDb}`);
    const upstreamUrl = serverUrl(p.targetServer, upstreamDb);
    try {
      await sql(upstreamUrl, 'CREATE PUBLICATION up_pub');
      await p.source(`CREATE SUBSCRIPTION up_sub CONNECTION '${upstreamUrl}' PUBLICATION up_pub`);
      const source = await connect(p.sourceUrl, { side: 'source', applicationName: 'test' });
      try {
        const found = (await assess(source, undefined)).findings.find((f) => f.code === 'source-subscription');
        expect(found).toMatchObject({ level: 'warning', object: 'up_sub' });
      } finally {
        await source.end();
      }
      const err = await failure(advance(r, m.id, { cutover: 'now' }));
      expect(err).toMatchObject({ name: 'CutoverFailedError' });
      expect(err.message).toMatch(
        /^the source subscribes to another server \(up_sub\): its apply writes through the freeze/,
      );
      expect((err as PgferryError).hint).toContain('ALTER SUBSCRIPTION up_sub DISABLE');
      expect(await frozen(p, 'source')).toBe(false);
      expect((await r.store.get(m.id)).cutover?.freezeAt).toBeUndefined();
      // Disabled (moved to the target at the cutover, as the hint says): the cutover goes ahead.
      await p.source('ALTER SUBSCRIPTION up_sub DISABLE');
      expect((await advance(r, m.id, { cutover: 'now' })).status).toBe('cut-over');
    } finally {
      await sql(p.sourceUrl, 'DROP SUBSCRIPTION IF EXISTS up_sub').catch(() => {});
      await sql(admin, `DROP DATABASE IF EXISTS ${upstreamDb} WITH (FORCE)`);
    }
  });

  it('a clean-up task whose passwords cannot be removed stays cleaned up, and says so', async () => {
    const { r, m } = await advancedMigration('cleansecrets', 'auto');
    const store = Object.assign(Object.create(r.store), {
      removeSecrets: async () => {
        throw new Error('EACCES: permission denied');
      },
    });
    const out = await runWorkflowTask('cleanup', { migrationId: m.id }, { store, log: (l) => r.logs.push(l) });
    expect(out.summary).toMatch(/nothing left behind/);
    const after = await r.store.get(m.id);
    expect(after.status).toBe('cleaned-up');
    expect(after.warnings?.at(-1)).toBe(
      "the migration's stored passwords were not removed (EACCES: permission denied): remove them by hand",
    );
  });

  it('a task of a stopped execution that runs on changes nothing once another process rolled the migration back', async () => {
    pair = await freshPair(15, 'lateverify');
    const r = testRuntime();
    rt = r;
    await loadSample(pair, 300);
    const { m, point, faults } = await verifyHeldAtRead(r, pair);
    const deps: TaskDeps = { store: r.store, log: (l) => r.logs.push(l), faults };
    try {
      const late = runWorkflowTask('verifyBeforeSwitch', { migrationId: m.id }, deps).catch((e: Error) => e);
      await point.reached;
      // Meanwhile another execution (Slack's rollback) ended the migration.
      const ended = await rt.store.put({ ...(await rt.store.get(m.id)), status: 'rolled-back' });
      point.release();
      expect(await late).toMatchObject({
        name: 'StateConflictError',
        message: expect.stringContaining(
          `migration ${m.id} was rolled-back by another process while this one worked on it`,
        ),
      });
      const after = await rt.store.get(m.id);
      expect([after.status, after.version, after.verifyBeforeSwitch]).toEqual([
        'rolled-back',
        ended.version,
        undefined,
      ]);
    } finally {
      point.release();
    }
  });

  /** The target dies: nothing can connect to its database any more, until `revive`. */
  async function killTarget(p: Pair) {
    const admin = serverUrl(p.targetServer);
    await sql(admin, `ALTER DATABASE ${pg.escapeIdentifier(p.targetDb)} ALLOW_CONNECTIONS false`);
    await sql(admin, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [p.targetDb]);
    return () => sql(admin, `ALTER DATABASE ${pg.escapeIdentifier(p.targetDb)} ALLOW_CONNECTIONS true`);
  }

  it('cleans up the source alone when the target died during catch-up (--without-target): no slot left retaining WAL', async () => {
    pair = await freshPair(15, 'notargetcu');
    rt = testRuntime();
    await loadSample(pair, 50);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    const n = `pgferry_${m.id}`;
    const files = rt.store as FileMigrationStore;
    const secrets = await files.secrets(m.id);
    const target = new URL(secrets.targetUrl);
    // A target that answers and refuses (a wrong password) is not gone: nothing is dropped.
    await files.updateSecrets(m.id, {
      ...secrets,
      targetUrl: `${target.protocol}//${target.username}:wrong@${target.host}${target.pathname}`,
    });
    await expect(cleanupMigration(rt, m.id, { withoutTarget: true, force: true })).rejects.toThrow(
      /the target answered, so it is not gone/,
    );
    // Nothing answers at the URL pgferry has (a VPN down, a security group), but the target still streams
    // from the slot: it is alive, only out of reach from here, and its slot is not dropped.
    await files.updateSecrets(m.id, {
      ...secrets,
      targetUrl: `${target.protocol}//${target.username}:${target.password}@127.0.0.1:1${target.pathname}`,
    });
    await expect(cleanupMigration(rt, m.id, { withoutTarget: true, force: true })).rejects.toMatchObject({
      field: '--without-target',
      message: expect.stringMatching(
        new RegExp(`^the target still streams from the source's slot ${n} \\(walsender pid \\d+`),
      ),
    });
    expect(await pair.source('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [n])).toHaveLength(1);
    await files.updateSecrets(m.id, secrets);
    const revive = await killTarget(pair);
    try {
      // A clean-up that needs the target says so, and names the way for a target that will not come back.
      await expect(cleanupMigration(rt, m.id)).rejects.toMatchObject({
        name: 'ConnectionFailedError',
        field: '--target',
        hint: expect.stringContaining(`\`pgferry cleanup --id ${m.id} --without-target\``),
      });
      // Still replicating (as far as anyone knows): --force says to stop it, as always.
      await expect(cleanupMigration(rt, m.id, { withoutTarget: true })).rejects.toThrow(/still replicating/);
      const held = 'SELECT slot_name FROM pg_replication_slots WHERE slot_name = $1';
      expect(await pair.source(held, [n])).toHaveLength(1);
      const cleaned = await cleanupMigration(rt, m.id, { withoutTarget: true, force: true });
      expect(cleaned.status).toBe('cleaned-up');
      expect(cleaned.leftovers).toEqual([]);
      expect(cleaned.warnings?.at(-1)).toMatch(
        new RegExp(
          `^pgferry cleanup without the target \\(unreachable\\): removed source slot ${n}, source publication ${n}; not removed, on the target, if it comes back: subscription ${n}, `,
        ),
      );
      expect(await pair.source(held, [n])).toEqual([]);
      expect(await frozen(pair, 'source')).toBe(false);
      // Nothing is left to connect to: the passwords go.
      await expect(rt.store.secrets(m.id)).rejects.toThrow();
    } finally {
      await revive();
    }
    // What is left is on the target alone, as named.
    expect((await leftovers(pair)).sort()).toEqual([`target publication ${n}_rev`, `target subscription ${n}`]);
  });

  it('cleans up without the target after a cutover only once `pgferry unfreeze` made the source writable', async () => {
    pair = await freshPair(15, 'notargetco');
    rt = testRuntime();
    await loadSample(pair, 50);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    await advance(rt, m.id, { cutover: 'auto' });
    const n = `pgferry_${m.id}`;
    const revive = await killTarget(pair);
    try {
      // The application was switched to the target and the source is read-only: unfreeze decides that first.
      await expect(cleanupMigration(rt, m.id, { withoutTarget: true })).rejects.toMatchObject({
        name: 'InvalidInputError',
        field: '--without-target',
        hint: expect.stringContaining(`pgferry unfreeze --id ${m.id} --yes`),
      });
      expect(await frozen(pair, 'source')).toBe(true);
      await unfreezeMigration(rt, m.id);
      const cleaned = await cleanupMigration(rt, m.id, { withoutTarget: true });
      expect(cleaned.status).toBe('cleaned-up');
      expect(cleaned.warnings?.at(-1)).toMatch(
        new RegExp(
          // (Not the forward subscription: the switch dropped it. It was named all the same.)
          `^pgferry cleanup without the target \\(unreachable\\): removed source subscription ${n}_rev, source publication ${n}; not removed, on the target, if it comes back: replication slot ${n}_rev, publication ${n}_rev, `,
        ),
      );
      expect(await frozen(pair, 'source')).toBe(false);
    } finally {
      await revive();
    }
    expect((await leftovers(pair)).sort()).toEqual([`target publication ${n}_rev`, `target slot ${n}_rev`]);
    // Asked again: cleaned up already, naming what it left on the target (it said its secrets were missing).
    const again = await cleanupMigration(rt, m.id);
    expect(again.status).toBe('cleaned-up');
    expect(rt.logs.at(-1)).toMatch(
      new RegExp(
        `^migration ${m.id} was cleaned up already, without the target: not removed, on the target, if it comes back: replication slot ${n}_rev`,
      ),
    );
  });

  it('never moves a source sequence back when a rollback killed after its switch file named the source runs again', async () => {
    pair = await freshPair(15, 'seqagain');
    rt = testRuntime();
    await loadSample(pair, 50);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    await advance(rt, m.id, { cutover: 'auto' });
    // What a rollback killed right after rewriting the switch file leaves: target frozen, reverse stream
    // stopped, source writable and named by the switch file, the rollback begun but not recorded as done.
    const rev = `pgferry_${m.id}_rev`;
    await pair.target(`ALTER DATABASE ${pg.escapeIdentifier(pair.targetDb)} SET default_transaction_read_only = on`);
    await pair.source(`ALTER SUBSCRIPTION ${rev} DISABLE`);
    await pair.source(`ALTER DATABASE ${pg.escapeIdentifier(pair.sourceDb)} RESET default_transaction_read_only`);
    writeFileSync(rt.switchFile, `${pair.sourceUrl}\n`);
    const state = await rt.store.get(m.id);
    await rt.store.put({ ...state, rollback: { freezeAt: new Date().toISOString(), direction: 'reverse' } });
    // The application follows the file and writes to the source.
    const [{ last }] = (await pair.source(
      "SELECT max(v)::int AS last FROM (SELECT nextval('orders_id_seq') AS v FROM generate_series(1, 20)) s",
    )) as [{ last: number }];
    const rolled = await rollbackMigration(rt, m.id);
    expect(rolled.status).toBe('rolled-back');
    const [{ next }] = (await pair.source("SELECT nextval('orders_id_seq')::int AS next")) as [{ next: number }];
    expect(next).toBeGreaterThan(last);
  });
});
