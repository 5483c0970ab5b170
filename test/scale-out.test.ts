import { createRequire } from 'node:module';
import { objectNames, type PlannedCopy, type TaskOutput } from '@pgferry/core';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { openSession, type Runtime } from '../packages/cli/src/runner';
import { InProcessTaskCallbacks, runWorkerInProcess } from '../packages/cli/src/worker';
import {
  BULK_LOAD_STATES,
  bulkLoadStates,
  copyPlanStatus,
  splitIntoShares,
} from '../packages/core/src/workflow/bulk-load';
import { RECORD_FAILURE } from '../packages/core/src/workflow/states';
import { catchUp, prepareSchema, readCopyPlan, startReplication } from '../packages/postgres/src/index';
import { migrationFixture, newMigration, type TestRuntime } from './harness/migration';
import type { Pair } from './harness/pairs';

// aws-local-stepfunctions 3 uses Promise.withResolvers (Node 22); the tests run on Node 20 too.
const P = Promise as unknown as { withResolvers?: unknown };
P.withResolvers ??= <T>() => {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
};
const { StateMachine } = await import('aws-local-stepfunctions');
const require = createRequire(import.meta.url);
const aslValidator = require('asl-validator') as (d: object) => { isValid: boolean; errors: unknown[] };

const fixture = migrationFixture();

/** The bulk load's sub-graph in the smallest complete definition: success and failure ends. */
function definition() {
  return {
    Comment: 'bulk load scaled out over the copy workers',
    StartAt: BULK_LOAD_STATES.load,
    States: {
      ...bulkLoadStates('Loaded', 'Load failed'),
      Loaded: { Type: 'Succeed' },
      // The workflow's undo would follow: here the caught error is the execution's output.
      'Load failed': { Type: 'Pass', End: true },
      // Where the failure policy sends resumable errors (a server away for a while): recorded, not undone.
      [RECORD_FAILURE]: { Type: 'Pass', End: true },
    },
  };
}

const TABLES = ['customers', 'orders', 'invoices', 'events', 'audit_log', 'writes'];

/** Rows and a checksum of every row, in an order both sides agree on. */
async function fingerprint(p: Pair, side: 'source' | 'target', table: string) {
  const [row] = await p[side](
    `SELECT count(*)::int AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS sum FROM ${table} t`,
  );
  return row;
}

/** Updates, inserts and deletes on `orders` (a table split in ranges over both shares) until stopped. */
function churn(url: string) {
  let running = true;
  let commits = 0;
  const done: Promise<unknown> = (async () => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      while (running) {
        await c.query(`UPDATE orders SET amount = amount + 1 WHERE id IN (SELECT id FROM orders ORDER BY random() LIMIT 3);
          INSERT INTO orders (customer_id, amount) SELECT id, 1.5 FROM customers ORDER BY random() LIMIT 2;
          DELETE FROM orders WHERE id = (SELECT min(o.id) FROM orders o WHERE NOT EXISTS (SELECT FROM invoices i WHERE i.order_id = o.id))`);
        commits++;
      }
    } finally {
      await c.end();
    }
  })().catch((err: unknown) => err);
  return {
    commits: () => commits,
    /** Stops it; an error it met (the churn must run throughout) fails the test. */
    stop: async () => {
      running = false;
      const err = await done;
      if (err) throw err;
    },
  };
}

/** Runs the sub-graph with its worker tasks in this process, as the containers would run them. */
async function runBulkLoad(rt: Runtime, migrationId: string) {
  // One per container: each completes its own token.
  const callbacks: InProcessTaskCallbacks[] = [];
  const workers: Promise<unknown>[] = [];
  const worker = (input: unknown) => {
    const mine = new InProcessTaskCallbacks();
    callbacks.push(mine);
    const run = runWorkerInProcess(input, { rt, callbacks: mine, heartbeatMs: 50, pollMs: 50 });
    workers.push(run.catch(() => {}));
    return run as Promise<TaskOutput & Record<string, never>>;
  };
  const machine = new StateMachine(definition() as never, { validationOptions: { checkArn: false } });
  const execution = machine.run(
    { migrationId },
    {
      overrides: {
        taskResourceLocalHandlers: {
          [BULK_LOAD_STATES.hold]: worker,
          [BULK_LOAD_STATES.share]: worker,
          [BULK_LOAD_STATES.read]: async (input) => {
            const { Payload } = input as { Payload: { migrationId: string; loadId: string } };
            return { Payload: await readCopyPlan(rt.store, Payload) } as never;
          },
        },
        waitTimeOverrides: { [BULK_LOAD_STATES.wait]: 50 },
      },
      // What Step Functions puts in the context object that the sub-graph reads.
      context: {
        Execution: { Name: `local-${migrationId}` },
        State: { EnteredTime: new Date().toISOString() },
        Task: { Token: `token-${migrationId}` },
      } as never,
    },
  );
  const result = await execution.result.then(
    (output) => ({ ok: true as const, output }),
    (error: Error) => ({ ok: false as const, error }),
  );
  // The execution is over: a worker still running finds its heartbeat refused, as in AWS.
  for (const c of callbacks) c.gone = true;
  await Promise.all(workers);
  return { result, callbacks };
}

