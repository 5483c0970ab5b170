import { CutoverFailedError, type MigrationConfigInput } from '@pgferry/core';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { startServer } from '../packages/cli/src/local-servers';
import { advance, cleanupMigration, openSession, rollbackMigration } from '../packages/cli/src/runner';
import { LiveWriter } from '../packages/cli/src/writer';
import type { Progress } from '../packages/postgres/src/index';
import {
  buildPostData,
  bulkLoad,
  catchUp,
  catchUpAndVerify,
  cleanup,
  connect,
  createSlotWithSnapshot,
  cutover,
  dropSlot,
  finishLoad,
  gateStep,
  indexBuildLimits,
  indexBuildMemoryMB,
  indexBuildSettings,
  indexBuildWorkers,
  listTables,
  newGateLoop,
  planCopy,
  planPostData,
  prepareSchema,
  sampleGate,
  startReplication,
  verify,
} from '../packages/postgres/src/index';
import { frozen, loadSample, newMigration, sleep, type TestRuntime, testRuntime } from './harness/migration';
import { freshPair, leftovers, type Pair, serverUrl, sql } from './harness/pairs';

let pair: Pair | undefined;
let rt: TestRuntime | undefined;
const writers: LiveWriter[] = [];

afterEach(async () => {
  for (const w of writers.splice(0)) await w.stop();
  await pair?.drop();
  rt?.dispose();
  pair = undefined;
  rt = undefined;
});

async function setup(label: string, rows = 500) {
  pair = await freshPair(15, label);
  rt = testRuntime();
  await loadSample(pair, rows);
  return { pair, rt };
}

async function count(p: Pair, side: 'source' | 'target', table: string): Promise<number> {
  return Number((await p[side](`SELECT count(*)::int AS n FROM ${table}`))[0]?.n);
}

/** A migration caught up under a live writer, and a connection to its target (to stall the apply with a lock). */
async function caughtUpWithLocker(label: string, extra: Partial<MigrationConfigInput>) {
  const { pair, rt } = await setup(label, 100);
  const writer = new LiveWriter({ switchFile: rt.switchFile, name: 'app', intervalMs: 1 });
  writer.start();
  writers.push(writer);
  const m = await newMigration(rt, pair, { cutover: 'manual', ...extra });
  await advance(rt, m.id, { cutover: 'manual' });
  // The verify before the switch done now, before the test stalls the apply (it would wait for it).
  const session = await openSession(rt, m.id);
  await catchUpAndVerify(session.ctx).finally(() => session.close());
  const locker = new pg.Client({ connectionString: pair.targetUrl });
  locker.on('error', () => {});
  await locker.connect();
  return { pair, rt, writer, m, locker };
}

