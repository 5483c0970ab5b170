import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { openSession } from '../packages/cli/src/runner';
import { bulkLoad, catchUp, prepareSchema, sampleGate, startReplication } from '../packages/postgres/src/index';
import { migrationFixture, newMigration } from './harness/migration';
import type { Pair } from './harness/pairs';

const { setup } = migrationFixture();

/** The target's user tables without statistics, quoted as the state names them. */
const unanalyzed = async (p: Pair) =>
  (
    (await p.target(
      "SELECT format('%I.%I', schemaname, relname) AS t FROM pg_stat_user_tables WHERE last_analyze IS NULL AND schemaname = 'public' ORDER BY 1",
    )) as Array<{ t: string }>
  ).map((r) => r.t.replace(/^(\w+)\.(\w+)$/, '"$1"."$2"'));

/**
 * A migration whose every big table's build waits until the last row is in (each one ends after the
 * copy), its session, and a client on the target to hold locks with.
 */
async function builtAfterCopy(name: string, config: Parameters<typeof newMigration>[2]) {
  const { pair, rt } = await setup(name, 3000);
  let copyEnded = () => {};
  const ended = new Promise<void>((resolve) => {
    copyEnded = resolve;
  });
  rt.faults = { earlyBuild: () => ended, copyEnded: () => copyEnded() };
  const m = await newMigration(rt, pair, { cutover: 'manual', ...config });
  const session = await openSession(rt, m.id);
  const locker = new pg.Client({ connectionString: pair.targetUrl });
  locker.on('error', () => {});
  await locker.connect();
  return { pair, rt, m, session, ctx: session.ctx, locker };
}

describe('statistics of the tables built after the copy', () => {
  it('are left to catch-up, which gathers them while replication runs and keeps the gate closed until they are in', async () => {
    const { pair, rt, m, session, ctx, locker } = await builtAfterCopy('statsdefer', { catchUpTimeoutMs: 1500 });
    try {
      await prepareSchema(ctx);
      const summary = await bulkLoad(ctx);
      const deferred = ctx.state.tablesToAnalyze ?? [];
      expect(deferred).toContain('"public"."orders"');
      expect(summary).toContain('"public"."orders"');
      expect(summary).toMatch(/gathered while replication starts/);
      // The load gathered every other table's statistics (a partition's maybe through its parent's).
      const left = await unanalyzed(pair);
      expect(left).toContain('"public"."orders"');
      expect(deferred).toEqual(expect.arrayContaining(left));
      expect((await rt.store.get(m.id)).tablesToAnalyze?.sort()).toEqual([...deferred].sort());

      await startReplication(ctx);
      // ANALYZE waits behind a lock that lets the apply worker write: the gate stays closed, saying why.
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE orders IN SHARE UPDATE EXCLUSIVE MODE');
      const err = await catchUp(ctx).catch((e) => e);
      expect(err.name).toBe('LagTimeoutError');
      expect(err.message).toMatch(/statistics of "public"\."orders" are being gathered on the target/);
      // Even before a verify (foreign keys may be validated during it), statistics keep the gate closed.
      const before = await sampleGate(ctx, { wal: false }, { validation: 'background' });
      expect(before.waiting.join('; ')).toMatch(/statistics of "public"\."orders"/);
      await locker.query('COMMIT');

      expect(await catchUp(ctx)).toMatch(/not growing/);
      expect(await unanalyzed(pair)).toEqual([]);
      expect((await rt.store.get(m.id)).tablesToAnalyze).toBeUndefined();
      const after = await sampleGate(ctx, { wal: false }, { validation: 'background' });
      expect(after.waiting).toEqual([]);
    } finally {
      await locker.end();
      await session.close();
    }
  });

  it('are gathered again when the target ends their session (a restart, a failover): catch-up rides it out', async () => {
    // An outage longer than 3 s fails catch-up: the target's session ends once, and it answers at once.
    const { pair, rt, session, ctx, locker } = await builtAfterCopy('statsagain', { reconnectTimeoutMs: 3000 });
    try {
      await prepareSchema(ctx);
      await bulkLoad(ctx);
      expect(ctx.state.tablesToAnalyze).toContain('"public"."orders"');
      await startReplication(ctx);
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE orders IN SHARE UPDATE EXCLUSIVE MODE');
      const caughtUp = catchUp(ctx);
      caughtUp.catch(() => {});
      // Its ANALYZE waits behind the lock; the target ends that session (as a restart does).
      let pid: number | undefined;
      for (let i = 0; i < 200 && !pid; i++) {
        const [row] = (await pair.target(
          "SELECT pid FROM pg_stat_activity WHERE application_name LIKE '%:validate' AND wait_event_type = 'Lock'",
        )) as { pid: number }[];
        pid = row?.pid;
        if (!pid) await new Promise((r) => setTimeout(r, 25));
      }
      expect(pid).toBeDefined();
      await pair.target('SELECT pg_terminate_backend($1)', [pid]);
      await new Promise((r) => setTimeout(r, 300));
      await locker.query('COMMIT');
      // Gathered again on a new session, and the gate opens: no "did not answer for 3 s".
      expect(await caughtUp).toMatch(/not growing/);
      expect(await unanalyzed(pair)).toEqual([]);
      expect(rt.logs.join('\n')).toMatch(/lost the connection during catch-up/);
    } finally {
      await locker.end();
      await session.close();
    }
  });

  it('does not hold the report of a failed copy behind an index build: the builds are cancelled and none starts after it', async () => {
    const { pair, rt } = await setup('buildstop', 3000);
    // orders' build is held by a lock on the target while the copy of another table fails.
    const locker = new pg.Client({ connectionString: pair.targetUrl });
    locker.on('error', () => {});
    await locker.connect();
    const builds: string[] = [];
    rt.faults = {
      async earlyBuild(table) {
        builds.push(table);
        if (table !== '"public"."orders"') return;
        await locker.query('BEGIN');
        await locker.query('LOCK TABLE orders IN ROW EXCLUSIVE MODE');
      },
    };
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    const session = await openSession(rt, m.id);
    const release = setTimeout(() => void locker.query('ROLLBACK').catch(() => {}), 20_000);
    try {
      await prepareSchema(session.ctx);
      // Every other table's copy fails on the target, 2 s in: orders' rows are in by then, its build begun.
      await pair.target(`CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN PERFORM pg_sleep(2); RAISE EXCEPTION 'injected: this row cannot be written'; END $$;
        DO $$ DECLARE t regclass; BEGIN
          FOR t IN SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> 'orders' LOOP
            EXECUTE format('CREATE TRIGGER boom BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION boom()', t);
            EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER boom', t);
          END LOOP; END $$`);
      const started = Date.now();
      const err = await bulkLoad(session.ctx).catch((e) => e);
      const took = Date.now() - started;
      expect(String(err?.message ?? err)).toContain('injected: this row cannot be written');
      // Reported at once, not once the lock holding orders' build is let go (20 s).
      expect(took, `${took} ms`).toBeLessThan(8000);
      expect(builds[0]).toBe('"public"."orders"');
      // The build of orders was cancelled, and nothing of the builder runs on the target any more.
      const restoring = await pair.target(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgferry:%:pg_restore'",
      );
      expect(restoring).toEqual([]);
      expect(
        await pair.target(
          "SELECT count(*)::int AS n FROM pg_indexes WHERE tablename = 'orders' AND indexname = 'orders_pkey'",
        ),
      ).toEqual([{ n: 0 }]);
    } finally {
      clearTimeout(release);
      await locker.end();
      await session.close();
    }
  });
});
