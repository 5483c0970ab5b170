/**
 * Verify's split readers and a session asking for the table's ACCESS EXCLUSIVE lock (DDL). Without
 * every reader holding the table's ACCESS SHARE lock before anyone reads, a DDL asking between two
 * readers' reads queues behind the first, the second queues behind the DDL, and the first's
 * transaction ends only once the second has read: a wait no server sees, until lock_timeout.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { advance, openSession } from '../packages/cli/src/runner';
import { failureAction, NO_FACTS, resumableErrors, VerifyLockedError } from '../packages/core/src/index';
import { connect } from '../packages/postgres/src/db';
import { verifyTables } from '../packages/postgres/src/index';
import type { VerifyReaderPoint } from '../packages/postgres/src/phases/context';
import { SideReaders } from '../packages/postgres/src/phases/verify-readers';
import { migrationFixture, newMigration, sleep } from './harness/migration';
import type { Pair } from './harness/pairs';

const fixture = migrationFixture();

/** Small parts, so that a table of a few hundred KiB is read by several readers a side. */
const PART_BYTES = 64 * 1024;

/** A migration loaded and caught up, with three readers a side and a table `big` of 20,000 rows (~3 MiB). */
async function migratedWithBigTable(label: string) {
  const { pair, rt } = await fixture.setup(label, 100);
  await pair.source(`CREATE TABLE big (id bigint PRIMARY KEY, pad text NOT NULL);
    INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 20000) g`);
  const m = await newMigration(rt, pair, { cutover: 'manual', jobs: 3, verifyPartBytes: PART_BYTES });
  await advance(rt, m.id, { cutover: 'manual' });
  return { pair, rt, m };
}

/** A session of the test's own (a DBA's), known by its pid. */
async function ownSession(url: string, name: string) {
  const client = new pg.Client({ connectionString: url, application_name: name });
  client.on('error', () => {});
  await client.connect();
  const { rows } = await client.query('SELECT pg_backend_pid() AS pid');
  return { client, pid: Number(rows[0]?.pid) };
}

/** Polls `check` until it gives something (a bound, not a timing assertion: the test fails if it never does). */
async function until<T>(what: string, check: () => Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 1_000; i++) {
    const got = await check();
    if (got !== undefined) return got;
    await sleep(20);
  }
  throw new Error(`never: ${what}`);
}

/** The source's verify readers holding big's ACCESS SHARE lock. */
async function readersHoldingBig(pair: Pair): Promise<number> {
  const [row] = await pair.source(
    `SELECT count(*)::int AS n FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.relation = 'big'::regclass AND l.mode = 'AccessShareLock' AND l.granted
        AND a.application_name LIKE 'pgferry:%:verify'`,
  );
  return Number(row?.n);
}

/**
 * Starts a DDL rewriting big (its rows unchanged) in its own session; then where it is once it has
 * either asked for big's lock and waits, or is done: 'waiting' or 'done'.
 */
async function rewriteBig(pair: Pair, ddl: { client: pg.Client; pid: number }) {
  let done = false;
  const finished = ddl.client.query("ALTER TABLE big ALTER COLUMN pad TYPE text USING pad || ''").then(
    () => (done = true),
    (err: Error) => err,
  );
  const where = await until('the DDL waits for the lock or is done', async () => {
    if (done) return 'done';
    const rows = await pair.source(
      "SELECT 1 FROM pg_locks WHERE pid = $1 AND relation = 'big'::regclass AND mode = 'AccessExclusiveLock' AND NOT granted",
      [ddl.pid],
    );
    return rows.length > 0 ? 'waiting' : undefined;
  });
  return { where, finished };
}

/**
 * Verify of a migration with `big` (three readers a side), a DDL rewriting big started once, at the
 * first of the live side's reader points on big that `at` picks (after `ready`): what verify found,
 * where the DDL was when started, how it ended, and every live reader point on big.
 */
async function verifyWithDdl(
  label: string,
  at: (p: VerifyReaderPoint) => boolean,
  ready?: (pair: Pair) => Promise<unknown>,
) {
  const { pair, rt, m } = await migratedWithBigTable(label);
  const ddl = await ownSession(pair.sourceUrl, 'ddl');
  const seen: string[] = [];
  const points: string[] = [];
  let finished: Promise<unknown> | undefined;
  rt.faults = {
    async verifyReader(p: VerifyReaderPoint) {
      if (p.table !== 'public.big' || !p.live) return;
      points.push(`${p.reader} ${p.stage}`);
      if (finished || !at(p)) return;
      await ready?.(pair);
      const r = await rewriteBig(pair, ddl);
      finished = r.finished;
      seen.push(`readers: ${p.readers}, DDL ${r.where}`);
    },
  };
  const session = await openSession(rt, m.id);
  try {
    const result = await verifyTables(session.ctx);
    return { result, seen, ddl: await finished, points };
  } finally {
    await session.close();
    await ddl.client.end();
  }
}