describe('phases', () => {
  it('lets one of two migrations started at once into one empty target take it; the other restores nothing, and its rollback leaves the first one whole', async () => {
    const { pair, rt } = await setup('twoinone', 300);
    const [a, b] = [
      await newMigration(rt, pair, { cutover: 'manual' }),
      await newMigration(rt, pair, { cutover: 'manual' }),
    ];
    const [sa, sb] = [await openSession(rt, a.id), await openSession(rt, b.id)];
    let winner: typeof a | undefined;
    try {
      // Both find the target empty before either restores into it (pg_dump takes a while).
      const results = await Promise.allSettled([prepareSchema(sa.ctx), prepareSchema(sb.ctx)]);
      const ok = results.findIndex((r) => r.status === 'fulfilled');
      const refused = results.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
      winner = ok === 0 ? a : b;
      const loser = ok === 0 ? b : a;
      expect(refused?.reason.name).toBe('SchemaFailedError');
      expect(refused?.reason.message).toMatch(
        new RegExp(`is (taken by pgferry migration ${winner.id} \\(marked as its target\\)|not empty)`),
      );
      expect(refused?.reason.field).toBe('--target');
      await bulkLoad(ok === 0 ? sa.ctx : sb.ctx);
      // The refused one's rollback: its marker row was never written, so nothing of the other's goes.
      const rolled = await rollbackMigration(rt, loser.id);
      expect(rolled.status).toBe('rolled-back');
      expect(await count(pair, 'target', 'orders')).toBe(await count(pair, 'source', 'orders'));
      expect(await pair.target('SELECT id FROM pgferry.migration')).toEqual([{ id: winner.id }]);
    } finally {
      await sa.close();
      await sb.close();
    }
    const state = await advance(rt, winner.id, { cutover: 'auto' });
    expect(state.verify?.ok).toBe(true);
  });

  it('keeps what someone made on the target when the schema dump fails after the target was marked', async () => {
    const { pair, rt } = await setup('dumpfail', 100);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    const session = await openSession(rt, m.id);
    const { Client } = pg;
    // pg_dump waits for a lock on a source table until its session is ended.
    const locker = new Client({ connectionString: pair.sourceUrl });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE orders IN ACCESS EXCLUSIVE MODE');
      const preparing = prepareSchema(session.ctx).catch((e: unknown) => e);
      for (let i = 0; i < 400; i++) {
        const [row] = await pair.target("SELECT to_regclass('pgferry.migration') IS NOT NULL AS marked");
        if (row?.marked && (await pair.target('SELECT 1 FROM pgferry.migration')).length) break;
        await sleep(25);
      }
      // Meanwhile a DBA makes a schema and extensions on the target.
      await pair.target('CREATE SCHEMA dba_stuff; CREATE EXTENSION hstore; CREATE EXTENSION citext SCHEMA dba_stuff');
      for (let i = 0; i < 400; i++) {
        const ended = await pair.source(
          "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name LIKE 'pgferry:%pg_dump'",
        );
        if (ended.length) break;
        await sleep(25);
      }
      expect(await preparing).toBeInstanceOf(Error);
    } finally {
      await locker.end();
      await session.close();
    }
    const rolled = await rollbackMigration(rt, m.id);
    expect(rolled.status).toBe('rolled-back');
    // Before, the marker's restored list was null while pg_dump ran: the rollback took everything there for its own.
    expect(await pair.target("SELECT nspname FROM pg_namespace WHERE nspname = 'dba_stuff'")).toEqual([
      { nspname: 'dba_stuff' },
    ]);
    expect(
      await pair.target("SELECT extname FROM pg_extension WHERE extname IN ('hstore', 'citext') ORDER BY 1"),
    ).toEqual([{ extname: 'citext' }, { extname: 'hstore' }]);
    await pair.target('DROP SCHEMA dba_stuff CASCADE; DROP EXTENSION hstore');
  });

  it('converges when every phase is run again, including a bulk load interrupted half way', async () => {
    const { pair, rt } = await setup('rerun', 2000);
    // The source was once a pgferry target: its marker schema stays out of the dump.
    await pair.source('CREATE SCHEMA pgferry; CREATE TABLE pgferry.migration (id text PRIMARY KEY)');
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    const session = await openSession(rt, m.id);
    const { ctx } = session;
    try {
      expect(await prepareSchema(ctx)).toMatch(/schema restored/);
      // Pretend the pre-data transaction did not commit, and that someone then created an extension
      // on the target: the restore runs again, because none of the source's tables is there.
      await pair.target(`DROP SCHEMA public CASCADE; CREATE SCHEMA public; CREATE EXTENSION pgcrypto;
        UPDATE pgferry.migration SET pre_data_at = NULL`);
      expect(await prepareSchema(ctx)).toMatch(/schema restored/);
      expect(await pair.target("SELECT to_regclass('public.orders') IS NOT NULL AS there")).toEqual([{ there: true }]);
      expect(await prepareSchema(ctx)).toMatch(/already done/);
      await bulkLoad(ctx);
      // Pretend the process died mid-copy: the load is not recorded and the target holds extra rows.
      await pair.target("INSERT INTO audit_log (actor, action) VALUES ('junk', 'half-copied')");
      await ctx.update((s) => {
        s.dataLoadedAt = undefined;
        s.phases['bulk-load'] = { startedAt: new Date().toISOString() };
      });
      await bulkLoad(ctx);
      expect(rt.logs.some((l) => /did not finish: dropping its slot/.test(l))).toBe(true);
      for (const t of ['customers', 'orders', 'invoices', 'events', 'audit_log', 'writes']) {
        expect(await count(pair, 'target', t)).toBe(await count(pair, 'source', t));
      }
      expect(await buildPostData(ctx)).toMatch(/already done/);
      await startReplication(ctx);
      expect(await startReplication(ctx)).toMatch(/already done/);
      await pair.source('INSERT INTO orders (customer_id, amount) VALUES (1, 9.99)');
      await catchUp(ctx);
      await catchUp(ctx);
      // A crash between freeze and switch: the source was left frozen with the cutover half-recorded.
      await pair.source(`ALTER DATABASE ${pair.sourceDb} SET default_transaction_read_only = on`);
      await ctx.update((s) => {
        s.cutover = { freezeAt: new Date().toISOString() };
      });
      await cutover(ctx);
      expect(rt.logs.some((l) => /stopped before the switch: unfreezing the source/.test(l))).toBe(true);
      expect(await cutover(ctx)).toMatch(/already done/);
      expect(await verify(ctx)).toMatch(/checksums match/);
      expect(await cleanup(ctx)).toMatch(/nothing left behind/);
      expect(await cleanup(ctx)).toMatch(/already clean/);
      expect(await leftovers(pair)).toEqual([]);
    } finally {
      await session.close();
    }
  });

  it('unfreezes the source on resume after a crash inside the write gap, even with --cutover manual', async () => {
    const { pair, rt } = await setup('gapcrash', 100);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    // What a kill -9 between the freeze and the switch leaves: a frozen source, a half-recorded cutover.
    await pair.source(`ALTER DATABASE ${pair.sourceDb} SET default_transaction_read_only = on`);
    const before = await rt.store.get(m.id);
    await rt.store.put({
      ...before,
      status: 'running',
      phase: 'cutover',
      cutover: { freezeAt: new Date().toISOString() },
    });
    const { describeState } = await import('../packages/cli/src/output');
    expect(describeState(await rt.store.get(m.id))).toContain('the source may still be frozen');
    const resumed = await advance(rt, m.id, { cutover: 'manual' });
    expect(resumed.status).toBe('awaiting-cutover');
    expect(await frozen(pair, 'source')).toBe(false);
    await pair.source('INSERT INTO orders (customer_id, amount) VALUES (1, 1)'); // the source takes writes again
    const done = await advance(rt, m.id, { cutover: 'now' });
    expect(done.verify?.ok).toBe(true);
  });

  it('replicates REPLICA IDENTITY FULL and USING INDEX tables, unchanged TOAST values, generated, identity and partitioned columns', async () => {
    const { pair, rt } = await setup('ident', 300);
    await pair.source(
      'CREATE TABLE by_index (a int NOT NULL, b text, c text); CREATE UNIQUE INDEX by_index_a ON by_index (a)',
    );
    await pair.source('ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_a');
    await pair.source("INSERT INTO by_index SELECT g, 'b' || g, repeat('x', 5000) FROM generate_series(1, 50) g");
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    const waiting = await advance(rt, m.id, { cutover: 'manual' });
    expect(waiting.status).toBe('awaiting-cutover');

    // Changes while replicating: updates that leave big (TOASTed) values unchanged, deletes by identity.
    await pair.source("UPDATE customers SET name = name || ' (renamed)' WHERE notes IS NOT NULL");
    await pair.source("UPDATE audit_log SET action = 'changed' WHERE actor = 'u1'");
    await pair.source("DELETE FROM audit_log WHERE actor = 'u2'");
    await pair.source("UPDATE by_index SET b = 'updated' WHERE a <= 10");
    await pair.source('DELETE FROM by_index WHERE a > 40');
    await pair.source('INSERT INTO orders (customer_id, amount) VALUES (1, 100.00)');
    await pair.source("INSERT INTO events (at, kind) VALUES ('2026-03-01', 'late')");
    const state = await advance(rt, m.id, { cutover: 'now' });
    expect(state.verify?.ok).toBe(true);

    const notes = await pair.target(
      "SELECT count(*)::int AS n FROM customers WHERE name LIKE '%(renamed)' AND length(notes) > 1000",
    );
    expect(notes[0]?.n).toBe(
      Number((await pair.source('SELECT count(*)::int AS n FROM customers WHERE notes IS NOT NULL'))[0]?.n),
    );
    expect(
      (await pair.target("SELECT count(*)::int AS n FROM by_index WHERE b = 'updated' AND length(c) = 5000"))[0]?.n,
    ).toBe(10);
    expect(await count(pair, 'target', 'by_index')).toBe(40);
    expect((await pair.target('SELECT amount_with_tax FROM orders WHERE amount = 100.00'))[0]?.amount_with_tax).toBe(
      120,
    );
    expect(await count(pair, 'target', 'events_2026')).toBe(1);
    expect(await count(pair, 'target', 'audit_log')).toBe(await count(pair, 'source', 'audit_log'));
    await cleanupMigration(rt, m.id);
  });

  it('builds an index whose function reads another table only once every table is loaded', async () => {
    const { pair, rt } = await setup('fnidx', 3000);
    // A function that claims IMMUTABLE but reads a table, used by an index on the biggest table: built
    // during the copy it could see an empty regions table and fail; pg_restore's own order never would.
    await pair.source(`CREATE TABLE regions (code int PRIMARY KEY, name text NOT NULL);
      INSERT INTO regions SELECT g, 'region ' || g FROM generate_series(1, 5) g;
      CREATE FUNCTION region_name(int) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
        DECLARE r text; BEGIN SELECT name INTO r FROM public.regions WHERE code = $1;
          IF r IS NULL THEN RAISE EXCEPTION 'unknown region %', $1; END IF; RETURN r; END $$;
      CREATE INDEX orders_region_idx ON orders (region_name(customer_id % 5 + 1));`);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    const session = await openSession(rt, m.id);
    try {
      await prepareSchema(session.ctx);
      const plan = await planPostData(session.ctx);
      const orders = Number((await pair.source("SELECT 'orders'::regclass::oid::int8 AS oid"))[0]?.oid);
      const early = (plan.byTable.get(orders) ?? []).join('\n');
      expect(early).toContain('orders_pkey');
      expect(early).not.toContain('orders_region_idx');
    } finally {
      await session.close();
    }
    const state = await advance(rt, m.id, { cutover: 'now' });
    expect(state.verify?.ok).toBe(true);
    expect(
      await pair.target("SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_region_idx'::regclass"),
    ).toEqual([{ indisvalid: true }]);
    // Every table has statistics, orders (analyzed during the copy or not) for the late index as well.
    expect(
      await pair.target(
        "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NULL AND schemaname = 'public' ORDER BY 1",
      ),
    ).toEqual([]);
    expect(
      (await pair.target("SELECT count(*)::int AS n FROM pg_stats WHERE tablename = 'orders_region_idx'"))[0]?.n,
    ).toBeGreaterThan(0);
    // The big tables were analyzed as soon as their indexes were built (during the copy, or by catch-up
    // for those built after it ended), all but orders, whose late expression index needed it analyzed
    // at the end of the load.
    const summary = state.phases['bulk-load']?.summary ?? '';
    const [, built, analyzedEarly] =
      /indexes of (\d+) big tables built during the copy \((\d+) analyzed then too\)/.exec(summary) ?? [];
    const later = /statistics of (.*) gathered while replication starts/.exec(summary)?.[1]?.split(', ') ?? [];
    expect(later).not.toContain('"public"."orders"');
    expect(Number(built)).toBeGreaterThan(1);
    expect(Number(analyzedEarly) + later.length).toBe(Number(built) - 1);
    await cleanupMigration(rt, m.id);
  });

  it('fails naming an index or constraint whose name something else took on the target, and leaves nothing behind', async () => {
    const { pair, rt } = await setup('clash', 3000);
    // During the copy (orders is big enough for its indexes to be built early), then at the end.
    for (const [earlyIndexBytes, clash, named, asIndex] of [
      [64 * 1024, 'orders_pkey', /missing .*: CONSTRAINT public orders orders_pkey .*"orders_pkey" already exists/],
      [1024 ** 4, 'orders_customer_idx', /missing .*: INDEX public orders_customer_idx .*already exists/],
      // The name taken by an index on some other table.
      [1024 ** 4, 'orders_customer_idx', /missing .*: INDEX public orders_customer_idx .*already exists/, true],
    ] as const) {
      const m = await newMigration(rt, pair, { cutover: 'manual', earlyIndexBytes });
      const session = await openSession(rt, m.id);
      try {
        await prepareSchema(session.ctx);
      } finally {
        await session.close();
      }
      // Someone else's object on the target takes the name; pg_restore only says "already exists",
      // which a re-run after a crash also says of pgferry's own objects.
      await pair.target(
        asIndex
          ? `CREATE TABLE public.someone_elses (x int); CREATE INDEX ${clash} ON public.someone_elses (x)`
          : `CREATE TABLE public.${clash} (x int)`,
      );
      await expect(advance(rt, m.id, { cutover: 'manual' })).rejects.toThrow(named);
      const state = await rt.store.get(m.id);
      expect(state?.status).toBe('rolled-back');
      expect(state?.failure?.phase).toBe('bulk-load');
      expect(await leftovers(pair)).toEqual([]);
      expect(await frozen(pair, 'source')).toBe(false);
      // Someone else's table is kept, and public with it (what pgferry loaded there too), named.
      const stranger = asIndex ? 'someone_elses' : clash;
      expect(state?.events.map((e) => e.message).join('\n')).toContain(
        `kept everything pgferry loaded on the target (schemas public), since "public"."${stranger}"`,
      );
      expect(await pair.target(`SELECT to_regclass('public.${stranger}')::text AS t`)).toEqual([{ t: stranger }]);
      // The next round starts from an empty target again (PostgreSQL 15's public).
      await pair.target(
        'DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION pg_database_owner; GRANT USAGE ON SCHEMA public TO PUBLIC',
      );
    }
  });

  it('copies values exactly whatever the source database sets for dates, floats, intervals and time zones', async () => {
    const { pair, rt } = await setup('awkward', 10);
    // Settings of the source database that change how values are written as text.
    for (const setting of [
      "datestyle = 'SQL, DMY'",
      'extra_float_digits = 0',
      "intervalstyle = 'sql_standard'",
      "timezone = 'Asia/Kolkata'",
    ])
      await pair.source(`ALTER DATABASE ${pair.sourceDb} SET ${setting}`);
    // The enum makes the table go as text; reg* and tsquery go as text whatever the table.
    await pair.source(`CREATE TYPE mood AS ENUM ('ok', 'meh');
      CREATE TABLE awkward (id int PRIMARY KEY, m mood, d date, ts timestamp, tz timestamptz, f8 float8, f4 float4,
                            iv interval, rc regclass, rt regtype, q tsquery);
      INSERT INTO awkward VALUES (1, 'ok', '2020-02-01', '2020-03-04 05:06', '2024-06-13 12:00+00', 0.30000000000000004,
                                  3.4028235e+38, '-1 days -02:03:04', 'public.orders', 'public.mood', '');
      CREATE TABLE plain (id int PRIMARY KEY, rc regclass, q tsquery);
      INSERT INTO plain VALUES (1, 'public.customers', '');
      CREATE SEQUENCE huge START 9007199254740990; SELECT nextval('huge') FROM generate_series(1, 4);
      CREATE SEQUENCE restarted; SELECT nextval('restarted') FROM generate_series(1, 3); ALTER SEQUENCE restarted RESTART WITH 500`);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    const state = await advance(rt, m.id, { cutover: 'auto' });
    expect(state.verify?.ok).toBe(true);
    // ISO literals read the same under any DateStyle; float literals exactly.
    expect(
      await pair.target(`SELECT m = 'ok' AND d = '2020-02-01'::date AND ts = '2020-03-04 05:06'::timestamp
          AND tz = '2024-06-13 12:00+00'::timestamptz AND f8 = 0.30000000000000004::float8 AND f4 = 3.4028235e+38::float4
          AND iv = '-1 days -02:03:04'::interval AND rc = 'public.orders'::regclass AND rt = 'public.mood'::regtype
          AND q = ''::tsquery AS same FROM awkward`),
    ).toEqual([{ same: true }]);
    expect(
      await pair.target(`SELECT rc = 'public.customers'::regclass AND q = ''::tsquery AS same FROM plain`),
    ).toEqual([{ same: true }]);
    // A sequence past 2^53 is synced to the exact value.
    expect(await pair.target('SELECT last_value::text AS v FROM huge')).toEqual([{ v: '9007199254740993' }]);
    // A RESTARTed sequence (not called since) hands out its restart value next, on the target too.
    expect(await pair.target("SELECT nextval('restarted')::int AS v")).toEqual([{ v: 500 }]);
  });

  it('sends wide char(n) columns without their padding, and the target stores every value exactly', async () => {
    const { pair, rt } = await setup('unpadded', 10);
    // Past the 8 MiB below which tables are copied as they are. `wide` is mostly blanks, `code` is
    // full, `bare` (bpchar without a length) keeps trailing blanks as data.
    await pair.source(`CREATE TABLE padded (id int PRIMARY KEY, wide char(150), code char(2), bare bpchar, n int);
      INSERT INTO padded
      SELECT g, CASE g % 6 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN 'abc' WHEN 3 THEN 'trailing   '
                           WHEN 4 THEN ' é日本 ' || g ELSE repeat('x', 150) END,
             'A' || (g % 10), 'b' || g || '  ', g
        FROM generate_series(1, 60000) g;
      ANALYZE padded;
      -- Sends three times what it holds: binary smallint is 6 bytes on the wire, 2 on disk.
      CREATE TABLE narrow (id int PRIMARY KEY, ${Array.from({ length: 30 }, (_, i) => `s${i} smallint DEFAULT ${i}`).join(', ')});
      INSERT INTO narrow (id) SELECT generate_series(1, 30000)`);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    const { ctx } = await openSession(rt, m.id);
    const table = (await listTables(ctx.source)).find((t) => t.name === 'padded');
    expect(table?.heapBytes).toBeGreaterThan(8 * 1024 ** 2);
    const items = await planCopy(ctx, table ? [table] : []);
    expect(items.length).toBeGreaterThan(1); // split into ranges (the harness's small split size)
    expect(items.every((i) => i.unpadded?.join() === 'wide')).toBe(true);
    // Progress counts what the source holds: it never goes back while ranges copy side by side, never
    // passes the total, and ends at it although far fewer bytes travel.
    const copyProgress: Progress[] = [];
    rt.events.progress = (p) => {
      if (p.step === 'copy') copyProgress.push(p);
    };
    const state = await advance(rt, m.id, { cutover: 'auto' });
    expect(state.verify?.ok).toBe(true);
    const dones = copyProgress.map((p) => p.done);
    expect(dones.length).toBeGreaterThan(10);
    expect(dones.every((d, i) => i === 0 || d >= (dones[i - 1] ?? 0))).toBe(true);
    expect(copyProgress.every((p) => p.done <= p.total)).toBe(true);
    const last = copyProgress.at(-1);
    expect(last?.done).toBe(last?.total);
    // The stored bytes, blanks included, are the source's.
    const digest = `SELECT count(*)::int AS n, md5(string_agg(coalesce(encode(bpcharsend(wide), 'hex'), 'null') || ':' ||
        encode(bpcharsend(code), 'hex') || ':' || encode(bpcharsend(bare), 'hex'), ',' ORDER BY id)) AS d,
        count(*) FILTER (WHERE octet_length(wide) = 150)::int AS full150 FROM padded`;
    const [source] = await pair.source(digest);
    expect(source?.full150).toBe(40000); // padded to 150 bytes: all but the NULLs and the multibyte values
    expect(await pair.target(digest)).toEqual([source]);
    expect(await pair.target('SELECT bare FROM padded WHERE id = 7')).toEqual([{ bare: 'b7  ' }]);

    // COPY's own output needs no privilege on bpcharsend, a query calling it does: a source that
    // revoked it from PUBLIC is copied as before, with the padding.
    const { serverUrl } = await import('./harness/pairs');
    const role = `unpad_${pair.sourceDb.slice(-8)}`;
    await pair.source(`CREATE ROLE ${role} LOGIN PASSWORD 'pw'; GRANT SELECT ON padded TO ${role};
      REVOKE EXECUTE ON FUNCTION pg_catalog.bpcharsend(bpchar) FROM PUBLIC`);
    try {
      const limited = { ...pair, sourceUrl: serverUrl(pair.sourceServer, pair.sourceDb, role, 'pw') };
      const m2 = await newMigration(rt, limited, { cutover: 'manual' });
      const session = await openSession(rt, m2.id);
      try {
        const plain = await planCopy(session.ctx, table ? [table] : []);
        expect(plain.length).toBe(items.length);
        expect(plain.every((i) => i.unpadded === undefined)).toBe(true);
        expect(
          rt.logs.some((l) => /copied with their padding \(.*permission denied for function bpcharsend/.test(l)),
        ).toBe(true);
      } finally {
        await session.close();
      }
    } finally {
      await pair.source(`DROP OWNED BY ${role}; DROP ROLE ${role}`);
    }
  });

  it('stops every copy stream at the first failure instead of copying on', async () => {
    const { pair, rt } = await setup('stopcopy', 10);
    // `bad` is the biggest table, so it is copied first, and the target refuses it from row 20,000 on.
    await pair.source(`CREATE TABLE bad (id int PRIMARY KEY, pad text);
      INSERT INTO bad SELECT g, repeat('b', 60) FROM generate_series(1, 300000) g;
      ${[1, 2, 3, 4].map((i) => `CREATE TABLE big${i} (id int PRIMARY KEY, v text); INSERT INTO big${i} SELECT g, repeat('v', 40) FROM generate_series(1, 150000) g;`).join('\n')}
      ANALYZE`);
    const m = await newMigration(rt, pair, { cutover: 'manual', jobs: 2, splitTableBytes: 1024 ** 3 });
    const { ctx } = await openSession(rt, m.id);
    await prepareSchema(ctx);
    await pair.target('ALTER TABLE bad ADD CHECK (id < 20000) NOT VALID');
    await expect(bulkLoad(ctx)).rejects.toThrow(/check constraint/);
    const copied = async () =>
      Number(
        (
          await pair.target(
            'SELECT (SELECT count(*) FROM big1) + (SELECT count(*) FROM big2) + (SELECT count(*) FROM big3) + (SELECT count(*) FROM big4) AS n',
          )
        )[0]?.n,
      );
    const atFailure = await copied();
    await sleep(1500);
    // No copy session is left, nothing more arrives, and the other tables were not all copied.
    expect(
      await pair.target("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE '%:copy'"),
    ).toEqual([{ n: 0 }]);
    expect(await copied()).toBe(atFailure);
    expect(atFailure).toBeLessThan(600000);
  });

  it('verifies a LATIN1 source against a UTF8 target by the text, not the bytes', async () => {
    const { pair, rt } = await setup('latin1', 1);
    const { sql, serverUrl } = await import('./harness/pairs');
    const db = `${pair.sourceDb}_l1`;
    await sql(
      serverUrl(pair.sourceServer),
      `CREATE DATABASE ${db} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`,
    );
    const url = serverUrl(pair.sourceServer, db);
    try {
      await sql(
        url,
        `CREATE TABLE names (id int PRIMARY KEY, n text); INSERT INTO names VALUES (1, 'Zoë'), (2, 'Ångström');
         CREATE TABLE tags (k text PRIMARY KEY, v int); INSERT INTO tags SELECT 'étiquette ' || g, g FROM generate_series(1, 60000) g`,
      );
      const latin = { ...pair, sourceDb: db, sourceUrl: url, source: (t: string, p?: unknown[]) => sql(url, t, p) };
      const m = await newMigration(rt, latin, { cutover: 'auto' });
      const state = await advance(rt, m.id, { cutover: 'auto' });
      expect(state.verify?.ok).toBe(true);
      expect(await pair.target('SELECT n FROM names ORDER BY id')).toEqual([{ n: 'Zoë' }, { n: 'Ångström' }]);
      // A text key hashed as UTF-8 on both sides: its rows fall in the same chunks and parts on both, none
      // followed one by one (hashed as each server's bytes, both chunks differed at every verify).
      for (const v of [state.verifyBeforeSwitch, state.verify]) {
        const tags = v?.tables.find((t) => t.table === 'public.tags');
        expect(tags).toMatchObject({ outcome: 'ok', sourceRows: 60000, chunks: 2 });
        expect(tags?.rowsFollowed).toBeUndefined();
      }
      await cleanupMigration(rt, m.id);
    } finally {
      await sql(serverUrl(pair.sourceServer), `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    }
  });

  it('migrates quoted and 63-character identifiers', async () => {
    pair = await freshPair(16, 'idents');
    rt = testRuntime();
    const long = 'a'.repeat(63);
    await pair.source(
      `CREATE SCHEMA "Mixed ""Schema"""; CREATE TABLE "Mixed ""Schema"""."Table With Space" ("Id" int PRIMARY KEY, "Value" text)`,
    );
    await pair.source(`CREATE TABLE "${long}" ("${long}" int PRIMARY KEY, v text)`);
    await pair.source(
      `INSERT INTO "Mixed ""Schema"""."Table With Space" SELECT g, 'v' || g FROM generate_series(1, 100) g`,
    );
    await pair.source(`INSERT INTO "${long}" SELECT g, 'v' FROM generate_series(1, 100) g`);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    await pair.source(`UPDATE "Mixed ""Schema"""."Table With Space" SET "Value" = 'changed' WHERE "Id" = 1`);
    await pair.source(`INSERT INTO "${long}" VALUES (101, 'new')`);
    const state = await advance(rt, m.id, { cutover: 'now' });
    expect(state.verify?.ok).toBe(true);
    expect(
      (await pair.target(`SELECT "Value" FROM "Mixed ""Schema"""."Table With Space" WHERE "Id" = 1`))[0]?.Value,
    ).toBe('changed');
    expect(await count(pair, 'target', `"${long}"`)).toBe(101);
  });

  it('survives idle_in_transaction_session_timeout on the source', async () => {
    const { pair, rt } = await setup('idle', 3000);
    await pair.source(`ALTER DATABASE ${pair.sourceDb} SET idle_in_transaction_session_timeout = '50ms'`);
    const m = await newMigration(rt, pair, { cutover: 'auto', jobs: 1, splitTableBytes: 16 * 1024 });
    const state = await advance(rt, m.id, { cutover: 'auto' });
    expect(state.verify?.ok).toBe(true);
  });

  it('keeps the exported snapshot importable while the source ends idle sessions and idle transactions', async () => {
    const { pair } = await setup('idlesnap', 10);
    await pair.source(
      `ALTER DATABASE ${pair.sourceDb} SET idle_in_transaction_session_timeout = '50ms';
       ALTER DATABASE ${pair.sourceDb} SET idle_session_timeout = '50ms'`,
    );
    const db = await connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test' });
    try {
      const exported = await createSlotWithSnapshot(db, pair.sourceUrl, 'pgferry_idlesnap', {
        applicationName: 'pgferry:test:slot',
        timeoutMs: 10_000,
        log: () => {},
        major: 15,
      });
      try {
        // Far longer than either timeout: the exporting session sits idle in its transaction, as during a copy.
        await sleep(400);
        const rows = await db.withClient(async (c) => {
          await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
          await c.query(`SET TRANSACTION SNAPSHOT '${exported.snapshot}'`);
          await sleep(200);
          const r = await c.query('SELECT count(*)::int AS n FROM customers');
          await c.query('COMMIT');
          return r.rows;
        });
        expect(rows[0]?.n).toBeGreaterThan(0);
      } finally {
        await exported.close();
        await dropSlot(db, 'pgferry_idlesnap');
      }
    } finally {
      await db.end();
    }
  });

  it('names the long transaction that keeps the slot from being created, and leaves nothing behind', async () => {
    const { pair, rt } = await setup('longtx', 100);
    const { Client } = (await import('pg')).default;
    const blocker = new Client({ connectionString: pair.sourceUrl, application_name: 'batch-job' });
    await blocker.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query("INSERT INTO audit_log (actor, action) VALUES ('batch', 'long')");
      const pid = (await blocker.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      const m = await newMigration(rt, pair, { cutover: 'manual', slotWaitTimeoutMs: 2500 });
      const err = await advance(rt, m.id, { cutover: 'manual' }).catch((e) => e);
      expect(err.message).toMatch(
        new RegExp(`open transaction\\(s\\) on the source hold it back: pid ${pid} \\(user postgres, batch-job`),
      );
      expect(
        rt.logs.some((l) => l.includes(`waiting for 1 open transaction(s) on the source to finish: pid ${pid}`)),
      ).toBe(true);
      const state = await rt.store.get(m.id);
      expect(state.status).toBe('rolled-back');
      expect(state.failure?.phase).toBe('bulk-load');
    } finally {
      await blocker.query('ROLLBACK').catch(() => {});
      await blocker.end();
    }
    expect(await leftovers(pair)).toEqual([]);
    expect(await frozen(pair, 'source')).toBe(false);
  });

  it('closes the cutover gate on DDL run on the source (columns, indexes, constraints), naming it, until the target matches', async () => {
    const { pair, rt } = await setup('ddl', 100);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    await pair.source('ALTER TABLE orders ADD COLUMN gift_note text');
    const session = await openSession(rt, m.id);
    try {
      const closed = await sampleGate(session.ctx, { wal: false });
      expect(closed.reasons).toContain(
        'DDL on the source: column public.orders.gift_note (text) exists on the source but not on the target',
      );
      await pair.target('ALTER TABLE orders ADD COLUMN gift_note text');
      expect((await sampleGate(session.ctx, { wal: false })).reasons).toEqual([]);

      // Indexes and constraints too: a unique index missing on the target would let it take rows the
      // source refuses.
      await pair.source('CREATE UNIQUE INDEX orders_gift_note_key ON orders (gift_note)');
      await pair.source("ALTER TABLE customers ADD CONSTRAINT name_not_blank CHECK (name <> '') NOT VALID");
      await pair.source('DROP INDEX orders_customer_idx');
      expect((await sampleGate(session.ctx, { wal: false })).reasons.sort()).toEqual([
        'DDL on the source: check constraint name_not_blank on public.customers exists on the source but not on the target',
        'DDL on the source: index public.orders_customer_idx on public.orders exists on the target but was dropped on the source',
        'DDL on the source: unique index public.orders_gift_note_key on public.orders exists on the source but not on the target',
      ]);
      await pair.target('CREATE UNIQUE INDEX orders_gift_note_key ON orders (gift_note)');
      await pair.target("ALTER TABLE customers ADD CONSTRAINT name_not_blank CHECK (name <> '') NOT VALID");
      await pair.target('DROP INDEX orders_customer_idx');
      await pair.source('ALTER TABLE customers VALIDATE CONSTRAINT name_not_blank');
      expect((await sampleGate(session.ctx, { wal: false })).reasons).toEqual([
        'DDL on the source: check constraint name_not_blank on public.customers is valid on the source but not valid on the target',
      ]);
      await pair.target('ALTER TABLE customers VALIDATE CONSTRAINT name_not_blank');
      expect((await sampleGate(session.ctx, { wal: false })).reasons).toEqual([]);

      // A table created on both sides agrees in schema but is not in the publication: its rows would stay behind.
      const coupons = 'CREATE TABLE coupons (code text PRIMARY KEY, pct int)';
      await pair.source(coupons);
      await pair.target(coupons);
      await pair.source("INSERT INTO coupons VALUES ('WINTER', 10)");
      const sub = `pgferry_${m.id}`;
      expect((await sampleGate(session.ctx, { wal: false })).reasons).toEqual([
        `table public.coupons is not replicated (created on the source after the load): on the source run ALTER PUBLICATION "${sub}" ADD TABLE "public"."coupons", then on the target ALTER SUBSCRIPTION "${sub}" REFRESH PUBLICATION (which copies its rows); or drop it`,
      ]);
      await pair.source(`ALTER PUBLICATION "${sub}" ADD TABLE coupons`);
      expect((await sampleGate(session.ctx, { wal: false })).reasons).toEqual([
        `table public.coupons is published but the target does not replicate it yet: on the target run ALTER SUBSCRIPTION "${sub}" REFRESH PUBLICATION`,
      ]);
      // A sequence the target lacks would fail the write gap's sequence sync: it closes the gate instead.
      await pair.source('CREATE SEQUENCE coupon_numbers');
      // (Only the cutover needs it: a --cutover manual migration stops caught up all the same, naming it.)
      expect((await sampleGate(session.ctx, { wal: false })).beforeCutover).toEqual([
        'sequence public.coupon_numbers exists on the source but not on the target (created after the load): create it on the target too (the cutover copies its value)',
      ]);
      await pair.target('CREATE SEQUENCE coupon_numbers');
      await pair.target(`ALTER SUBSCRIPTION "${sub}" REFRESH PUBLICATION`);
      await expect
        .poll(
          async () => {
            const g = await sampleGate(session.ctx, { wal: false });
            return [...g.reasons, ...g.beforeCutover];
          },
          { timeout: 20_000 },
        )
        .toEqual([]);
    } finally {
      await session.close();
    }
    await pair.source("INSERT INTO orders (customer_id, amount, gift_note) VALUES (1, 5, 'with love')");
    const state = await advance(rt, m.id, { cutover: 'now' });
    expect(state.verify?.ok).toBe(true);
    expect((await pair.target("SELECT count(*)::int AS n FROM orders WHERE gift_note = 'with love'"))[0]?.n).toBe(1);
    expect(await pair.target('SELECT code, pct FROM coupons')).toEqual([{ code: 'WINTER', pct: 10 }]);
  });

  it('reports a failure to prepare the cutover as a cutover failure: nothing frozen, nothing prepared left, the load kept', async () => {
    const { pair, rt } = await setup('prepfail', 100);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    // A sequence made on the source after the gate looked: the sync before the freeze cannot set it.
    await pair.source("CREATE SEQUENCE only_here; SELECT nextval('only_here')");
    const session = await openSession(rt, m.id);
    try {
      const err = await cutover(session.ctx).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CutoverFailedError);
      expect((err as Error).message).toMatch(/^preparing the cutover failed; nothing was frozen: /);
      expect((err as CutoverFailedError).hint).toMatch(/every source sequence must exist on the target/);
      expect(await frozen(pair, 'source')).toBe(false);
      expect(
        await pair.source('SELECT count(*)::int AS n FROM pg_subscription WHERE subname = $1', [`pgferry_${m.id}_rev`]),
      ).toEqual([{ n: 0 }]);
      expect(await count(pair, 'target', 'orders')).toBe(await count(pair, 'source', 'orders'));
    } finally {
      await session.close();
    }
    await pair.source('DROP SEQUENCE only_here');
    const state = await advance(rt, m.id, { cutover: 'auto' });
    expect(state.verify?.ok).toBe(true);
  });

  it('rolls back what a cutover killed in its write gap left before the switch: prepared subscription and reverse slot', async () => {
    const { pair, rt } = await setup('gapkill', 50);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    const { objectNames } = await import('@pgferry/core');
    const { prepareSubscription, ensurePublication, listTables } = await import('../packages/postgres/src/index');
    const n = objectNames(m.id);
    const session = await openSession(rt, m.id);
    try {
      // As a kill -9 leaves it after the reverse slot was made and before the subscription started.
      const { ctx } = session;
      await ensurePublication(ctx.target, n.reversePublication, await listTables(ctx.target), { viaRoot: true });
      await prepareSubscription(ctx.source, n.reverseSubscription, ctx.config.targetUrl, n.reversePublication);
      await pair.target("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [n.reverseSlot]);
      await ctx.update((s) => {
        s.cutover = { freezeAt: new Date().toISOString(), direction: 'forward' };
      });
    } finally {
      await session.close();
    }
    const rolled = await rollbackMigration(rt, m.id);
    expect(rolled.status).toBe('rolled-back');
    expect(await leftovers(pair)).toEqual([]);
  });

  it('mirrors sequences, also one the source moved back since an earlier sync', async () => {
    pair = await freshPair(15, 'seqback');
    const ddl = `CREATE SEQUENCE capped MAXVALUE 1000; CREATE SEQUENCE countdown INCREMENT BY -1 MAXVALUE -1 START -1;
      CREATE SEQUENCE fresh`;
    await pair.source(ddl);
    await pair.target(ddl);
    await pair.source("SELECT setval('capped', 990); SELECT nextval('countdown') FROM generate_series(1, 5)");
    const { syncSequences } = await import('../packages/postgres/src/index');
    const [src, tgt] = await Promise.all([
      connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test' }),
      connect(pair.targetUrl, { side: 'target', applicationName: 'pgferry:test' }),
    ]);
    try {
      // The sync before a freeze, then the source RESTARTs one (a yearly counter, say) before the one inside it.
      await syncSequences(src, tgt);
      await pair.source("ALTER SEQUENCE capped RESTART; SELECT nextval('capped') FROM generate_series(1, 5)");
      await pair.source("ALTER SEQUENCE countdown RESTART; SELECT nextval('countdown')");
      await syncSequences(src, tgt);
      const state = 'SELECT sequencename AS s, last_value::int AS v FROM pg_sequences ORDER BY 1';
      expect(await pair.target(state)).toEqual(await pair.source(state));
      expect(await pair.target(state)).toEqual([
        { s: 'capped', v: 5 },
        { s: 'countdown', v: -1 },
        { s: 'fresh', v: null },
      ]);
    } finally {
      await Promise.all([src.end(), tgt.end()]);
    }
  });

  it('adds foreign keys NOT VALID after the load and keeps the gate closed, without reporting drift, until catch-up validated them', async () => {
    const { pair, rt } = await setup('fkdefer', 300);
    // One not valid on the source already: it stays so on the target, and is nothing to validate.
    await pair.source(
      'ALTER TABLE invoices ADD CONSTRAINT invoices_order_unchecked FOREIGN KEY (order_id) REFERENCES orders (id) NOT VALID',
    );
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    const session = await openSession(rt, m.id);
    const { ctx } = session;
    const validity = async () =>
      Object.fromEntries(
        (
          (await pair.target(
            "SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f' ORDER BY conname",
          )) as Array<{ conname: string; convalidated: boolean }>
        ).map((r) => [r.conname, r.convalidated]),
      );
    try {
      await prepareSchema(ctx);
      expect(await bulkLoad(ctx)).toMatch(/2 foreign key\(s\) added NOT VALID, validated during catch-up/);
      expect(await validity()).toEqual({
        invoices_order_id_fkey: false,
        invoices_order_unchecked: false,
        orders_customer_id_fkey: false,
      });
      expect(ctx.state.foreignKeysToValidate?.map((f) => f.drift).sort()).toEqual([
        'foreign key invoices_order_id_fkey on public.invoices',
        'foreign key orders_customer_id_fkey on public.orders',
      ]);
      await startReplication(ctx);
      const gate = await sampleGate(ctx, { wal: false });
      // It holds the gate without ending the lag's streak (VALIDATE does not block apply), and its own
      // session's transaction is no application's write on the target.
      expect(gate.waiting.join('; ')).toMatch(
        /foreign key orders_customer_id_fkey on public\.orders is being validated/,
      );
      expect(gate.reasons.join('; ')).not.toMatch(/being validated|not valid on the target|open on the target/);
      expect(await catchUp(ctx)).toMatch(/2 foreign key\(s\) validated/);
      expect(await validity()).toEqual({
        invoices_order_id_fkey: true,
        invoices_order_unchecked: false,
        orders_customer_id_fkey: true,
      });
      expect((await rt.store.get(m.id)).foreignKeysToValidate).toBeUndefined();
      expect((await sampleGate(ctx, { wal: false })).reasons).toEqual([]);
    } finally {
      await session.close();
    }
  });

  it('keeps the lag streak while foreign keys validate, does not take its own validating session for a write on the target, and opens once they are valid', async () => {
    const { pair, rt } = await setup('fkstreak', 300);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    const session = await openSession(rt, m.id);
    const { ctx } = session;
    // First the validation of orders' key waits for a lock on orders (a session holding it has no
    // transaction id); then it stops where it holds one: at its update of pg_constraint, whose rows
    // another session keeps locked.
    const [tableLocker, locker] = [0, 1].map(() => new pg.Client({ connectionString: pair.targetUrl }));
    for (const c of [tableLocker, locker]) {
      c?.on('error', () => {});
      await c?.connect();
    }
    try {
      await prepareSchema(ctx);
      await bulkLoad(ctx);
      await startReplication(ctx);
      await tableLocker?.query('BEGIN');
      // (SHARE ROW EXCLUSIVE: an ACCESS EXCLUSIVE lock would take a transaction id, to log it.)
      await tableLocker?.query('LOCK TABLE orders IN SHARE ROW EXCLUSIVE MODE');
      const after = finishLoad(ctx);
      // Caught up, only the validation left: the streak goes past lagSamples, the gate stays closed.
      const loop = newGateLoop();
      for (let i = 0; i < ctx.config.lagSamples + 2; i++) {
        const step = await gateStep(ctx, loop);
        expect(step.ready, step.summary).toBe(false);
      }
      expect(loop.streak).toBeGreaterThanOrEqual(ctx.config.lagSamples);
      expect(loop.waiting).toBe(true);
      await locker?.query('BEGIN');
      await locker?.query("SELECT 1 FROM pg_constraint WHERE contype = 'f' AND NOT convalidated FOR UPDATE");
      await tableLocker?.query('COMMIT');
      const stuck = async () =>
        (await pair.target(
          "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgferry:%:validate' AND backend_xid IS NOT NULL AND wait_event_type = 'Lock'",
        )) as Array<{ pid: number }>;
      for (let i = 0; i < 200 && (await stuck()).length === 0; i++) await sleep(50);
      const [own] = await stuck();
      const gate = await sampleGate(ctx, { wal: false });
      expect(gate.waiting.join('; ')).toMatch(/is being validated on the target/);
      // The locker's row locks are a write transaction on the target (rightly named); the validating
      // session, holding a transaction id too, is not.
      const writes = gate.reasons.filter((r) => /open on the target/.test(r));
      expect(writes).toHaveLength(1);
      expect(writes[0]).toContain(`pid ${(locker as unknown as { processID: number }).processID} `);
      expect(writes.join()).not.toContain(`pid ${own?.pid} `);
      await locker?.query('ROLLBACK');
      await after.done;
      expect(await catchUp(ctx)).toMatch(/not growing/);
      expect(
        await pair.target("SELECT count(*)::int AS n FROM pg_constraint WHERE contype = 'f' AND NOT convalidated"),
      ).toEqual([{ n: 0 }]);
    } finally {
      await Promise.all([tableLocker?.end(), locker?.end()]);
      await session.close();
    }
  });

  it('does not count a foreign key validation that is going on toward the catch-up timeout, only one stuck behind a lock', async () => {
    const { pair, rt } = await setup('fkslow', 300);
    // Each VALIDATE begins 1.2 s late (as one of a big table takes long), past a 1 s catch-up timeout.
    rt.faults = { beforeValidate: async () => void (await sleep(1200)) };
    const m = await newMigration(rt, pair, { cutover: 'manual', catchUpTimeoutMs: 1000 });
    const session = await openSession(rt, m.id);
    try {
      await prepareSchema(session.ctx);
      await bulkLoad(session.ctx);
      await startReplication(session.ctx);
      const started = Date.now();
      expect(await catchUp(session.ctx)).toMatch(/2 foreign key\(s\) validated/);
      expect(Date.now() - started).toBeGreaterThan(1000);
      expect(
        await pair.target("SELECT count(*)::int AS n FROM pg_constraint WHERE contype = 'f' AND NOT convalidated"),
      ).toEqual([{ n: 0 }]);
    } finally {
      await session.close();
    }
  });

  it('stops validating foreign keys when catch-up fails, and rolls back with the validation left undone', async () => {
    const { pair, rt } = await setup('fkstop', 300);
    const m = await newMigration(rt, pair, { cutover: 'manual', catchUpTimeoutMs: 1500 });
    // The validation waits behind a lock on the target until catch-up gives up.
    const locker = new pg.Client({ connectionString: pair.targetUrl });
    locker.on('error', () => {});
    await locker.connect();
    const session = await openSession(rt, m.id);
    try {
      await prepareSchema(session.ctx);
      await bulkLoad(session.ctx);
      await startReplication(session.ctx);
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE orders IN SHARE ROW EXCLUSIVE MODE');
      const err = await catchUp(session.ctx).catch((e) => e);
      expect(err.name).toBe('LagTimeoutError');
      expect(err.message).toMatch(/foreign key orders_customer_id_fkey on public\.orders is being validated/);
      // Stuck behind the lock (not working), and who holds it.
      expect(err.message).toContain(
        `waits for a lock held by pid ${(locker as unknown as { processID: number }).processID} `,
      );
      const validating = await pair.target(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgferry:%:validate'",
      );
      expect(validating).toEqual([]);
      // (invoices' key, whose tables are not locked, may have been validated before.)
      expect((await rt.store.get(m.id)).foreignKeysToValidate?.map((f) => f.name)).toContain('orders_customer_id_fkey');
    } finally {
      await locker.end();
      await session.close();
    }
    const rolled = await rollbackMigration(rt, m.id);
    expect(rolled.status).toBe('rolled-back');
    expect(await leftovers(pair)).toEqual([]);
  });

  it('keeps the loaded data and the slot when catch-up times out, and resumes once the cause is fixed', async () => {
    const { pair, rt } = await setup('lagtimeout', 300);
    const m = await newMigration(rt, pair, { cutover: 'manual', catchUpTimeoutMs: 1500 });
    await advance(rt, m.id, { cutover: 'manual' });
    await pair.source('ALTER TABLE customers ADD COLUMN vip boolean');
    const err = await advance(rt, m.id, { cutover: 'now' }).catch((e) => e);
    expect(err.name).toBe('LagTimeoutError');
    expect(err.message).toContain('column public.customers.vip');
    const stopped = await rt.store.get(m.id);
    expect(stopped.status).toBe('running');
    expect(stopped.failure?.name).toBe('LagTimeoutError');
    expect(await leftovers(pair)).toContain(`source slot pgferry_${m.id}`); // nothing was thrown away
    expect(await count(pair, 'target', 'orders')).toBe(await count(pair, 'source', 'orders'));
    await pair.target('ALTER TABLE customers ADD COLUMN vip boolean');
    const done = await advance(rt, m.id, { cutover: 'now' });
    expect(done.verify?.ok).toBe(true);
    expect(done.failure).toBeUndefined();
  });

  it('drops the slot when retained WAL passes the hard limit, before the source disk fills', async () => {
    const { pair, rt } = await setup('wal', 100);
    const m = await newMigration(rt, pair, { cutover: 'manual', walWarnBytes: 0, walAbortBytes: 1 });
    const err = await advance(rt, m.id, { cutover: 'manual' }).catch((e) => e);
    expect(err.name).toBe('WalRetentionExceededError');
    expect(err.message).toMatch(/the slot was dropped to protect the source's disk/);
    expect(await leftovers(pair)).toEqual([]);
  });

  it('does not freeze while the drain predicted from the apply rate is over its budget, and cuts over once it fits', async () => {
    const { pair, rt, writer, m, locker } = await caughtUpWithLocker('predict', { maxDrainMs: 300 });
    // Once the gate has opened, before the first forecast: a SHARE lock on the target (no xid, readers
    // unaffected) stalls the apply worker's inserts, so the backlog the cutover finds cannot be drained
    // until it is released. (Taken before the catch-up instead, the stall would keep the gate closed
    // whenever the lag showed before the gate opened: a race with the machine's load, not the forecast.)
    let stalled = false;
    rt.faults = {
      async beforeDrainForecast() {
        if (stalled) return;
        stalled = true;
        await locker.query('BEGIN');
        await locker.query('LOCK TABLE writes IN SHARE MODE');
        // A write after the stall, whatever the live writer's pace: the forecast's position is past
        // something the target cannot apply.
        await pair.source("INSERT INTO writes (writer, payload) VALUES ('late', 'after the stall')");
      },
    };
    let frozenSeen = false;
    const released = (async () => {
      const until = Date.now() + 20_000;
      while (!rt.logs.some((l) => /back to catch-up/.test(l)) && Date.now() < until) {
        frozenSeen ||= await frozen(pair, 'source');
        await sleep(5);
      }
      await locker.query('ROLLBACK');
      await locker.end();
    })();
    const state = await advance(rt, m.id, { cutover: 'now' });
    await released;
    const stats = await writer.stop();
    expect(stalled).toBe(true);
    expect(await pair.target("SELECT count(*)::int AS n FROM writes WHERE writer = 'late'")).toEqual([{ n: 1 }]);
    expect(
      rt.logs.some((l) => /not freezing: the drain is predicted at \d+ ms, over the budget of 300 ms/.test(l)),
    ).toBe(true);
    expect(frozenSeen).toBe(false); // never frozen on a backlog
    expect(state.status).toBe('cut-over');
    expect(state.cutover?.predictedDrainMs).toBeLessThanOrEqual(300);
    expect(state.cutover?.drainMs).toBeLessThanOrEqual(300);
    expect(await writer.lostWrites(pair.targetUrl)).toEqual([]);
    expect(stats.servers.length).toBe(2);
  });

  it('carries over a write committed after the freeze with synchronous_commit off, by a session that turned read-only off', async () => {
    const { pair, rt } = await setup('asyncafter', 100);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    // The WAL writer asleep for long enough that the commit stays in the WAL buffers, acknowledged.
    const admin = serverUrl(pair.sourceServer);
    await sql(admin, "ALTER SYSTEM SET wal_writer_delay = '10s'");
    await sql(admin, 'SELECT pg_reload_conf()');
    try {
      // In the first write gap only (a cutover attempt given up under load tries again).
      let writes = 0;
      rt.faults = {
        async afterFreeze() {
          if (writes++ > 0) return;
          await pair.source(
            "BEGIN READ WRITE; SET LOCAL synchronous_commit = off; INSERT INTO orders (customer_id, amount, status) VALUES (1, 1, 'async'); COMMIT",
          );
        },
      };
      const state = await advance(rt, m.id, { cutover: 'now' });
      expect(state.status).toBe('cut-over');
      if (writes === 1) expect(state.cutover?.writesAfterFreeze).toBeGreaterThanOrEqual(1);
      // (Drained to a position read before the commit record was written: switched without it.)
      expect(await pair.target("SELECT count(*)::int AS n FROM orders WHERE status = 'async'")).toEqual([{ n: 1 }]);
    } finally {
      await sql(admin, 'ALTER SYSTEM RESET wal_writer_delay');
      await sql(admin, 'SELECT pg_reload_conf()');
    }
  });

  it('gives up a drain that passes its budget inside the write gap: unfrozen, back to catch-up, cut over later', async () => {
    const { pair, rt, writer, m, locker } = await caughtUpWithLocker('drain', { maxDrainMs: 300 });
    let stalls = 0;
    // Inside the first write gap only: the target's apply stalls on a lock, and one more write reaches
    // the source (a session that ignores the freeze), so the drain cannot finish within its budget.
    rt.faults = {
      async afterFreeze() {
        if (stalls++ > 0) return;
        await locker.query('BEGIN');
        await locker.query('LOCK TABLE writes IN SHARE MODE');
        await pair.source("INSERT INTO writes (writer, payload) VALUES ('late', 'after the freeze')");
      },
    };
    const released = (async () => {
      const until = Date.now() + 20_000;
      while (!rt.logs.some((l) => /back to catch-up/.test(l)) && Date.now() < until) await sleep(20);
      expect(await frozen(pair, 'source')).toBe(false); // unfrozen while the cutover waits again
      await locker.query('ROLLBACK');
      await locker.end();
    })();
    const state = await advance(rt, m.id, { cutover: 'now' });
    await released;
    await sleep(200);
    const stats = await writer.stop();
    expect(
      rt.logs.some((l) =>
        /did not confirm .* within the drain budget of 300 ms .*the source was unfrozen after a write gap of \d+ ms; back to catch-up \(attempt 2 of 3\)/.test(
          l,
        ),
      ),
    ).toBe(true);
    const abandoned = state.events.find((e) => /drain abandoned after \d+ ms \(budget 300 ms/.test(e.message));
    expect(abandoned).toBeDefined();
    // Abandoned at its budget, not after whatever the stall lasted.
    expect(Number(/after (\d+) ms/.exec(abandoned?.message ?? '')?.[1])).toBeLessThan(1000);
    expect(state.status).toBe('cut-over');
    expect(state.phases.cutover?.attempts).toBe(2);
    // The history keeps the abandoned cutover and the catch-up it went back to, in order.
    const attempts = (state.phaseHistory ?? []).filter((a) => a.phase === 'catch-up' || a.phase === 'cutover');
    const failed = attempts.findIndex((a) => a.phase === 'cutover' && a.outcome === 'failed');
    expect(attempts[failed]?.summary).toMatch(/^DrainTimeoutError: .*within the drain budget of 300 ms/);
    expect(attempts.slice(failed + 1).map((a) => [a.phase, a.outcome])).toEqual([
      ['catch-up', 'done'],
      ['cutover', 'done'],
    ]);
    expect(attempts.slice(0, failed).some((a) => a.phase === 'catch-up' && a.outcome === 'done')).toBe(true);
    expect(await writer.lostWrites(pair.targetUrl)).toEqual([]);
    expect(await pair.target("SELECT count(*)::int AS n FROM writes WHERE writer = 'late'")).toEqual([{ n: 1 }]);
    expect(stats.servers.length).toBe(2);
  });

  it.each(['native', 'dump'] as const)('loses no write with the %s strategy', async (strategy) => {
    const { pair, rt } = await setup(strategy, 1500);
    const writer = new LiveWriter({ switchFile: rt.switchFile, name: 'app', intervalMs: 1 });
    writer.start();
    writers.push(writer);
    const m = await newMigration(rt, pair, { cutover: 'auto', strategy });
    const state = await advance(rt, m.id, { cutover: 'auto' });
    await sleep(300);
    await writer.stop();
    expect(state.verify?.ok).toBe(true);
    expect(await writer.lostWrites(pair.targetUrl)).toEqual([]);
    await cleanupMigration(rt, m.id);
    expect(await leftovers(pair)).toEqual([]);
  });
});

describe('index build memory', () => {
  it('shares --jobs x 384MB between the builds running at once, at most 1GB each, and at most shared_buffers on RDS', () => {
    expect(indexBuildMemoryMB(4, 4)).toBe(384);
    expect(indexBuildMemoryMB(4, 3)).toBe(512);
    expect(indexBuildMemoryMB(4, 2)).toBe(768);
    expect(indexBuildMemoryMB(4, 1)).toBe(1024);
    expect(indexBuildMemoryMB(16, 1)).toBe(1024);
    expect(indexBuildMemoryMB(1, 1)).toBe(384);
    // RDS db.t4g.small: 2 GiB, shared_buffers 512MB.
    expect(indexBuildMemoryMB(4, 1, 512)).toBe(512);
    expect(indexBuildMemoryMB(4, 4, 512)).toBe(128);
    // db.t4g.micro: never below PostgreSQL's own default.
    expect(indexBuildMemoryMB(8, 8, 256)).toBe(64);
    // --index-memory-mb is a cap whatever the floor: the builds at once never share more.
    expect(indexBuildMemoryMB(8, 8, Number.POSITIVE_INFINITY, 64)).toBe(8);
    expect(indexBuildMemoryMB(4, 4, Number.POSITIVE_INFINITY, 128)).toBe(32);
    expect(indexBuildMemoryMB(4, 1, Number.POSITIVE_INFINITY, 2000)).toBe(1024);
    expect(indexBuildMemoryMB(4, 4, 512, 1000)).toBe(128);
    expect(indexBuildMemoryMB(4, 3, Number.POSITIVE_INFINITY, 1)).toBe(1);
  });

  it("gives each build parallel workers only out of the --jobs the builds running at once leave, within the server's limit", () => {
    // Three indexes of one table at once, --jobs 4: none (the builds already fill the cores).
    expect(indexBuildWorkers(4, 3, 2)).toBe(0);
    expect(indexBuildWorkers(4, 4, 2)).toBe(0);
    expect(indexBuildWorkers(4, 2, 2)).toBe(1);
    // A lone primary key: as many as the server allows.
    expect(indexBuildWorkers(4, 1, 2)).toBe(2);
    expect(indexBuildWorkers(16, 3, 2)).toBe(2);
    expect(indexBuildWorkers(16, 3, 8)).toBe(4);
    expect(indexBuildWorkers(1, 1, 2)).toBe(0);
    expect(indexBuildSettings(4, 3, { capMB: Number.POSITIVE_INFINITY, maxWorkers: 2 })).toEqual({
      maintenance_work_mem: '512MB',
      max_parallel_maintenance_workers: '0',
    });
  });

  it("finds the cap from the target: none off RDS, shared_buffers on RDS, a quarter of it on Aurora; and the person's --index-memory-mb", async () => {
    // A server of its own: the roles and functions that mark RDS would mislead other tests' assessments.
    const server = await startServer({ version: 15, name: 'rdslike', settings: { shared_buffers: "'192MB'" } });
    const db = await connect(server.url('postgres'), { side: 'target', applicationName: 'pgferry:test' });
    try {
      expect(await indexBuildLimits(db)).toEqual({ capMB: Number.POSITIVE_INFINITY, maxWorkers: 2 });
      // --index-memory-mb: the person's cap, beside the server's.
      expect(await indexBuildLimits(db, 1000)).toEqual({
        capMB: Number.POSITIVE_INFINITY,
        maxWorkers: 2,
        userCapMB: 1000,
      });
      await db.query('CREATE ROLE rds_superuser');
      expect((await indexBuildLimits(db)).capMB).toBe(192);
      expect(await indexBuildLimits(db, 100)).toMatchObject({ capMB: 192, userCapMB: 100 });
      await db.query("CREATE FUNCTION public.aurora_version() RETURNS text LANGUAGE sql AS $$SELECT '16.4'$$");
      expect((await indexBuildLimits(db)).capMB).toBe(48);
      await db.query('ALTER SYSTEM SET max_parallel_maintenance_workers = 5');
      await db.query('SELECT pg_reload_conf()');
      const fresh = await connect(server.url('postgres'), { side: 'target', applicationName: 'pgferry:test' });
      try {
        expect((await indexBuildLimits(fresh)).maxWorkers).toBe(5);
      } finally {
        await fresh.end();
      }
    } finally {
      await db.end();
      await server.stop();
    }
  });
});

describe('schema, roles and verification', () => {
  it('recreates roles without passwords or superuser, keeping ownership and grants, and drops them on rollback', async () => {
    const { pair, rt } = await setup('roles', 100);
    // Roles are cluster-wide on servers shared by the whole run: unique names, dropped at the end.
    const owner = `owner_${pair.sourceDb.slice(-8)}`;
    const reader = `reader_${pair.sourceDb.slice(-8)}`;
    await pair.source(`CREATE ROLE ${owner} LOGIN PASSWORD 'owner-pw' CREATEDB; CREATE ROLE ${reader} NOLOGIN`);
    await pair.source(
      `ALTER TABLE orders OWNER TO ${owner}; GRANT SELECT ON customers TO ${reader}; GRANT ${reader} TO ${owner}`,
    );
    try {
      const m = await newMigration(rt, pair, { cutover: 'manual' });
      await advance(rt, m.id, { cutover: 'manual' });
      const roles = await pair.target(
        'SELECT rolname, rolcanlogin, rolcreatedb, rolsuper, rolreplication, rolpassword IS NOT NULL AS has_password FROM pg_authid WHERE rolname IN ($1, $2) ORDER BY rolcanlogin DESC',
        [owner, reader],
      );
      expect(roles).toEqual([
        {
          rolname: owner,
          rolcanlogin: true,
          rolcreatedb: true,
          rolsuper: false,
          rolreplication: false,
          has_password: false,
        },
        {
          rolname: reader,
          rolcanlogin: false,
          rolcreatedb: false,
          rolsuper: false,
          rolreplication: false,
          has_password: false,
        },
      ]);
      expect(await pair.target("SELECT tableowner FROM pg_tables WHERE tablename = 'orders'")).toEqual([
        { tableowner: owner },
      ]);
      expect(await pair.target(`SELECT has_table_privilege('${reader}', 'customers', 'SELECT') AS ok`)).toEqual([
        { ok: true },
      ]);
      expect(await pair.target(`SELECT pg_has_role('${owner}', '${reader}', 'MEMBER') AS ok`)).toEqual([{ ok: true }]);
      expect((await rt.store.get(m.id)).rolesCreated?.sort()).toEqual([owner, reader].sort());

      // Rolled back before cutover, nothing pgferry created stays: not even the cluster-wide roles,
      // except one that has been put to use in another database since: that one stays, named.
      await pair.target(`ALTER DEFAULT PRIVILEGES FOR ROLE ${owner} GRANT SELECT ON TABLES TO ${reader}`);
      const { sql, serverUrl } = await import('./harness/pairs');
      const elsewhere = serverUrl(pair.targetServer);
      await sql(elsewhere, `CREATE TABLE ${reader}_notes (n int); ALTER TABLE ${reader}_notes OWNER TO ${reader}`);
      const rolled = await rollbackMigration(rt, m.id);
      expect(rolled.status).toBe('rolled-back');
      expect(rolled.phases.rollback?.summary).toContain(`target roles ${owner}`);
      expect(rolled.phases.rollback?.summary).toMatch(new RegExp(`kept role ${reader} \\(.*depend`));
      expect(rolled.rolesCreated).toEqual([reader]);
      expect(await pair.target('SELECT rolname FROM pg_roles WHERE rolname IN ($1, $2)', [owner, reader])).toEqual([
        { rolname: reader },
      ]);
      await sql(elsewhere, `DROP TABLE ${reader}_notes`);
      expect(
        await pair.source('SELECT count(*)::int AS n FROM pg_roles WHERE rolname IN ($1, $2)', [owner, reader]),
      ).toEqual([{ n: 2 }]);
      await cleanupMigration(rt, m.id, { force: true });
    } finally {
      await pair.drop();
      const { sql, serverUrl } = await import('./harness/pairs');
      for (const server of [pair.sourceServer, pair.targetServer]) {
        await sql(serverUrl(server), `DROP ROLE IF EXISTS ${owner}; DROP ROLE IF EXISTS ${reader}`);
      }
    }
  });

  it('puts back a hardened public schema (owner, privileges, comment) as it was when rolled back', async () => {
    const { pair, rt } = await setup('hardened', 100);
    const role = `app_${pair.targetDb.slice(-8)}`;
    const { sql, serverUrl } = await import('./harness/pairs');
    await sql(serverUrl(pair.targetServer), `CREATE ROLE ${role} NOLOGIN`);
    try {
      await pair.target(
        `ALTER SCHEMA public OWNER TO ${role}; REVOKE ALL ON SCHEMA public FROM PUBLIC;
         GRANT USAGE ON SCHEMA public TO pg_monitor WITH GRANT OPTION; COMMENT ON SCHEMA public IS 'hardened'`,
      );
      const shape = () =>
        pair.target(
          `SELECT pg_get_userbyid(nspowner) AS owner, obj_description(oid, 'pg_namespace') AS comment,
                  (SELECT array_agg(x ORDER BY x) FROM unnest(nspacl::text[]) x) AS acl
             FROM pg_namespace WHERE nspname = 'public'`,
        );
      const before = await shape();
      expect(before).toEqual([
        { owner: role, comment: 'hardened', acl: [`${role}=UC/${role}`, `pg_monitor=U*/${role}`].sort() },
      ]);
      await pair.source("COMMENT ON SCHEMA public IS 'the source''s'");
      const m = await newMigration(rt, pair, { cutover: 'manual' });
      expect((await advance(rt, m.id, { cutover: 'manual' })).status).toBe('awaiting-cutover');
      // The restore gave public the source's comment; the rollback gives back the target's everything.
      expect((await shape())[0]?.comment).toBe("the source's");
      // Someone's schema and extension, made on the target meanwhile, are not pgferry's to drop.
      await pair.target(
        'CREATE SCHEMA reporting; CREATE TABLE reporting.kpis (x int); CREATE EXTENSION pg_trgm SCHEMA reporting',
      );
      const rolled = await rollbackMigration(rt, m.id);
      expect(rolled.status).toBe('rolled-back');
      expect(rolled.phases.rollback?.summary).toContain(
        "kept schema reporting (created on the target since the migration began; not pgferry's); extension pg_trgm (created",
      );
      expect(await pair.target("SELECT to_regclass('reporting.kpis')::text AS t")).toEqual([{ t: 'reporting.kpis' }]);
      expect(await pair.target("SELECT to_regclass('public.orders')::text AS t")).toEqual([{ t: null }]);
      await pair.target('DROP SCHEMA reporting CASCADE'); // its extension with it
      expect(await shape()).toEqual(before);
      expect(await pair.target("SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'pgferry'")).toEqual([
        { n: 0 },
      ]);
      await cleanupMigration(rt, m.id, { force: true });
    } finally {
      await pair.drop();
      await sql(serverUrl(pair.targetServer), `DROP ROLE IF EXISTS ${role}`);
    }
  });

  it("keeps whole a schema that holds someone's table made on the target meanwhile, naming it, when rolled back before the cutover", async () => {
    const { pair, rt } = await setup('stranger', 100);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    expect((await advance(rt, m.id, { cutover: 'manual' })).status).toBe('awaiting-cutover');
    // Someone's table in public on the target, with a row (DROP SCHEMA public CASCADE took it silently).
    await pair.target("CREATE TABLE public.alsokeep (x text); INSERT INTO public.alsokeep VALUES ('theirs')");
    const rolled = await rollbackMigration(rt, m.id);
    expect(rolled.status).toBe('rolled-back');
    expect(rolled.phases.rollback?.summary).toContain(
      'kept everything pgferry loaded on the target (schemas public), since "public"."alsokeep"',
    );
    expect(await pair.target('SELECT x FROM public.alsokeep')).toEqual([{ x: 'theirs' }]);
    // Replication is gone all the same: no slot on the source, the source writable.
    expect(await pair.source("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pgferry%'")).toEqual([]);
    await pair.source("INSERT INTO orders (customer_id, amount, status) VALUES (1, 1, 'after')");
  });

  it('reports a row that differs between the sides by table and key range', async () => {
    const { pair, rt } = await setup('verify', 2000);
    // Keys past 2^53, which a JS number would round (the range then missed every row).
    await pair.source(
      'CREATE TABLE big (id bigint PRIMARY KEY, v text); INSERT INTO big SELECT 1000000000000000000 + g, g::text FROM generate_series(1, 60) g',
    );
    // A two-column key: its buckets are hashed and its rows matched by the key's text.
    await pair.source(
      "CREATE TABLE pairs (a int, b text, v int, PRIMARY KEY (a, b)); INSERT INTO pairs SELECT g, 'x' || g, g FROM generate_series(1, 30) g",
    );
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    await advance(rt, m.id, { cutover: 'auto' });
    // Rows changed on the source only, after the switch (a session that overrides its read-only default):
    // reverse replication runs, but nothing will ever bring these back in line.
    await pair.source(`BEGIN READ WRITE;
      UPDATE orders SET amount = amount + 1 WHERE id = 1234;
      UPDATE big SET v = 'changed' WHERE id = 1000000000000000059;
      INSERT INTO audit_log (actor, action) VALUES ('rogue', 'source only');
      UPDATE pairs SET v = -1 WHERE a = 7;
      COMMIT`);
    const session = await openSession(rt, m.id);
    try {
      const { verifyTables } = await import('../packages/postgres/src/index');
      const result = await verifyTables(session.ctx);
      expect(result.ok).toBe(false);
      const orders = result.tables.find((t) => t.table === 'public.orders');
      expect(orders?.mismatchedRanges).toHaveLength(1);
      expect(orders?.mismatchedKeys).toEqual(['1234']);
      // Only the rows of the chunk's part that differed were read one by one, not the chunk's 2,000.
      expect(orders?.sourceRows).toBe(2000);
      expect(orders?.rowsFollowed).toBeGreaterThan(0);
      expect(orders?.rowsFollowed).toBeLessThan(100);
      const [lo, hi] = (orders?.mismatchedRanges[0] ?? '').replace('id ', '').split('..').map(Number);
      expect(lo).toBeLessThanOrEqual(1234);
      expect(hi).toBeGreaterThanOrEqual(1234);
      const big = result.tables.find((t) => t.table === 'public.big');
      expect(big?.sourceRows).toBe(60);
      expect(big?.mismatchedRanges).toEqual(['id 1000000000000000001..1000000000000000060']);
      const audit = result.tables.find((t) => t.table === 'public.audit_log');
      expect(audit?.targetRows).toBe((audit?.sourceRows ?? 0) - 1);
      expect(result.outcome).toBe('mismatch');
      expect(result.stage).toBe('after-switch');
      expect(audit?.mismatchedRanges.length).toBeGreaterThan(0);
      expect(
        result.tables
          .filter((t) => t.mismatchedRanges.length > 0)
          .map((t) => t.table)
          .sort(),
      ).toEqual(['public.audit_log', 'public.big', 'public.orders', 'public.pairs']);
      expect(result.tables.find((t) => t.table === 'public.pairs')?.mismatchedKeys).toEqual(['(7,x7)']);
      // What a person reads names the rows by key, as the README says, not only their ranges.
      const { verifySummary } = await import('../packages/postgres/src/index');
      const summary = verifySummary(result);
      expect(summary).toMatch(/public\.orders \[id \d+\.\.\d+\] key 1234/);
      expect(summary).toContain('key (7,x7)');
    } finally {
      await session.close();
    }
  });

  it('finds rows one side kept below and above the keys the source has, and follows a text key by parts that spread its rows', async () => {
    const { pair, rt } = await setup('verifyedges', 100);
    await pair.source(`CREATE TABLE ends (id bigint PRIMARY KEY, v text);
      INSERT INTO ends SELECT g, g::text FROM generate_series(1001, 2000) g;
      CREATE TABLE words (k text PRIMARY KEY, v int);
      INSERT INTO words SELECT md5(g::text), g FROM generate_series(1, 200000) g`);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    // Rows the target kept that the source no longer has (deletes that never arrived): just below the
    // source's lowest key, far below it, and above its highest; and one wrong row of a text key.
    await pair.target(`INSERT INTO ends SELECT g, g::text FROM generate_series(600, 1000) g;
      INSERT INTO ends VALUES (-10000000000000, 'far'), (5000, 'kept');
      UPDATE words SET v = -1 WHERE k = md5('777')`);
    const session = await openSession(rt, m.id);
    try {
      const { verifyTables } = await import('../packages/postgres/src/index');
      const result = await verifyTables(session.ctx);
      const ends = result.tables.find((t) => t.table === 'public.ends');
      expect(ends?.outcome).toBe('mismatch');
      expect(ends?.mismatchedRanges).toEqual(['id below 1001', 'id above 2000']);
      expect(ends?.targetRows).toBe(1000 + 401 + 2);
      const words = result.tables.find((t) => t.table === 'public.words');
      expect(words?.outcome).toBe('mismatch');
      expect(words?.mismatchedKeys).toEqual([`(${(await pair.source("SELECT md5('777') AS k"))[0]?.k})`]);
      // 4 chunks of 256 parts: ~195 rows a part, read on both sides (a part hash repeating the chunk's
      // bits left 64 parts a chunk holding rows, ~780 rows each).
      expect(words?.rowsFollowed).toBeGreaterThan(0);
      expect(words?.rowsFollowed).toBeLessThan(1000);
    } finally {
      await session.close();
    }
  });

  it('follows more differing rows than it holds at once in rounds: a table taking inserts settles, 200 rows the target lost are all found', async () => {
    const { pair, rt } = await setup('openrows', 100);
    await pair.source(`CREATE TABLE feed (id bigint PRIMARY KEY, v text);
      INSERT INTO feed SELECT g, g::text FROM generate_series(1, 2000) g;
      CREATE TABLE lost (id int PRIMARY KEY, v text);
      INSERT INTO lost SELECT g, g::text FROM generate_series(1, 2000) g`);
    // 50 rows followed at once (100,000 in use): more than that differ at each read of both tables.
    const m = await newMigration(rt, pair, { cutover: 'manual', verifyOpenRows: 50 });
    await advance(rt, m.id, { cutover: 'manual' });
    await pair.target('DELETE FROM lost WHERE id % 10 = 0');
    // The application inserts into feed on the source all through the verify, 200 rows every 10 ms
    // (at most 60,000: replication keeps up); the target's readers of feed start 300 ms late, so the
    // target, read once it has applied past the source's read, holds thousands more.
    let stop = false;
    const client = new pg.Client({ connectionString: pair.sourceUrl });
    await client.connect();
    const inserter = (async () => {
      for (let next = 100_000; !stop && next < 160_000; next += 200) {
        await client.query('INSERT INTO feed SELECT g, g::text FROM generate_series($1::bigint, $1::bigint + 199) g', [
          next,
        ]);
        await sleep(10);
      }
    })();
    rt.faults = {
      async verifyReader(point) {
        if (point.side === 'target' && point.table === 'public.feed' && point.stage === 'start') await sleep(300);
      },
    };
    const session = await openSession(rt, m.id);
    try {
      const { verifyTables } = await import('../packages/postgres/src/index');
      const result = await verifyTables(session.ctx);
      const feed = result.tables.find((t) => t.table === 'public.feed');
      expect(feed?.outcome).toBe('ok');
      expect(feed?.unsettledRanges).toBeUndefined();
      const lost = result.tables.find((t) => t.table === 'public.lost');
      expect(lost?.outcome).toBe('mismatch');
      // (With the rows past 50 left unfollowed, their chunk was also reported unsettled.)
      expect(lost?.unsettledRanges).toBeUndefined();
      expect(lost?.mismatchedKeys).toHaveLength(10);
      expect(lost?.targetRows).toBe(1800);
      // Its one chunk proven different after the first 50 rows, its other parts are not read again
      // (~3,800 rows a read of both sides; a round per 50 rows read them ~4 times).
      expect(lost?.rowsFollowed).toBeLessThan(6000);
    } finally {
      stop = true;
      await inserter;
      await client.end();
      await session.close();
    }
  });

  it('compares a chunk that keeps differing with its writes held and replication drained, and still reports a real difference', async () => {
    const { pair, rt } = await setup('hot', 100);
    await pair.source(`CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
      INSERT INTO counters SELECT g, 0 FROM generate_series(1, 10) g;
      CREATE TABLE tallies (id int PRIMARY KEY, n bigint NOT NULL);
      INSERT INTO tallies SELECT g, 0 FROM generate_series(1, 10) g`);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    await advance(rt, m.id, { cutover: 'auto' });
    // A real difference: a row changed on the source only, by a session that overrides its read-only default.
    await pair.source('BEGIN READ WRITE; UPDATE tallies SET n = -1 WHERE id = 7; COMMIT');
    // The application, now on the target, bumps a counter as fast as it can: by the time the source is
    // read (once it has applied past the point the target was read at) it has applied newer bumps too,
    // so rechecks at matching points read the row differing however well it replicates.
    let stop = false;
    const bumper = (async () => {
      const client = new pg.Client({ connectionString: pair.targetUrl });
      await client.connect();
      try {
        while (!stop) {
          await client.query('UPDATE counters SET n = n + 1 WHERE id = 1');
        }
      } finally {
        await client.end();
      }
    })();
    const session = await openSession(rt, m.id);
    try {
      const { verifyTables } = await import('../packages/postgres/src/index');
      const result = await verifyTables(session.ctx);
      const ranges = (table: string) => result.tables.find((t) => t.table === table)?.mismatchedRanges;
      expect(ranges('public.counters')).toEqual([]);
      // Settled with its writes held (as a rule), or by a recheck that happened to read both sides at one
      // point; never reported.
      const held = rt.logs.filter((l) => /counters: .* held for \d+ ms/.test(l));
      expect(
        held.every((l) => /1 row\(s\) that kept changing .*: they match/.test(l)),
        rt.logs.join('\n'),
      ).toBe(true);
      // Held and drained, the real difference is still one.
      expect(ranges('public.tallies')).toEqual(['id 1..10']);
      expect(result.tables.filter((t) => t.mismatchedRanges.length > 0).map((t) => t.table)).toEqual([
        'public.tallies',
      ]);
    } finally {
      stop = true;
      await bumper;
      await session.close();
    }
  });

  it('keeps the cutover gate closed while a write transaction is open on the target', async () => {
    const { pair, rt } = await setup('tgttx', 100);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    const { Client } = (await import('pg')).default;
    const other = new Client({ connectionString: pair.targetUrl, application_name: 'someone' });
    other.on('error', () => {});
    await other.connect();
    const session = await openSession(rt, m.id);
    try {
      await other.query('BEGIN');
      await other.query("INSERT INTO audit_log (actor, action) VALUES ('someone', 'early write')");
      const pid = (await other.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      const gate = await sampleGate(session.ctx, { wal: false });
      expect(gate.reasons).toContain(
        `write transaction pid ${pid} (user postgres) open on the target: the reverse slot cannot be created until it ends`,
      );
      await other.query('ROLLBACK');
      expect((await sampleGate(session.ctx, { wal: false })).reasons).toEqual([]);
    } finally {
      await session.close();
      await other.end();
    }
  });
});