/** Every table's planned items, across all shares: each table whole once, or ctid ranges from block 0 to the end without gap or overlap. */
function coverage(items: PlannedCopy[]): string[] {
  const problems: string[] = [];
  const byTable = new Map<string, PlannedCopy[]>();
  for (const i of items) byTable.set(`${i.schema}.${i.name}`, [...(byTable.get(`${i.schema}.${i.name}`) ?? []), i]);
  for (const [table, parts] of byTable) {
    if (parts.some((p) => !p.blocks)) {
      if (parts.length !== 1) problems.push(`${table}: whole and in ranges, or twice`);
      continue;
    }
    const ranges = parts.map((p) => p.blocks!).sort((a, b) => a.from - b.from);
    if (ranges[0]!.from !== 0) problems.push(`${table}: first range starts at block ${ranges[0]!.from}`);
    for (let i = 0; i < ranges.length; i++) {
      const end = ranges[i]!.to;
      const next = ranges[i + 1];
      if (!next) {
        if (end !== undefined) problems.push(`${table}: last range ends at block ${end}, not open-ended`);
      } else if (end !== next.from) problems.push(`${table}: range ends at ${end}, next starts at ${next.from}`);
    }
  }
  return problems;
}

async function prepared(label: string) {
  const { pair, rt } = await fixture.setup(label, 3000);
  const writer = fixture.writer(rt);
  const m = await newMigration(rt as TestRuntime, pair, { copyWorkers: 2, jobs: 2, splitTableBytes: 32 * 1024 });
  const session = await openSession(rt, m.id);
  await prepareSchema(session.ctx).finally(() => session.close());
  return { pair, rt, writer, m };
}

describe('copy plan', () => {
  it('splits the items into shares of about equal bytes, each item once', () => {
    const items = [90, 10, 40, 40, 30, 30, 20, 5].map((estBytes, i) => ({ estBytes, i }));
    const shares = splitIntoShares(items, 3);
    expect(
      shares
        .flat()
        .map((x) => x.i)
        .sort(),
    ).toEqual(items.map((x) => x.i).sort());
    const bytes = shares.map((s) => s.reduce((sum, x) => sum + x.estBytes, 0));
    expect(Math.max(...bytes) - Math.min(...bytes)).toBeLessThanOrEqual(10);
    // No empty share: fewer items than workers means fewer shares.
    expect(splitIntoShares(items.slice(0, 2), 5)).toHaveLength(2);
    expect(splitIntoShares([], 4)).toEqual([[]]);
  });

  it('is ready for the Map only when it is this attempt’s, and has no iteration when copied in-process', () => {
    const share = { items: [], estBytes: 1 };
    const plan = { loadId: 'a', snapshot: 's', slotLsn: '0/1', plannedAt: '', shares: [share, share] };
    expect(copyPlanStatus({ id: 'm', copyPlan: plan }, 'b')).toMatchObject({ ready: false, shares: [] });
    expect(copyPlanStatus({ id: 'm', copyPlan: plan }, 'a')).toMatchObject({
      ready: true,
      failed: false,
      workers: 2,
      shares: [
        { migrationId: 'm', loadId: 'a', share: 0 },
        { migrationId: 'm', loadId: 'a', share: 1 },
      ],
    });
    const here = copyPlanStatus({ id: 'm', copyPlan: { ...plan, shares: [share], inProcess: true } }, 'a');
    expect(here).toMatchObject({ ready: true, shares: [], workers: 1 });
    const failed = { ...plan, shares: [share, { ...share, failedAt: 'now', failure: 'x' }] };
    expect(copyPlanStatus({ id: 'm', copyPlan: failed }, 'a').failed).toBe(true);
  });
});

