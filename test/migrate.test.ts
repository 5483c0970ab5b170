import { afterEach, describe, expect, it } from 'vitest';
import { advance, cleanupMigration, rollbackMigration } from '../packages/cli/src/runner';
import { LiveWriter } from '../packages/cli/src/writer';
import { frozen, loadSample, newMigration, sleep, type TestRuntime, testRuntime } from './harness/migration';
import { freshPair, leftovers, type Pair, schemaShape } from './harness/pairs';

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

function startWriter(name: string, options: { url?: string } = {}) {
  const w = new LiveWriter({
    switchFile: options.url ? undefined : rt!.switchFile,
    url: options.url,
    name,
    intervalMs: 1,
  });
  w.start();
  writers.push(w);
  return w;
}

describe('migration with a live writer', () => {
  it.each([15, 16, 17] as const)(
    'keeps every acknowledged write across an automatic cutover, 15 → %i',
    async (version) => {
      pair = await freshPair(version, 'auto');
      rt = testRuntime();
      await loadSample(pair, 3000);
      const writer = startWriter('app');
      await sleep(300);
      const m = await newMigration(rt, pair, { cutover: 'auto' });
      const state = await advance(rt, m.id, { cutover: 'auto' });
      await sleep(500); // the application keeps writing on the target
      const stats = await writer.stop();

      expect(state.status).toBe('cut-over');
      expect(state.verify?.ok).toBe(true);
      expect(stats.acked).toBeGreaterThan(100);
      expect(stats.servers.length).toBe(2); // it really moved from the source to the target
      expect(await writer.lostWrites(pair.targetUrl)).toEqual([]);
      expect(stats.readYourWritesViolations).toBe(0);
      expect(stats.errors['23505'] ?? 0).toBe(0); // no duplicate keys: sequences were synced
      expect(state.cutover?.writeGapMs).toBeGreaterThan(0);
      // The look after the switch finds nothing left behind: the writer's writes on the target that
      // reverse replication carries back to the source are not mistaken for the source's own.
      expect((state.warnings ?? []).filter((w) => w.includes('not on the target'))).toEqual([]);
      // Every index, constraint and trigger is on the target, valid, whether it was built during the
      // copy (the bigger tables) or after it; the partitioned ones attached.
      expect(state.phases['bulk-load']?.summary).toMatch(/indexes of [1-9]\d* big tables built during the copy/);
      const shape = await schemaShape(pair.sourceUrl);
      expect(shape.indexes.length).toBeGreaterThan(8);
      expect(await schemaShape(pair.targetUrl)).toEqual(shape);

      // Every sequence on the target is at least its source value, owned or not.
      const src = await pair.source('SELECT sequencename, last_value FROM pg_sequences ORDER BY 1');
      const tgt = new Map(
        (await pair.target('SELECT sequencename, last_value FROM pg_sequences')).map((r) => [
          r.sequencename,
          r.last_value,
        ]),
      );
      for (const s of src)
        if (s.last_value !== null) expect(Number(tgt.get(s.sequencename))).toBeGreaterThanOrEqual(Number(s.last_value));
      // The not-owned sequence serves the target without a conflict.
      await pair.target('INSERT INTO invoices (order_id) SELECT max(id) FROM orders');

      // Reverse replication keeps the source current after cutover.
      await pair.target("INSERT INTO audit_log (actor, action) VALUES ('test', 'after-cutover')");
      await expect
        .poll(
          async () =>
            (await pair!.source("SELECT count(*)::int AS n FROM audit_log WHERE action = 'after-cutover'"))[0]?.n,
          { timeout: 10_000 },
        )
        .toBe(1);
      expect(await writer.lostWrites(pair.sourceUrl)).toEqual([]); // the writer's target writes reached the source too
      expect(await frozen(pair, 'source')).toBe(true);
      expect(await frozen(pair, 'target')).toBe(false);

      const cleaned = await cleanupMigration(rt, m.id);
      expect(cleaned.leftovers).toEqual([]);
      expect(await leftovers(pair)).toEqual([]);
    },
  );

  it('loses nothing when rolled back after cutover, and the source takes writes again', async () => {
    pair = await freshPair(15, 'rollback');
    rt = testRuntime();
    await loadSample(pair, 1000);
    // A descending sequence is further along when it is smaller.
    await pair.source(
      "CREATE SEQUENCE countdown INCREMENT BY -1 MAXVALUE -1 START -1; SELECT nextval('countdown') FROM generate_series(1, 5)",
    );
    const writer = startWriter('app');
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    await advance(rt, m.id, { cutover: 'auto' });
    expect(await pair.target("SELECT nextval('countdown')::int AS v")).toEqual([{ v: -6 }]);
    await pair.target("SELECT nextval('countdown') FROM generate_series(1, 9)");
    await sleep(400);
    const rolled = await rollbackMigration(rt, m.id);
    expect(await pair.source("SELECT nextval('countdown')::int AS v")).toEqual([{ v: -16 }]);
    await sleep(400);
    const stats = await writer.stop();

    expect(rolled.status).toBe('rolled-back');
    expect(stats.servers.length).toBe(3); // source → target → source
    expect(await writer.lostWrites(pair.sourceUrl)).toEqual([]);
    expect(stats.readYourWritesViolations).toBe(0);
    expect(stats.errors['23505'] ?? 0).toBe(0);
    expect(await frozen(pair, 'source')).toBe(false);
    await cleanupMigration(rt, m.id);
    expect(await leftovers(pair)).toEqual([]);
  });

  it('ends the sessions of a second role writing during the freeze and loses none of its writes', async () => {
    pair = await freshPair(15, 'roles');
    rt = testRuntime();
    await loadSample(pair, 500);
    await pair.source("CREATE ROLE other_app LOGIN PASSWORD 'other-secret'");
    await pair.source(
      'GRANT INSERT, SELECT ON writes TO other_app; GRANT USAGE ON SEQUENCE writes_id_seq TO other_app',
    );
    const app = startWriter('app');
    // This writer ignores the switch file: it keeps hammering the source as another role.
    const rogue = startWriter('other', { url: pair.sourceUrl.replace(/\/\/[^@]*@/, '//other_app:other-secret@') });
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    const state = await advance(rt, m.id, { cutover: 'auto' });
    const [a, r] = [await app.stop(), await rogue.stop()];
    expect(state.cutover?.sessionsEnded).toBeGreaterThanOrEqual(2);
    // Its writes before the freeze are on the target; after the freeze it got errors, not acknowledgements.
    expect(await rogue.lostWrites(pair.targetUrl)).toEqual([]);
    expect(await app.lostWrites(pair.targetUrl)).toEqual([]);
    expect(r.errors['25006'] ?? 0).toBeGreaterThan(0); // read-only transaction
    expect(a.acked).toBeGreaterThan(0);
  });
});
