import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { advance, openSession } from '../packages/cli/src/runner';
import { verifySummary, verifyTables } from '../packages/postgres/src/index';
import type { VerifyReaderPoint } from '../packages/postgres/src/phases/context';
import { migrationFixture, newMigration, sleep } from './harness/migration';
import type { Pair } from './harness/pairs';

const fixture = migrationFixture();

/** Small parts, so that a table of a few hundred KiB is read by several readers a side. */
const PART_BYTES = 64 * 1024;

/** A heap page of a row, and the page count of the table, on one side. */
async function pageOf(run: Pair['source'], table: string, where: string) {
  const [row] = await run(
    `SELECT (ctid::text::point)[0]::int AS page, pg_relation_size('${table}') / current_setting('block_size')::int AS pages FROM ${table} WHERE ${where}`,
  );
  return { page: Number(row?.page), pages: Number(row?.pages) };
}

/**
 * Fault points that make a write happen on the live side between its first reader taking the
 * snapshot and its second reader importing it, and keep the replica from applying it until the
 * replica's first reader has its own snapshot (so the replica cannot show the write). The live side
 * tells the replica its position only once every live reader is in, so the replica's apply of the
 * write is held by a session of the test's own holding the table's SHARE lock on the replica (the
 * readers' ACCESS SHARE passes it, the apply's writes wait), from before the write until then.
 */
function writeBetweenReaders(pair: Pair, table: string, write: () => Promise<unknown>) {
  const seen = { wrote: false, liveReaders: 0 };
  let holder: pg.Client | undefined;
  const release = async () => {
    const c = holder;
    holder = undefined;
    await c?.query('ROLLBACK');
    await c?.end();
  };
  return {
    seen,
    release,
    faults: {
      async verifyReader(p: VerifyReaderPoint) {
        if (p.table !== table) return;
        if (!p.live && p.reader === 0 && p.stage === 'snapshot') await release();
        if (p.live && p.reader === 1 && p.stage === 'start' && !seen.wrote) {
          seen.wrote = true;
          seen.liveReaders = p.readers;
          // The target confirms everything before this moment first (the position verify waits for is
          // earlier): with its apply then held by the lock below, it could otherwise be stopped on the
          // write before it confirmed that position, and verify wait for it in vain (a race the test lost
          // now and then under load: 'behind').
          await pair.source("SELECT pg_logical_emit_message(true, 'test', 'before the write')");
          const [{ lsn }] = (await pair.source('SELECT pg_current_wal_lsn()::text AS lsn')) as [{ lsn: string }];
          for (let i = 0; i < 1000; i++) {
            const [row] = await pair.source(
              "SELECT bool_and(confirmed_flush_lsn >= $1::pg_lsn) AS ok FROM pg_replication_slots WHERE slot_type = 'logical' AND slot_name LIKE 'pgferry%'",
              [lsn],
            );
            if (row?.ok) break;
            await new Promise((r) => setTimeout(r, 10));
          }
          holder = new pg.Client({ connectionString: pair.targetUrl, application_name: 'holder' });
          await holder.connect();
          await holder.query('BEGIN');
          await holder.query(`LOCK TABLE ONLY ${table} IN SHARE MODE`);
          await write();
        }
      },
    },
  };
}

/** A migration loaded and caught up, with three readers a side and a table `big` of 20,000 rows (~3 MiB). */
async function migratedWithBigTable(label: string, sampleRows: number) {
  const { pair, rt } = await fixture.setup(label, sampleRows);
  await pair.source(`CREATE TABLE big (id bigint PRIMARY KEY, pad text NOT NULL);
    INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 20000) g`);
  const m = await newMigration(rt, pair, { cutover: 'manual', jobs: 3, verifyPartBytes: PART_BYTES });
  await advance(rt, m.id, { cutover: 'manual' });
  return { pair, rt, m };
}