describe('bulk load scaled out over two workers', () => {
  it('the sub-graph is valid ASL inside a complete definition', () => {
    const { isValid, errors } = aslValidator(definition());
    expect(errors).toEqual([]);
    expect(isValid).toBe(true);
  });

  it('loads every table inside one snapshot with no gap and no duplicate under a writer', async () => {
    const { pair, rt, writer, m } = await prepared('scale');
    const orders = churn(pair.sourceUrl);
    try {
      const before = orders.commits();
      const { result } = await runBulkLoad(rt, m.id);
      // The coordinator's summary is the state's output, for the console.
      expect(result).toMatchObject({
        ok: true,
        output: { bulkLoad: { summary: expect.stringMatching(/by 2 workers/) } },
      });
      // The source changed while the workers copied: the snapshot, not a quiet source, makes it exact.
      expect(orders.commits()).toBeGreaterThan(before);
      const state = await rt.store.get(m.id);
      const plan = state.copyPlan!;
      // Two workers copied, each its own share, in the coordinator's snapshot, and both reported.
      expect(plan.inProcess).toBeUndefined();
      expect(plan.shares).toHaveLength(2);
      for (const s of plan.shares) expect(s).toMatchObject({ doneAt: expect.any(String), rows: expect.any(Number) });
      expect(plan.shares.every((s) => s.items.length > 0)).toBe(true);
      expect(state.rowsCopied).toBe(plan.shares.reduce((sum, s) => sum + (s.rows ?? 0), 0));
      expect(state.dataLoadedAt).toBeDefined();
      expect(state.phases['bulk-load']?.endedAt).toBeDefined();
      // The ranges cover every copied table exactly once, and orders is split over both workers.
      const all = plan.shares.flatMap((s) => s.items);
      expect(coverage(all)).toEqual([]);
      const ordersIn = plan.shares.map((s) => s.items.filter((i) => i.name === 'orders').length);
      expect(ordersIn.every((n) => n > 0)).toBe(true);
      expect(new Set(all.map((i) => i.name))).toEqual(
        new Set(['customers', 'orders', 'invoices', 'events_2025', 'events_2026', 'audit_log', 'writes']),
      );
      // Replication from the slot's LSN brings everything committed after the snapshot, once.
      const session = await openSession(rt, m.id);
      try {
        await startReplication(session.ctx);
        expect(orders.commits()).toBeGreaterThan(0);
        await orders.stop();
        await writer.stop();
        await catchUp(session.ctx);
      } finally {
        await session.close();
      }
      for (const t of TABLES)
        expect(await fingerprint(pair, 'target', t), t).toEqual(await fingerprint(pair, 'source', t));
      // Run again (a redriven execution), the load is done: no copy, no Map iteration.
      const again = await runBulkLoad(rt, m.id);
      expect(again.result).toMatchObject({ ok: true, output: { bulkLoad: { summary: 'already done' } } });
      expect((await rt.store.get(m.id)).copyPlan).toMatchObject({ inProcess: true, shares: [] });
    } finally {
      await orders.stop();
    }
  });

  it('ends the load when a share fails (slot dropped, nothing counted as loaded), and a resume converges', async () => {
    const { pair, rt, m, writer } = await prepared('scalefail');
    // A share's COPY into orders breaks a check the target has and the source does not.
    await pair.target('ALTER TABLE orders ADD CONSTRAINT no_orders CHECK (amount < 0) NOT VALID');
    const { result, callbacks } = await runBulkLoad(rt, m.id);
    // The Parallel's Catch took it to the failure path, with the error's name for the undo to match.
    expect(result).toMatchObject({ ok: true, output: { error: { Error: 'BulkLoadFailedError' } } });
    expect(result.ok && JSON.stringify(result.output)).not.toContain(new URL(pair.sourceUrl).password);
    const state = await rt.store.get(m.id);
    expect(state.dataLoadedAt).toBeUndefined();
    expect(state.copyPlan?.shares.some((s) => s.failedAt && /no_orders/.test(s.failure ?? ''))).toBe(true);
    // The coordinator's token was failed with the share's error, without the connection's password.
    const failed = callbacks.flatMap((c) => [...c.completed.values()]).filter((c) => c.error);
    expect(failed.map((f) => f.error)).toContain('BulkLoadFailedError');
    for (const f of failed) expect(f.cause).not.toContain(new URL(pair.sourceUrl).password);
    expect(
      await pair.source('SELECT slot_name FROM pg_replication_slots WHERE slot_name = $1', [objectNames(m.id).slot]),
    ).toEqual([]);
    // Resumed once the cause is fixed (the source quiet, to compare), the load starts again on an
    // empty target and converges: no row of the failed attempt stays behind.
    await writer.stop();
    await pair.target('ALTER TABLE orders DROP CONSTRAINT no_orders');
    const again = await runBulkLoad(rt, m.id);
    expect(again.result).toMatchObject({ ok: true });
    for (const t of TABLES)
      expect(await fingerprint(pair, 'target', t), t).toEqual(await fingerprint(pair, 'source', t));
  });
});