describe("verify's readers and a session asking for the table's ACCESS EXCLUSIVE lock", () => {
  it('a DDL asking between two readers’ reads waits for the read, and the second reader does not wait for it', async () => {
    // The first reader reads (its lock granted); the second has not begun.
    const { result, seen, ddl } = await verifyWithDdl(
      'lockcycle',
      (p) => p.reader === 1 && p.stage === 'reading',
      (pair) => until('a reader holds the lock', async () => ((await readersHoldingBig(pair)) > 0 ? true : undefined)),
    );
    expect(seen).toEqual(['readers: 3, DDL waiting']);
    expect(ddl).toBe(true);
    expect(result.tables.find((t) => t.table === 'public.big')?.outcome).toBe('ok');
    expect(result.outcome).toBe('ok');
  });

  it('a DDL asking between two readers’ locks: all readers begin again once it has passed, no false difference', async () => {
    // The first reader is in its snapshot; the second has not asked for the lock.
    const { result, seen, ddl, points } = await verifyWithDdl(
      'lockretry',
      (p) => p.reader === 1 && p.stage === 'start',
    );
    // It waited for the first reader, which let it pass: the read began again after it.
    expect(seen).toEqual(['readers: 3, DDL waiting']);
    expect(ddl).toBe(true);
    expect(points.filter((p) => p === '0 start').length).toBeGreaterThanOrEqual(2);
    expect(result.tables.find((t) => t.table === 'public.big')?.outcome).toBe('ok');
    expect(result.outcome).toBe('ok');
  });

  it('a lock held past the readers’ wait in the verify before the switch: the migration stops resumable (no rollback, no cutover); resume cuts over once it is gone', async () => {
    const { pair, rt } = await fixture.setup('lockstop', 100);
    await pair.source(`CREATE TABLE big (id bigint PRIMARY KEY, pad text NOT NULL);
      INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 100) g`);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    const blocker = await ownSession(pair.sourceUrl, 'blocker');
    let locked = false;
    // A DBA's VACUUM FULL or long ALTER TABLE, begun once verify reads big: the load had its lock.
    rt.faults = {
      verifyLockWaitMs: 300,
      async verifyReader(p: VerifyReaderPoint) {
        if (locked || p.table !== 'public.big') return;
        locked = true;
        await blocker.client.query('BEGIN');
        await blocker.client.query('LOCK TABLE big IN ACCESS EXCLUSIVE MODE');
      },
    };
    try {
      const err = await advance(rt, m.id, { cutover: 'auto' }).then(
        () => new Error('expected the verify to stop'),
        (e: Error) => e,
      );
      expect(locked).toBe(true);
      expect(err.name).toBe('VerifyLockedError');
      expect(err.message).toMatch(/verify could not read public\.big: its ACCESS EXCLUSIVE lock/);
      const stopped = await rt.store.get(m.id);
      expect(stopped.status).toBe('running');
      expect(stopped.cutover).toBeUndefined();
      expect(stopped.phases.rollback).toBeUndefined();
      expect(await pair.target('SELECT count(*)::int AS n FROM big')).toEqual([{ n: 100 }]);
    } finally {
      await blocker.client.query('ROLLBACK').catch(() => {});
      await blocker.client.end();
    }
    const resumed = await advance(rt, m.id, { cutover: 'auto' });
    expect(resumed.status).toBe('cut-over');
    expect(resumed.verifyBeforeSwitch?.outcome).toBe('ok');
  });

  it('tells its position once, when every reader holds the lock in its snapshot, not before a DDL makes them begin again', async () => {
    const { pair } = await fixture.setup('lockpos', 100);
    await pair.source(`CREATE TABLE big (id bigint PRIMARY KEY, pad text NOT NULL);
      INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 100) g`);
    const ddl = await ownSession(pair.sourceUrl, 'ddl');
    const db = await connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test:verify' });
    const events: string[] = [];
    let finished: Promise<unknown> | undefined;
    // The first time the second reader begins (the first holds the lock in its snapshot), a DDL asks
    // for big's ACCESS EXCLUSIVE lock: the second reader's lock is refused and both begin again.
    const readers = new SideReaders(db, 2, 'pgferry:test:verify', async (p) => {
      events.push(`${p.reader} ${p.stage}`);
      if (finished || p.reader !== 1 || p.stage !== 'start') return;
      const r = await rewriteBig(pair, ddl);
      finished = r.finished;
      events.push(`DDL ${r.where}`);
    });
    const part = async () => 0;
    try {
      await readers.atOnePoint(
        { parts: [part, part], label: 'public.big', relation: '"public"."big"', live: true },
        (lsn) => events.push(`positioned ${/^[0-9A-F]+\/[0-9A-F]+$/.test(lsn)}`),
      );
      expect(await finished).toBe(true);
    } finally {
      await readers.close();
      await ddl.client.end();
      await db.end();
    }
    // Once, after the DDL and after both readers of the attempt that read hold the lock in the snapshot.
    expect(events.filter((e) => e.startsWith('positioned'))).toEqual(['positioned true']);
    expect(events.indexOf('DDL waiting')).toBeGreaterThan(-1);
    expect(events.slice(events.lastIndexOf('0 start'))).toEqual([
      '0 start',
      '0 snapshot',
      '1 start',
      '1 snapshot',
      'positioned true',
      '0 reading',
      '1 reading',
    ]);
  });

  it('a lock held for longer than the readers wait: the read fails naming the table and the session, nothing read, no reader left', async () => {
    const { pair } = await fixture.setup('lockheld', 100);
    await pair.source('CREATE TABLE big (id bigint PRIMARY KEY, pad text NOT NULL)');
    const blocker = await ownSession(pair.sourceUrl, 'blocker');
    await blocker.client.query('BEGIN');
    await blocker.client.query('LOCK TABLE big IN ACCESS EXCLUSIVE MODE');
    const db = await connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test:verify' });
    const readers = new SideReaders(db, 2, 'pgferry:test:verify', undefined, 300);
    let reads = 0;
    const part = async () => {
      reads++;
      return 0;
    };
    try {
      const err = await readers
        .atOnePoint({ parts: [part, part], label: 'public.big', relation: '"public"."big"', live: true })
        .then(
          () => undefined,
          (e: Error) => e,
        );
      expect(err?.message).toMatch(/^source: verify could not read public\.big: its ACCESS EXCLUSIVE lock/);
      expect(err?.message).toContain(`pid ${blocker.pid} (holds it; application "blocker"`);
      expect((err as { hint?: string })?.hint).toContain('pg_terminate_backend');
      // Its own class, resumable: a DBA's long lock before the switch never rolls the load back.
      expect(err).toBeInstanceOf(VerifyLockedError);
      expect(failureAction((err as Error).name, 'catch-up', NO_FACTS)).toBe('stop');
      expect(resumableErrors('catch-up')).toContain((err as Error).name);
      expect(reads).toBe(0);
    } finally {
      await readers.close();
      await blocker.client.query('ROLLBACK');
      await blocker.client.end();
      await db.end();
    }
    // (A backend leaves pg_stat_activity a moment after its client has gone.)
    await until('no reader connection left', async () => {
      const [left] = await pair.source(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pgferry:test:verify'",
      );
      return Number(left?.n) === 0 ? true : undefined;
    });
  });
});

