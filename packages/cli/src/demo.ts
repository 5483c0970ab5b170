/**
 * `pgferry demo`: two local servers, a sample database, live writers, an automatic cutover, and an
 * exact check of every acknowledged write. Cleans up after itself, so it can run again and again.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EXIT_CODES, newMigrationId } from '@pgferry/core';
import { type LocalServer, startServer } from './local-servers';
import type { Output } from './output';
import { advance, cleanupMigration, createMigration, type Runtime } from './runner';
import { SAMPLE_SCHEMA, sampleData } from './sample';
import { FileMigrationStore } from './store';
import { LiveWriter } from './writer';

export interface DemoOptions {
  targetVersion: 15 | 16 | 17;
  rows: number;
  out: Output;
}

export async function runDemo(o: DemoOptions): Promise<number> {
  const { out } = o;
  const work = mkdtempSync(join(tmpdir(), 'pgferry-demo-'));
  const servers: LocalServer[] = [];
  const writers: LiveWriter[] = [];
  try {
    out.log(`starting a PostgreSQL 15 source and a PostgreSQL ${o.targetVersion} target on loopback`);
    const [source, target] = await Promise.all([
      startServer({ version: 15, name: 'demo-source' }),
      startServer({ version: o.targetVersion, name: 'demo-target' }),
    ]);
    servers.push(source, target);
    await source.query('CREATE DATABASE shop');
    await target.query('CREATE DATABASE shop');
    out.log(`loading the sample database (${o.rows} orders, customers, invoices, partitioned events, audit log)`);
    await source.query(SAMPLE_SCHEMA, [], 'shop');
    await source.query(sampleData(o.rows), [], 'shop');

    const switchFile = join(work, 'database-url');
    writeFileSync(switchFile, `${source.url('shop')}\n`);
    for (const name of ['app-1', 'app-2']) {
      const w = new LiveWriter({ switchFile, name, intervalMs: 2 });
      w.start();
      writers.push(w);
    }
    out.log('two live writers are committing through the switch file; migrating with --cutover auto');

    const stateDir = join(work, 'state');
    const rt: Runtime = { store: new FileMigrationStore(stateDir), stateDir, events: out };
    const state = await createMigration(rt, {
      id: newMigrationId(),
      sourceUrl: source.url('shop'),
      targetUrl: target.url('shop'),
      cutover: 'auto',
      maxLagMs: 500,
      lagSamples: 3,
      lagSampleIntervalMs: 200,
      switchFile,
    });
    const final = await advance(rt, state.id, { cutover: 'auto' });
    // Let the application run on the target for a moment, as it would after a real cutover.
    await new Promise((r) => setTimeout(r, 1500));
    const stats = await Promise.all(writers.map((w) => w.stop()));
    const lost = (await Promise.all(writers.map((w) => w.lostWrites(target.url('shop'))))).flat();
    const acked = stats.reduce((s, x) => s + x.acked, 0);
    const ryw = stats.reduce((s, x) => s + x.readYourWritesViolations, 0);
    const pause = Math.max(...stats.map((x) => x.maxPauseMs));
    const cleaned = await cleanupMigration(rt, state.id);

    const summary = {
      migration: final.id,
      versions: `${final.sourceVersion} → ${final.targetVersion}`,
      acknowledgedWrites: acked,
      lostWrites: lost.length,
      writeGapMs: final.cutover?.writeGapMs,
      longestWriterPauseMs: pause,
      readYourWritesViolations: ryw,
      verify: final.verify?.ok ? 'ok' : 'MISMATCH',
      leftBehind: cleaned.leftovers ?? [],
    };
    out.result(
      summary,
      [
        '',
        `migration ${final.id}: PostgreSQL ${summary.versions}, ${final.rowsCopied ?? 0} rows copied`,
        `acknowledged writes: ${acked} (by 2 writers, before, during and after the cutover)`,
        `lost writes: ${lost.length}`,
        `write gap: ${summary.writeGapMs} ms`,
        `longest pause seen by a writer: ${pause} ms`,
        `read-your-writes violations across the switch: ${ryw}`,
        `verify: ${summary.verify}`,
        `left behind after clean-up: ${summary.leftBehind.length ? summary.leftBehind.join(', ') : 'nothing'}`,
      ].join('\n'),
    );
    return lost.length === 0 && ryw === 0 && final.verify?.ok ? EXIT_CODES.ok : EXIT_CODES.failed;
  } finally {
    for (const w of writers) await w.stop().catch(() => {});
    await Promise.allSettled(servers.map((s) => s.stop()));
    rmSync(work, { recursive: true, force: true });
  }
}
