import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { startServer } from '../packages/cli/src/local-servers';
import {
  canCreateSubscription,
  connect,
  type Db,
  freezeHazards,
  freezeWrites,
  isFrozen,
  listTables,
  unappliedChanges,
  unfreezeWrites,
  watchChanges,
  writesSince,
} from '../packages/postgres/src/index';
import { sleep } from './harness/migration';
import { freshPair, type Pair, serverUrl, sql } from './harness/pairs';

let pair: Pair | undefined;
let db: Db | undefined;
afterEach(async () => {
  await db?.end();
  await pair?.drop();
  pair = undefined;
  db = undefined;
});

describe('write freeze', () => {
  it('ends every session of every role, makes new ones read-only, and counts a write that sneaks past it', async () => {
    pair = await freshPair(15, 'freeze');
    await pair.source('CREATE TABLE t (id int PRIMARY KEY)');
    db = await connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test' });
    const idle = new pg.Client({ connectionString: pair.sourceUrl, application_name: 'app' });
    idle.on('error', () => {});
    await idle.connect();
    await idle.query('BEGIN');
    await idle.query('INSERT INTO t VALUES (1)'); // an open writing transaction at freeze time

    const freeze = await freezeWrites(db);
    expect(freeze.sessionsEnded).toBe(1);
    expect(await isFrozen(db)).toBe(true);
    await expect(idle.query('COMMIT')).rejects.toThrow(); // its transaction died with the session; not acknowledged
    expect(await writesSince(db, freeze.xmax, freeze.ownXids)).toBe(0);

    // A new session is read-only by default...
    const late = new pg.Client({ connectionString: pair.sourceUrl, application_name: 'late' });
    await late.connect();
    await expect(late.query('INSERT INTO t VALUES (2)')).rejects.toThrow(/read-only transaction/);
    // ...but one that turns it off can still write: the cutover counts it and drains it before the switch.
    await late.query('SET default_transaction_read_only = off');
    await late.query('INSERT INTO t VALUES (3)');
    await late.end();
    expect(await writesSince(db, freeze.xmax, freeze.ownXids)).toBe(1);

    await unfreezeWrites(db);
    expect(await isFrozen(db)).toBe(false);
    expect(await pair.source('SELECT id FROM t ORDER BY id')).toEqual([{ id: 3 }]);
  });

  it("finishes while the application's pools reconnect at once: sessions begun after the freeze are read-only, not ended", async () => {
    pair = await freshPair(15, 'freezepool');
    await pair.source('CREATE TABLE t (id int PRIMARY KEY)');
    db = await connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test' });
    // Sixteen pooled connections that reconnect the moment theirs is ended, and keep querying.
    let stop = false;
    const url = pair.sourceUrl;
    const reconnects = Array.from({ length: 16 }, () => 0);
    const pools = reconnects.map(async (_, i) => {
      while (!stop) {
        const c = new pg.Client({ connectionString: url, application_name: `app${i}` });
        c.on('error', () => {});
        try {
          await c.connect();
          while (!stop) await c.query('SELECT 1');
        } catch {
          reconnects[i] = (reconnects[i] ?? 0) + 1;
        } finally {
          await c.end().catch(() => {});
        }
      }
    });
    try {
      await sleep(200);
      // (Waiting for no session at all, it never finished: FreezeFailedError after its timeout.)
      const freeze = await freezeWrites(db, { timeoutMs: 3000 });
      expect(freeze.sessionsEnded).toBe(16);
      expect(await isFrozen(db)).toBe(true);
      await sleep(100);
      expect(reconnects.every((n) => n >= 1)).toBe(true);
      // A session made since is read-only.
      const late = new pg.Client({ connectionString: url, application_name: 'late' });
      await late.connect();
      await expect(late.query('INSERT INTO t VALUES (1)')).rejects.toThrow(/read-only transaction/);
      await late.end();
    } finally {
      stop = true;
      await Promise.all(pools);
    }
    await unfreezeWrites(db);
  });

  it('tells a write to a watched table after the freeze from the xids of other databases, reading as it goes, and leaves nothing', async () => {
    pair = await freshPair(15, 'watch');
    await pair.source('CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (id int)');
    db = await connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test' });
    const tables = (await listTables(db)).filter((x) => x.name === 't');
    const watch = await watchChanges(db, 'w_watch', tables, {
      applicationName: 'pgferry:test:watch',
      timeoutMs: 5000,
      viaRoot: true,
    });
    try {
      await pair.source('INSERT INTO t VALUES (1)'); // before the freeze: not counted
      const freeze = await freezeWrites(db);
      watch.follow(freeze.xmax, 20);
      // Xids after the freeze that change no watched table: an unwatched table, ANALYZE, another database.
      await pair.source('INSERT INTO other VALUES (1); ANALYZE t');
      await sql(serverUrl(pair.sourceServer, 'postgres'), 'CREATE TEMP TABLE x (a int); INSERT INTO x VALUES (1)');
      expect(await writesSince(db, freeze.xmax, freeze.ownXids)).toBeGreaterThanOrEqual(3);
      await pair.source('INSERT INTO t VALUES (2), (3); DELETE FROM t WHERE id = 1');
      // Read as it came: the slot has moved past those changes before the last read.
      const lsn = (await db.one<{ l: string }>('SELECT pg_current_wal_lsn()::text AS l')).l;
      for (let i = 0; i < 250; i++) {
        const [row] = await db.query<{ ok: boolean }>(
          "SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = 'w_watch'",
          [lsn],
        );
        if (row?.ok) break;
        await sleep(20);
      }
      const [moved] = await db.query<{ ok: boolean }>(
        "SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = 'w_watch'",
        [lsn],
      );
      expect(moved?.ok).toBe(true);
      expect(await watch.changesFrom(freeze.xmax, 5000)).toBe(3);
      await unfreezeWrites(db);
    } finally {
      await watch.close();
    }
    await sleep(100);
    expect(await pair.source("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'w_watch'")).toEqual([]);
    expect(await pair.source("SELECT 1 FROM pg_publication WHERE pubname = 'w_watch'")).toEqual([]);
  });

  it('gives up making the watch slot when a transaction elsewhere holds it back, leaving nothing', async () => {
    pair = await freshPair(15, 'watchwait');
    await pair.source('CREATE TABLE t (id int PRIMARY KEY)');
    db = await connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test' });
    const tables = await listTables(db);
    const open = new pg.Client({ connectionString: serverUrl(pair.sourceServer, 'postgres') });
    await open.connect();
    try {
      await open.query('BEGIN; SELECT pg_current_xact_id()');
      await expect(
        watchChanges(db, 'w_wait', tables, { applicationName: 'pgferry:test:watch', timeoutMs: 300, viaRoot: true }),
      ).rejects.toThrow(/statement timeout/);
    } finally {
      await open.end();
    }
    await sleep(100);
    expect(await pair.source("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'w_wait'")).toEqual([]);
    expect(await pair.source("SELECT 1 FROM pg_publication WHERE pubname = 'w_wait'")).toEqual([]);
  });

  it('refuses to freeze what it could not hold: a role that overrides it, an orphaned prepared transaction, a role that cannot end sessions', async () => {
    pair = await freshPair(15, 'hazards');
    await pair.source('CREATE TABLE t (id int PRIMARY KEY)');
    db = await connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test' });
    const role = `w_${pair.sourceDb.slice(-8)}`;
    await pair.source(`CREATE ROLE ${role} LOGIN PASSWORD 'pw'; GRANT ALL ON t TO ${role}`);
    try {
      expect(await freezeHazards(db)).toEqual([]);
      // A role that cannot log in never opens a session; RDS's own rdsadmin carries this very setting.
      await pair.source(`CREATE ROLE nologin_${role} NOLOGIN`);
      await pair.source(`ALTER ROLE nologin_${role} SET default_transaction_read_only = off`);
      expect(await freezeHazards(db)).toEqual([]);
      await pair.source(`DROP ROLE nologin_${role}`);
      await pair.source('CREATE ROLE rdsadmin LOGIN; ALTER ROLE rdsadmin SET default_transaction_read_only = off');
      try {
        expect(await freezeHazards(db)).toEqual([]);
      } finally {
        await pair.source('DROP ROLE rdsadmin');
      }
      await pair.source(`ALTER ROLE ${role} IN DATABASE ${pair.sourceDb} SET default_transaction_read_only = off`);
      await pair.source("BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'pay-42'");
      const roleHazard = `role ${role} has its own default_transaction_read_only=off, which overrides the freeze: its sessions could write after it. Until the migration is over, run ALTER ROLE "${role}" IN DATABASE "${pair.sourceDb}" RESET default_transaction_read_only`;
      // A prepared transaction in flight is a transaction manager's: the cutover waits for it after the freeze.
      expect((await freezeHazards(db)).map((h) => h.message)).toEqual([roleHazard]);
      // One older than the orphan threshold is a hazard: anyone could commit it after the freeze.
      await sleep(20);
      const hazards = (await freezeHazards(db, { preparedOrphanMs: 10 })).map((h) => h.message);
      expect(hazards).toEqual([
        roleHazard,
        expect.stringMatching(
          /^prepared transaction 'pay-42' \(owner postgres, prepared \d+ s ago\) is older than 0 s: an orphan its transaction manager forgot, which anyone could still commit after the freeze \(it would stay on the source\); COMMIT PREPARED or ROLLBACK PREPARED it, as its transaction manager's log says$/,
        ),
      ]);
      // So the freeze refuses, and freezes nothing.
      await expect(freezeWrites(db)).rejects.toThrow(/cannot be frozen safely: role .* overrides the freeze/);
      expect(await isFrozen(db)).toBe(false);
      await pair.source("ROLLBACK PREPARED 'pay-42'");
      await pair.source(`ALTER ROLE ${role} IN DATABASE ${pair.sourceDb} RESET default_transaction_read_only`);
      expect(await freezeHazards(db)).toEqual([]);

      // A migration role that can neither see nor end other roles' sessions cannot freeze.
      const weak = await connect(pair.sourceUrl.replace(/\/\/[^@]*@/, `//${role}:pw@`), {
        side: 'source',
        applicationName: 'pgferry:test',
      });
      try {
        // Nor may it create the reverse subscription (superuser on 15, rds_superuser on RDS).
        expect(await canCreateSubscription(weak)).toBe(false);
        expect(await canCreateSubscription(db)).toBe(true);
        expect((await freezeHazards(weak)).map((h) => h.message)).toEqual([
          "the source role (--source) can neither see nor end other roles' sessions, so a freeze could not end a transaction that is writing: GRANT pg_signal_backend, pg_read_all_stats TO it (on RDS: GRANT rds_superuser)",
        ]);
      } finally {
        await weak.end();
      }
    } finally {
      await pair.source("ROLLBACK PREPARED 'pay-42'").catch(() => {});
      await pair.source(`DROP OWNED BY ${role}; DROP ROLE ${role}`).catch(() => {});
      await pair.source(`REVOKE ALL ON t FROM ${role}`).catch(() => {});
    }
  });

  it('flushes asynchronously committed writes before the drain LSN is read', async () => {
    // Many sources run with synchronous_commit = off (pgferry's own sessions too, then: its ALTER DATABASE
    // flushes nothing). The WAL writer waits 10 s here, so an asynchronous commit stays in the WAL buffers.
    const server = await startServer({
      version: 15,
      name: 'asyncflush',
      settings: { wal_writer_delay: "'10s'", synchronous_commit: 'off' },
    });
    try {
      await server.query('CREATE TABLE t (id int PRIMARY KEY)');
      db = await connect(server.url(), { side: 'source', applicationName: 'pgferry:test' });
      const app = new pg.Client({ connectionString: server.url(), application_name: 'app' });
      app.on('error', () => {});
      await app.connect();
      await app.query('INSERT INTO t VALUES (1)'); // acknowledged, not yet flushed
      const { written, inserted } = await db.one<{ written: string; inserted: string }>(
        'SELECT pg_current_wal_lsn()::text AS written, pg_current_wal_insert_lsn()::text AS inserted',
      );
      expect(written).not.toBe(inserted); // the acknowledged commit lies past what the drain used to wait for
      await freezeWrites(db);
      const { covered } = await db.one<{ covered: boolean }>(
        'SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn AND pg_current_wal_lsn() >= $1::pg_lsn AS covered',
        [inserted],
      );
      expect(covered).toBe(true);
      await unfreezeWrites(db);
    } finally {
      await db?.end();
      db = undefined;
      await server.stop();
    }
  });

  it('counts the changes to published tables a disabled subscriber has not applied, without consuming them', async () => {
    pair = await freshPair(15, 'unapplied');
    await pair.source('CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)');
    await pair.source('CREATE PUBLICATION unapplied_pub FOR TABLE t');
    const slot = `unapplied_${pair.sourceDb.slice(-8)}`;
    await pair.source("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [slot]);
    db = await connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test' });
    try {
      expect(await unappliedChanges(db, slot, 'unapplied_pub')).toBe(0);
      await pair.source('INSERT INTO t VALUES (1), (2); INSERT INTO other VALUES (1)'); // other is not published
      await pair.source('UPDATE t SET id = 3 WHERE id = 2');
      expect(await unappliedChanges(db, slot, 'unapplied_pub')).toBe(3);
      expect(await unappliedChanges(db, slot, 'unapplied_pub')).toBe(3); // a peek: still there
      // Bounded (as inside the write gap): a look that would decode more than allowed is not taken.
      expect(await unappliedChanges(db, slot, 'unapplied_pub', { maxDecodeBytes: 0 })).toBeUndefined();
      expect(await unappliedChanges(db, slot, 'unapplied_pub', { maxDecodeBytes: 1 << 24, timeoutMs: 5000 })).toBe(3);
      // A change a subscription applied (it carries a replication origin) is not the source's own.
      await db.withClient(async (c) => {
        await c.query(`SELECT pg_replication_origin_create('${slot}_origin')`);
        await c.query(`SELECT pg_replication_origin_session_setup('${slot}_origin')`);
        await c.query('INSERT INTO t VALUES (10)');
        await c.query('SELECT pg_replication_origin_session_reset()');
        await c.query(`SELECT pg_replication_origin_drop('${slot}_origin')`);
      });
      expect(await unappliedChanges(db, slot, 'unapplied_pub')).toBe(4);
      expect(await unappliedChanges(db, slot, 'unapplied_pub', { excludeOrigins: true })).toBe(3);
    } finally {
      await pair.source('SELECT pg_drop_replication_slot($1)', [slot]);
    }
  });
});