describe("verify's proof that a row differs (the same harness: fault points at the live readers)", () => {
  it('does not prove a row different that read the same live twice but changed and changed back in between (the replica agrees now)', async () => {
    const { pair, rt } = await fixture.setup('aba', 100);
    await pair.source(`CREATE TABLE jobs (id int PRIMARY KEY, v text NOT NULL);
      INSERT INTO jobs SELECT g, 'a' FROM generate_series(1, 10) g`);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    // Each write on the source, once the target has applied it.
    const write = async (sql: string, check: string) => {
      await pair.source(sql);
      await until('the target applied it', async () => ((await pair.target(check)).length > 0 ? true : undefined));
    };
    // Live reads of jobs, counted at their first reader: 1 the checksums, 2 the rows of the parts that
    // differ, 3 the recheck of the rows that differed.
    let read = 0;
    rt.faults = {
      async verifyReader(p: VerifyReaderPoint) {
        if (p.table !== 'public.jobs' || !p.live || p.reader !== 0) return;
        if (p.stage === 'start') read++;
        // After the live snapshot of the first two reads (the replica reads after the change), before
        // the snapshot of the third.
        if (read === 1 && p.stage === 'snapshot')
          await write("INSERT INTO jobs VALUES (100, 'a')", 'SELECT 1 FROM jobs WHERE id = 100');
        if (read === 2 && p.stage === 'snapshot')
          await write("UPDATE jobs SET v = 'b' WHERE id = 100", "SELECT 1 FROM jobs WHERE id = 100 AND v = 'b'");
        if (read === 3 && p.stage === 'start')
          await write("UPDATE jobs SET v = 'a' WHERE id = 100", "SELECT 1 FROM jobs WHERE id = 100 AND v = 'a'");
      },
    };
    const session = await openSession(rt, m.id);
    try {
      const result = await verifyTables(session.ctx);
      // The recheck read 'a' live as the row read had, but the row was 'b' in between: nothing shows
      // the replica wrong, and it reads 'a' too now.
      expect(read).toBeGreaterThanOrEqual(3);
      const jobs = result.tables.find((t) => t.table === 'public.jobs');
      expect(jobs?.mismatchedKeys).toBeUndefined();
      expect(jobs?.outcome).toBe('ok');
    } finally {
      await session.close();
    }
  });
});
