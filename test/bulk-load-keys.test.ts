/**
 * A big table's primary key and unique constraints are built as unique indexes beside its other
 * indexes, then attached with ADD CONSTRAINT … USING INDEX (pg_restore would add each under ACCESS
 * EXCLUSIVE, after every other build of the table, alone). What cannot be attached that way (a
 * constraint with INCLUDE columns, say) still goes through pg_restore. Either way the target's
 * constraints are the source's.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { advance } from '../packages/cli/src/runner';
import { newMigration, type TestRuntime, testRuntime } from './harness/migration';
import { freshPair, type Pair } from './harness/pairs';

let pair: Pair | undefined;
let rt: TestRuntime | undefined;

afterEach(async () => {
  await pair?.drop();
  rt?.dispose();
  pair = undefined;
  rt = undefined;
});

const CONSTRAINTS = `SELECT k.conname, k.contype, k.condeferrable, k.condeferred, pg_get_constraintdef(k.oid) AS def,
                            pg_get_indexdef(k.conindid) AS index
                       FROM pg_constraint k WHERE k.conrelid = 'public.big'::regclass ORDER BY k.conname`;

describe('bulk load: keys built as indexes', () => {
  it("builds a big table's primary key and unique constraints beside its indexes and attaches them, equal to the source's", async () => {
    pair = await freshPair(15, 'keys');
    rt = testRuntime();
    await pair.source(`CREATE TABLE big (id bigint PRIMARY KEY, code text NOT NULL, grp int NOT NULL, v text,
        CONSTRAINT big_code_key UNIQUE (code) DEFERRABLE INITIALLY DEFERRED,
        CONSTRAINT big_code_v_key UNIQUE NULLS NOT DISTINCT (code, v) DEFERRABLE,
        CONSTRAINT big_incl_key UNIQUE (grp, id) INCLUDE (v));
      CREATE INDEX big_grp ON big (grp);
      INSERT INTO big SELECT g, 'c' || g, g % 100, CASE WHEN g % 2 = 0 THEN 'v' || g END FROM generate_series(1, 20000) g`);
    // Big enough for its indexes to be built as soon as its rows are in.
    const m = await newMigration(rt, pair, { cutover: 'manual', earlyIndexBytes: 64 * 1024 });
    const state = await advance(rt, m.id, { cutover: 'manual' });
    expect(state.status).toBe('awaiting-cutover');
    expect(state.phases['bulk-load']?.summary).toMatch(/indexes of 1 big tables built during the copy/);
    // The target's constraints and their indexes are the source's, deferrability included.
    const source = await pair.source(CONSTRAINTS);
    expect(source.map((r) => r.conname)).toEqual(['big_code_key', 'big_code_v_key', 'big_incl_key', 'big_pkey']);
    expect(await pair.target(CONSTRAINTS)).toEqual(source);
    // What pg_restore was given for the table: the INCLUDE constraint and the plain index, not the
    // three built as indexes.
    const oid = Number((await pair.source("SELECT 'public.big'::regclass::oid::int AS oid"))[0]?.oid);
    const list = readFileSync(join(rt.stateDir, 'artifacts', m.id, `post-data-${oid}.list`), 'utf8');
    expect(list).toMatch(/CONSTRAINT public big big_incl_key/);
    expect(list).toMatch(/INDEX public big_grp/);
    expect(list).not.toMatch(/big_pkey|big_code_key|big_code_v_key/);
    // Replication runs on the attached key: a change on the source reaches the target.
    await pair.source("UPDATE big SET v = 'changed' WHERE id = 7");
    for (let i = 0; i < 100; i++) {
      const [row] = await pair.target('SELECT v FROM big WHERE id = 7');
      if (row?.v === 'changed') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await pair.target('SELECT v FROM big WHERE id = 7')).toEqual([{ v: 'changed' }]);
  });

  it('leaves to pg_restore a key that is the replica identity or the CLUSTER index, so the target keeps both', async () => {
    pair = await freshPair(15, 'keyident');
    rt = testRuntime();
    // Replication on this table needs its replica identity (no primary key); the other is clustered on its key.
    await pair.source(`CREATE TABLE big (code text NOT NULL, v text, CONSTRAINT big_code_key UNIQUE (code));
      ALTER TABLE big REPLICA IDENTITY USING INDEX big_code_key;
      CREATE TABLE big2 (id bigint PRIMARY KEY, v text);
      CLUSTER big2 USING big2_pkey;
      INSERT INTO big SELECT 'c' || g, 'v' FROM generate_series(1, 20000) g;
      INSERT INTO big2 SELECT g, 'v' FROM generate_series(1, 20000) g`);
    const m = await newMigration(rt, pair, { cutover: 'manual', earlyIndexBytes: 64 * 1024 });
    const state = await advance(rt, m.id, { cutover: 'manual' });
    expect(state.status).toBe('awaiting-cutover');
    const FLAGS = `SELECT c.relname, i.relname AS index, x.indisreplident, x.indisclustered, c.relreplident
                     FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
                    WHERE c.relname IN ('big', 'big2') ORDER BY 1, 2`;
    const source = await pair.source(FLAGS);
    expect(source).toContainEqual(expect.objectContaining({ index: 'big_code_key', indisreplident: true }));
    expect(source).toContainEqual(expect.objectContaining({ index: 'big2_pkey', indisclustered: true }));
    expect(await pair.target(FLAGS)).toEqual(source);
    // Updates on the table keyed by its replica identity replicate.
    await pair.source("UPDATE big SET v = 'changed' WHERE code = 'c7'");
    for (let i = 0; i < 100; i++) {
      const [row] = await pair.target("SELECT v FROM big WHERE code = 'c7'");
      if (row?.v === 'changed') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await pair.target("SELECT v FROM big WHERE code = 'c7'")).toEqual([{ v: 'changed' }]);
  });

  // A big table that copies for a while, and small ones, with keys and an index.
  const SCHEMA = `CREATE TABLE big (id bigint PRIMARY KEY, v text);
      INSERT INTO big SELECT g, repeat('x', 400) FROM generate_series(1, 60000) g;
      CREATE TABLE small_a (id int PRIMARY KEY, code text UNIQUE); INSERT INTO small_a SELECT g, 'a' || g FROM generate_series(1, 50) g;
      CREATE TABLE small_b (id int PRIMARY KEY, grp int); CREATE INDEX small_b_grp ON small_b (grp);
      INSERT INTO small_b SELECT g, g % 5 FROM generate_series(1, 50) g`;

  it("builds the small tables' keys and indexes (and their statistics) in one pg_restore during the copy, once a stream has nothing left to copy while another still copies", async () => {
    pair = await freshPair(15, 'smallearly');
    rt = testRuntime();
    await pair.source(SCHEMA);
    const m = await newMigration(rt, pair, { cutover: 'manual', earlyIndexBytes: 64 * 1024 });
    const state = await advance(rt, m.id, { cutover: 'manual' });
    expect(state.status).toBe('awaiting-cutover');
    const summary = state.phases['bulk-load']?.summary ?? '';
    expect(summary).toMatch(/indexes of 1 big tables built during the copy/);
    const [, small, analyzed] =
      /indexes of (\d+) small table\(s\) built during the copy \((\d+) analyzed then too\)/.exec(summary) ?? [];
    expect(Number(small)).toBeGreaterThan(0);
    // Analyzed then too unless the copy ended first (then at the end of the load, as before).
    expect(Number(analyzed)).toBeLessThanOrEqual(Number(small));
    // Built by their own pg_restore lists, and not again by the final one.
    const dir = join(rt.stateDir, 'artifacts', m.id);
    const lists = readdirSync(dir).filter((f) => f.startsWith('post-data-small-'));
    expect(lists.length).toBeGreaterThan(0);
    const early = lists.map((f) => readFileSync(join(dir, f), 'utf8')).join('');
    const rest = existsSync(join(dir, 'post-data-rest.list'))
      ? readFileSync(join(dir, 'post-data-rest.list'), 'utf8')
      : '';
    for (const name of ['small_a_pkey', 'small_a_code_key', 'small_b_pkey', 'small_b_grp'])
      expect(`${early}\n${rest}`.match(new RegExp(`\\b${name}\\b`, 'g'))).toHaveLength(1);
    // Every key and index is the source's, and every table has statistics.
    const defs = `SELECT c.relname, pg_get_indexdef(x.indexrelid) AS def FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1`;
    expect(await pair.target(defs)).toEqual(await pair.source(defs));
    expect(
      await pair.target("SELECT relname FROM pg_stat_user_tables WHERE schemaname = 'public' AND last_analyze IS NULL"),
    ).toEqual([]);
    // One stream: no other copies while it runs out of tables, so the final post-data builds them.
    const second = await freshPair(15, 'smallalone');
    try {
      await second.source(SCHEMA);
      const one = await newMigration(rt, second, { cutover: 'manual', earlyIndexBytes: 64 * 1024, jobs: 1 });
      const alone = await advance(rt, one.id, { cutover: 'manual' });
      expect(alone.status).toBe('awaiting-cutover');
      expect(alone.phases['bulk-load']?.summary).not.toMatch(/small table/);
      expect(await second.target(defs)).toEqual(await second.source(defs));
    } finally {
      await second.drop();
    }
  });
});
