import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { advance, openSession } from '../packages/cli/src/runner';
import { verifySummary, verifyTables } from '../packages/postgres/src/index';
import { frozen, migrationFixture, newMigration, sleep } from './harness/migration';

const BIN = resolve(__dirname, '../packages/cli/bin/pgferry.mjs');
const fixture = migrationFixture();

function pgferry(args: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile(process.execPath, [BIN, ...args], { cwd, timeout: 120_000 }, (err, stdout, stderr) => {
      res({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

describe('verify', () => {
  it('verifies every table before the switch and does not cut over on a real difference', async () => {
    const { pair, rt } = await fixture.setup('prev', 300);
    // A trigger the schema copy enables ALWAYS: it fires again when the target applies the row, so every
    // update replicated after the load arrives twice incremented. A real difference, made by replication.
    await pair.source(`CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
      INSERT INTO counters SELECT g, 0 FROM generate_series(1, 20) g;
      CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN NEW.n := NEW.n + 1; RETURN NEW; END $f$;
      CREATE TRIGGER bump BEFORE UPDATE ON counters FOR EACH ROW EXECUTE FUNCTION bump();
      ALTER TABLE counters ENABLE ALWAYS TRIGGER bump`);
    let stop = false;
    const updater = (async () => {
      while (!stop) {
        await pair.source('UPDATE counters SET n = n WHERE id = 5').catch(() => {});
        await sleep(50);
      }
    })();
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    const err = await advance(rt, m.id, { cutover: 'auto' }).catch((e) => e);
    stop = true;
    await updater;
    expect(err.name).toBe('VerificationFailedError');
    expect(err.exitCode).toBe(6);
    expect(err.message).toMatch(/^before the switch: MISMATCH in 1 table\(s\): public\.counters \[id 1\.\.20\]/);
    // The command that verifies again whatever the migration's --cutover (a manual one's resume only catches up).
    expect(err.hint).toContain(`\`pgferry cutover --id ${m.id}\` verifies again`);
    const state = await rt.store.get(m.id);
    // Nothing switched or frozen; replication and the load stay for whoever looks into it.
    expect(state.status).toBe('running');
    expect(state.cutover).toBeUndefined();
    expect(state.verifyBeforeSwitch?.outcome).toBe('mismatch');
    expect(state.verifyBeforeSwitch?.stage).toBe('before-switch');
    expect(state.verifyBeforeSwitch?.tables.find((t) => t.table === 'public.orders')?.outcome).toBe('ok');
    expect(await frozen(pair, 'source')).toBe(false);
    expect(await pair.target(`SELECT subenabled FROM pg_subscription WHERE subname = 'pgferry_${m.id}'`)).toEqual([
      { subenabled: true },
    ]);
  });

  it('reads the replica at the same time as the live side, once it has confirmed the position of the live snapshot', async () => {
    const { pair, rt } = await fixture.setup('overlap', 100);
    await pair.source(`CREATE TABLE wide (id bigint PRIMARY KEY, pad text NOT NULL);
      INSERT INTO wide SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 20000) g`);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    // The live side's read of the big table is held before it reads until the replica's read of it begins
    // (at most 60 s). Read one after the other, the replica would begin only once the live read had ended,
    // so the hold would run out with the replica not begun. (Watching pg_stat_activity for both reads at
    // once missed a short overlap now and then on a busy machine.)
    let replicaReading: () => void = () => {};
    const replicaBegun = new Promise<void>((resolve) => {
      replicaReading = resolve;
    });
    let both = false;
    rt.faults = {
      async verifyReader(p) {
        if (p.table !== 'public.wide' || p.stage !== 'reading') return;
        if (!p.live) return replicaReading();
        let timer: NodeJS.Timeout | undefined;
        const held = new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(false), 60_000);
        });
        both = await Promise.race([replicaBegun.then(() => true), held]);
        clearTimeout(timer);
      },
    };
    const session = await openSession(rt, m.id);
    try {
      const result = await verifyTables(session.ctx);
      expect(verifySummary(result)).toMatch(/counts and checksums match/);
    } finally {
      await session.close();
    }
    expect(both).toBe(true);
  });

  it('hashes values by their type where that is faithful, and tells apart what equal-comparing values would hide, on 15 → 17', async () => {
    const { pair, rt } = await fixture.setup('byvalue', 50, 17);
    await pair.source(`CREATE TYPE mood AS ENUM ('sad', 'happy');
      CREATE TABLE typed (id int PRIMARY KEY, i8 bigint, n12 numeric(12, 2), n numeric, f float8, ts timestamptz,
        d date, u uuid, b bytea, t text, c char(3), iv interval, tz timetz, j jsonb, js json, m mood, a int[], p point);
      INSERT INTO typed SELECT g, g::bigint * 1000000000, g / 7.0, g / 4.0, g / 3.0, now() - g * interval '1 h', current_date - g,
        md5(g::text)::uuid, decode(md5(g::text), 'hex'), 'row ' || g, 'ab', g * interval '1 min', '12:00+01', jsonb_build_object('n', g / 2.0),
        json_build_object('k', g), 'happy', ARRAY[g, g + 1], point(g, g) FROM generate_series(1, 200) g`);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    const session = await openSession(rt, m.id);
    try {
      // PostgreSQL 15 and 17 hash every type the same way: the same rows verify.
      const same = await verifyTables(session.ctx);
      expect(verifySummary(same)).toMatch(/counts and checksums match/);
      // Values the types call equal, but that are not the same: each one a difference.
      await pair.source("UPDATE typed SET iv = interval '24 hours' WHERE id = 3; UPDATE typed SET f = 0 WHERE id = 5");
      expect(verifySummary(await verifyTables(session.ctx))).toMatch(/counts and checksums match/);
      const changes: [number, string][] = [
        [1, 'n = 0.250'], // numeric without a scale: 0.25 = 0.250
        [2, `j = '{"n": 1.00}'`], // jsonb: 1.0 = 1.00 inside a document
        [3, "iv = interval '1 day'"], // interval: '24 hours' = '1 day'
        [4, "tz = '11:00+00'"], // timetz: the same instant in another zone
        [5, "f = '-0'"], // float8: 0 = -0
        [6, "t = 'row 6 '"], // text: a trailing blank
      ];
      await pair.target(changes.map(([id, set]) => `UPDATE typed SET ${set} WHERE id = ${id}`).join('; '));
      const differs = await verifyTables(session.ctx);
      const typed = differs.tables.find((t) => t.table === 'public.typed');
      expect(typed?.outcome).toBe('mismatch');
      expect([...(typed?.mismatchedKeys ?? [])].sort()).toEqual(changes.map(([id]) => `${id}`).sort());
    } finally {
      await session.close();
    }
  });

  it('sees values that two rows of one part traded, whose row hashes used to add up the same', async () => {
    const { pair, rt } = await fixture.setup('swaps', 50);
    await pair.source(`CREATE TABLE traded (id int PRIMARY KEY, n bigint NOT NULL, t text, ts timestamptz, j jsonb, ok bool);
      INSERT INTO traded SELECT g, g * 10, 'text ' || g, '2024-01-01'::timestamptz + g * interval '1 s',
        jsonb_build_object('g', g), g % 2 = 0 FROM generate_series(1, 2000) g`);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    // Pairs of rows in one part of the table's one chunk (verify's part of an integer key, 256 parts a
    // chunk), an odd and an even id: the two rows of a pair differ in every column.
    const pairs = (await pair.target(`SELECT min(id) AS a, max(id) AS b FROM (
        SELECT id, abs(hashint8extended(id::bigint, 1000003) % 256) AS part,
               row_number() OVER (PARTITION BY abs(hashint8extended(id::bigint, 1000003) % 256), id % 2 ORDER BY id) AS r
          FROM traded) x WHERE r = 1 GROUP BY part HAVING count(*) = 2 ORDER BY part LIMIT 5`)) as {
      a: number;
      b: number;
    }[];
    expect(pairs).toHaveLength(5);
    const session = await openSession(rt, m.id);
    try {
      expect(verifySummary(await verifyTables(session.ctx))).toMatch(/counts and checksums match/);
      // Each pair trades one column's values: hashed by its type, by its text, in a record, as an integer.
      const columns = ['n', 't', 'ts', 'j', 'ok'];
      await pair.target(
        pairs
          .map(({ a, b }, i) => {
            const c = columns[i] as string;
            return `UPDATE traded x SET ${c} = y.${c} FROM traded y WHERE (x.id, y.id) IN ((${a}, ${b}), (${b}, ${a}))`;
          })
          .join('; '),
      );
      const traded = (await verifyTables(session.ctx)).tables.find((t) => t.table === 'public.traded');
      expect(traded?.outcome).toBe('mismatch');
      expect([...(traded?.mismatchedKeys ?? [])].sort()).toEqual(pairs.flatMap(({ a, b }) => [`${a}`, `${b}`]).sort());
    } finally {
      await session.close();
    }
  });

  it("sees numeric and bigint values that their types' own hashes take for one another", async () => {
    const { pair, rt } = await fixture.setup('alike', 50);
    await pair.source(`CREATE TABLE acct (id int PRIMARY KEY, amount numeric(12,2), tax numeric(12,2), total numeric(12,2), big bigint);
      INSERT INTO acct SELECT g, g * 1.25, g * 0.25, g * 1.5, g FROM generate_series(1, 1000) g;
      UPDATE acct SET amount = 0, tax = 0, total = NULL WHERE id = 7;
      UPDATE acct SET big = 0 WHERE id = 13`);
    // Past 32 columns a row's other columns are hashed as one record; its numeric columns still apart.
    const cols = Array.from({ length: 39 }, (_, i) => `c${i + 1}`);
    await pair.source(`CREATE TABLE wide (id int PRIMARY KEY, ${cols.map((c) => `${c} int`).join(', ')}, n numeric(10, 2), big bigint);
      INSERT INTO wide SELECT g, ${cols.map((_, i) => `g + ${i}`).join(', ')}, g * 1.5, CASE WHEN g = 6 THEN 0 ELSE g END FROM generate_series(1, 300) g`);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    const session = await openSession(rt, m.id);
    try {
      expect(verifySummary(await verifyTables(session.ctx))).toMatch(/counts and checksums match/);
      await pair.target(`UPDATE acct SET amount = -amount WHERE id = 5; -- numeric's hash ignores the sign
        UPDATE acct SET amount = NULL, tax = NULL, total = 0 WHERE id = 7; -- zero hashed as its seed less one
        UPDATE acct SET amount = amount * 10000, tax = tax * 10000 WHERE id = 11; -- the weight XORed in
        UPDATE acct SET big = 4294967297 WHERE id = 13; -- bigint's hash folds the value to 32 bits
        UPDATE wide SET n = -n WHERE id = 2; UPDATE wide SET c7 = c7 + 1 WHERE id = 4; UPDATE wide SET big = 4294967297 WHERE id = 6`);
      const result = await verifyTables(session.ctx);
      const acct = result.tables.find((t) => t.table === 'public.acct');
      expect(acct?.outcome).toBe('mismatch');
      expect([...(acct?.mismatchedKeys ?? [])].sort()).toEqual(['11', '13', '5', '7']);
      const wide = result.tables.find((t) => t.table === 'public.wide');
      expect([...(wide?.mismatchedKeys ?? [])].sort()).toEqual(['2', '4', '6']);
    } finally {
      await session.close();
    }
  });

  it('hashes every column of a row as text on a 12 source, by name: a column called t, columns in another order', async () => {
    const { pair, rt } = await fixture.setup('named-t', 50, 16, 12);
    // pg_dump makes an inheritance child with the parent's columns first: on the target kid is (id, a, b).
    // kid has no key and two chunks, chosen by a hash of the whole row's text.
    await pair.source(`CREATE TABLE notes (id int PRIMARY KEY, amount int NOT NULL, t text);
      INSERT INTO notes SELECT g, g, 'same' FROM generate_series(1, 500) g;
      CREATE TABLE par (id int, a text, b int);
      CREATE TABLE kid (b int, a text, id int);
      ALTER TABLE kid INHERIT par;
      ALTER TABLE par REPLICA IDENTITY FULL;
      ALTER TABLE kid REPLICA IDENTITY FULL;
      INSERT INTO kid SELECT g * 2, 'k' || g, g FROM generate_series(1, 60000) g;
      CREATE TABLE par2 (id int PRIMARY KEY, a text, b int);
      CREATE TABLE kid2 (b int, a text, id int PRIMARY KEY);
      ALTER TABLE kid2 INHERIT par2;
      INSERT INTO kid2 SELECT g * 2, 'k' || g, g FROM generate_series(1, 300) g`);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    const session = await openSession(rt, m.id);
    try {
      expect(
        (
          await pair.target(
            "SELECT string_agg(attname, ',' ORDER BY attnum) AS c FROM pg_attribute WHERE attrelid = 'kid'::regclass AND attnum > 0",
          )
        )[0]?.c,
      ).toBe('id,a,b');
      expect(verifySummary(await verifyTables(session.ctx))).toMatch(/counts and checksums match/);
      await pair.target('UPDATE notes SET amount = -1 WHERE id = 3');
      const notes = (await verifyTables(session.ctx)).tables.find((t) => t.table === 'public.notes');
      expect(notes?.outcome).toBe('mismatch');
      expect(notes?.mismatchedKeys).toEqual(['3']);
    } finally {
      await session.close();
    }
  });

  it('reports a lagging replica as not verified, never as a mismatch, and verifies once it has caught up', async () => {
    const { pair, rt } = await fixture.setup('behind', 2000);
    const writer = fixture.writer(rt, 2);
    const m = await newMigration(rt, pair, { cutover: 'auto', verifyWaitMs: 1000 });
    const state = await advance(rt, m.id, { cutover: 'auto' });
    // Before the switch every table was compared at matching points, with its time and throughput.
    expect(state.verifyBeforeSwitch?.outcome).toBe('ok');
    expect(state.verifyBeforeSwitch?.sourceBytes).toBeGreaterThan(0);
    expect(state.verifyBeforeSwitch?.sourceMiBps).toBeGreaterThan(0);
    expect(state.verifyBeforeSwitch?.targetMiBps).toBeGreaterThan(0);
    expect(state.verify?.outcome).toBe('ok');
    // Reverse replication stops (as if far behind) while the application goes on writing to the target.
    await pair.source(`ALTER SUBSCRIPTION pgferry_${m.id}_rev DISABLE`);
    await sleep(300);
    await pair.target('UPDATE orders SET amount = amount + 1 WHERE id <= 50');
    const session = await openSession(rt, m.id);
    try {
      const behind = await verifyTables(session.ctx);
      expect(behind.outcome).toBe('behind');
      expect(behind.ok).toBe(false);
      expect(behind.behindBytes).toBeGreaterThan(0);
      expect(behind.tables.every((t) => t.mismatchedRanges.length === 0)).toBe(true);
      expect(behind.tables.find((t) => t.table === 'public.orders')?.outcome).toBe('behind');
      expect(verifySummary(behind)).toMatch(/^NOT VERIFIED: reverse replication [\d.]+ [KM]iB behind/);
    } finally {
      await session.close();
    }
    // The CLI says so with its own exit code, not 6.
    const resumed = await pgferry(['resume', '--id', m.id, '--state-dir', rt.stateDir], rt.dir);
    expect(resumed.stdout).toMatch(/verify: NOT VERIFIED \(reverse replication [\d.]+ [KMG]?i?B behind\)/);
    expect(resumed.code).toBe(8);
    // Caught up, the same data verifies.
    await pair.source(`ALTER SUBSCRIPTION pgferry_${m.id}_rev ENABLE`);
    const again = await pgferry(['resume', '--id', m.id, '--state-dir', rt.stateDir], rt.dir);
    expect(again.stdout).toMatch(/verify: OK/);
    expect(again.code).toBe(0);
    const stats = await writer.stop();
    expect(await writer.lostWrites(pair.targetUrl)).toEqual([]);
    expect(stats.acked).toBeGreaterThan(0);
  });

  it('calls a chunk the application changes at every read, and that cannot be held still, not verified rather than different', async () => {
    const { pair, rt } = await fixture.setup('unsettled', 100);
    await pair.source(`CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
      INSERT INTO counters SELECT g, 0 FROM generate_series(1, 10) g`);
    const m = await newMigration(rt, pair, { cutover: 'auto', verifyWaitMs: 2000 });
    await advance(rt, m.id, { cutover: 'auto' });
    // On the target (live now): a counter bumped as fast as the application can, and an open write
    // transaction on the same table, so the last recheck cannot take its share lock.
    const bumper = new pg.Client({ connectionString: pair.targetUrl });
    const holder = new pg.Client({ connectionString: pair.targetUrl });
    await bumper.connect();
    await holder.connect();
    await holder.query('BEGIN');
    await holder.query('UPDATE counters SET n = n WHERE id = 2');
    let stop = false;
    const bumping = (async () => {
      while (!stop) await bumper.query('UPDATE counters SET n = n + 1 WHERE id = 1');
    })();
    const session = await openSession(rt, m.id);
    try {
      // Never a mismatch; unsettled as a rule (a read that happens to catch both sides at one point
      // settles the row, so up to three tries).
      let result = await verifyTables(session.ctx);
      for (let i = 0; i < 2 && result.outcome === 'ok'; i++) result = await verifyTables(session.ctx);
      const counters = result.tables.find((t) => t.table === 'public.counters');
      expect(counters?.mismatchedRanges).toEqual([]);
      expect(counters?.unsettledRanges).toEqual(['id 1..10']);
      expect(counters?.outcome).toBe('behind');
      expect(result.outcome).toBe('behind');
      expect(verifySummary(result)).toMatch(
        /^NOT VERIFIED: 1 table\(s\) \(public\.counters\) changed at every read and could not be held still/,
      );
      expect(rt.logs.some((l) => /counters: no last recheck with its writes held/.test(l))).toBe(true);
    } finally {
      stop = true;
      await bumping;
      await holder.query('ROLLBACK');
      await Promise.all([bumper.end(), holder.end(), session.close()]);
    }
  });
});