describe('verify with several readers a side', () => {
  it('reads a big table by as many readers as --jobs asks, and finds a wrong row in a part a second reader reads', async () => {
    const { pair, rt, m } = await migratedWithBigTable('parts', 100);
    // Which readers of which side read the big table, in a snapshot.
    const readersOfBig = new Set<string>();
    rt.faults = {
      async verifyReader(p) {
        if (p.table === 'public.big' && p.stage === 'snapshot')
          readersOfBig.add(`${p.side} ${p.reader + 1}/${p.readers}`);
      },
    };
    const session = await openSession(rt, m.id);
    try {
      const same = await verifyTables(session.ctx);
      expect([...readersOfBig].sort()).toEqual([
        'source 1/3',
        'source 2/3',
        'source 3/3',
        'target 1/3',
        'target 2/3',
        'target 3/3',
      ]);
      expect(same.outcome).toBe('ok');
      expect(same.readers).toEqual({ source: 3, target: 3 });
      expect(verifySummary(same)).toMatch(/counts and checksums match .*; 3 reader\(s\) a side\)$/);
      // The last row, changed on the target only: on both sides in the last third of the heap.
      await pair.target("UPDATE big SET pad = 'wrong' WHERE id = 20000");
      for (const run of [pair.source, pair.target]) {
        const { page, pages } = await pageOf(run, 'big', 'id = 20000');
        expect(page).toBeGreaterThanOrEqual(Math.ceil(pages / 3));
      }
      const differs = await verifyTables(session.ctx);
      const big = differs.tables.find((t) => t.table === 'public.big');
      expect(big?.outcome).toBe('mismatch');
      expect(big?.mismatchedKeys).toEqual(['20000']);
      expect([big?.sourceRows, big?.targetRows]).toEqual([20000, 20000]);
      expect(differs.tables.filter((t) => t.outcome !== 'ok').map((t) => t.table)).toEqual(['public.big']);
      expect(differs.readers).toEqual({ source: 3, target: 3 });
    } finally {
      await session.close();
    }
  });

  it('reads each part of a big table once, however the servers cost parallel plans', async () => {
    const { pair, rt, m } = await migratedWithBigTable('serial', 100);
    // Costs that make the planner want a parallel plan for a checksum query (a row hash of several
    // calls): it then scans the whole heap in every reader, its range a filter.
    for (const [run, db] of [
      [pair.source, pair.sourceDb],
      [pair.target, pair.targetDb],
    ] as const)
      await run(`ALTER DATABASE ${db} SET parallel_setup_cost = 0; ALTER DATABASE ${db} SET parallel_tuple_cost = 0;
        ALTER DATABASE ${db} SET min_parallel_table_scan_size = 0; ALTER DATABASE ${db} SET cpu_operator_cost = 1`);
    const tuplesRead = async () => {
      const [row] = await pair.target(
        "SELECT pg_stat_clear_snapshot(), (SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'big')::int AS n",
      );
      return Number(row?.n);
    };
    const before = await tuplesRead();
    const session = await openSession(rt, m.id);
    try {
      const result = await verifyTables(session.ctx);
      expect(result.outcome).toBe('ok');
      expect(result.readers).toEqual({ source: 3, target: 3 });
    } finally {
      await session.close();
    }
    // The readers' statistics reach the server as they end; each of the target's rows read once.
    await expect.poll(async () => (await tuplesRead()) - before, { timeout: 10_000 }).toBe(20_000);
  });

  it("reads a side's parts in one snapshot: a write between its readers' starts is not taken for a difference", async () => {
    const { pair, rt } = await fixture.setup('snapshot', 100);
    // No key: its differing buckets are settled by buckets, taking the first read's live side as it was.
    await pair.source(`CREATE TABLE journal (n int NOT NULL, pad text NOT NULL) WITH (autovacuum_enabled = false);
      ALTER TABLE journal REPLICA IDENTITY FULL;
      INSERT INTO journal SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 20000) g`);
    const m = await newMigration(rt, pair, { cutover: 'manual', jobs: 2, verifyPartBytes: PART_BYTES });
    await advance(rt, m.id, { cutover: 'manual' });
    // A new row as wide as the others: no earlier page has room for it, so it lands at the heap's end,
    // which the second reader reads.
    const between = writeBetweenReaders(pair, 'public.journal', () =>
      pair.source("INSERT INTO journal VALUES (20001, repeat(md5('20001'), 3))"),
    );
    rt.faults = between.faults;
    const session = await openSession(rt, m.id);
    try {
      const result = await verifyTables(session.ctx);
      expect(between.seen).toEqual({ wrote: true, liveReaders: 2 });
      const added = await pageOf(pair.source, 'journal', 'n = 20001');
      expect(added.page).toBeGreaterThanOrEqual(Math.ceil(added.pages / 2));
      expect(result.tables.find((t) => t.table === 'public.journal')?.outcome).toBe('ok');
      expect(result.outcome).toBe('ok');
    } finally {
      await between.release();
      await session.close();
    }
  });

  it("reads a side's parts in one snapshot: a write between its readers' starts does not hide a wrong row", async () => {
    const { pair, rt } = await fixture.setup('hidden', 100);
    // Full pages (fillfactor 100, no autovacuum), then room on the first page only: a row updated on
    // a later page, whose page has no room, moves to the first page.
    await pair.source(`CREATE TABLE moves (id int PRIMARY KEY, pad char(200) NOT NULL)
        WITH (fillfactor = 100, autovacuum_enabled = false);
      INSERT INTO moves SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
      DELETE FROM moves WHERE (ctid::text::point)[0] = (SELECT max((ctid::text::point)[0]) FROM moves);
      DELETE FROM moves WHERE (ctid::text::point)[0] = 0 AND id % 4 = 0`);
    await pair.source('VACUUM moves');
    const m = await newMigration(rt, pair, { cutover: 'manual', jobs: 2, verifyPartBytes: PART_BYTES });
    await advance(rt, m.id, { cutover: 'manual' });
    // A row on the source's last page, missing on the target: a real difference, that stays.
    const [last] = await pair.source(
      'SELECT max(id) AS id FROM moves WHERE (ctid::text::point)[0] = (SELECT max((ctid::text::point)[0]) FROM moves)',
    );
    const id = Number(last?.id);
    await pair.target(`DELETE FROM moves WHERE id = ${id}`);
    const before = await pageOf(pair.source, 'moves', `id = ${id}`);
    // Updated between the live readers' starts: its new version goes to page 0 (the first reader's part,
    // after its snapshot), its old one stays in the second reader's part.
    const between = writeBetweenReaders(pair, 'public.moves', () =>
      pair.source(`UPDATE moves SET pad = 'moved' WHERE id = ${id}`),
    );
    rt.faults = between.faults;
    const session = await openSession(rt, m.id);
    try {
      const result = await verifyTables(session.ctx);
      expect(between.seen).toEqual({ wrote: true, liveReaders: 2 });
      const after = await pageOf(pair.source, 'moves', `id = ${id}`);
      expect(before.page).toBeGreaterThanOrEqual(Math.ceil(before.pages / 2));
      expect(after.page).toBe(0);
      const moves = result.tables.find((t) => t.table === 'public.moves');
      expect(moves?.outcome).toBe('mismatch');
      expect(moves?.mismatchedKeys).toEqual([String(id)]);
    } finally {
      await between.release();
      await session.close();
    }
  });

  it('leaves no reader connection open when a read fails', async () => {
    const { pair, rt, m } = await migratedWithBigTable('failing', 500);
    rt.faults = {
      async verifyReader(p) {
        if (p.table === 'public.big' && p.reader === 2 && p.stage === 'start') throw new Error('reader 3 lost');
      },
    };
    const session = await openSession(rt, m.id);
    try {
      await expect(verifyTables(session.ctx)).rejects.toThrow(/reader 3 lost/);
    } finally {
      await session.close();
    }
    // The other tables' reads still in flight end on their own; none keeps or opens a connection.
    const readers =
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'pgferry:%:verify'";
    let open = -1;
    for (let i = 0; i < 100 && open !== 0; i++) {
      await sleep(100);
      const [src, tgt] = await Promise.all([pair.source(readers), pair.target(readers)]);
      open = Number(src[0]?.n) + Number(tgt[0]?.n);
    }
    expect(open).toBe(0);
  });
});
