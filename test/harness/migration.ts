import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';
import { advance, createMigration, type Runtime } from '../../packages/cli/src/runner';
import { sampleData, sampleSchema } from '../../packages/cli/src/sample';
import { FileMigrationStore } from '../../packages/cli/src/store';
import { LiveWriter } from '../../packages/cli/src/writer';
import type { MigrationConfigInput } from '../../packages/core/src/index';
import type { FaultPoints } from '../../packages/postgres/src/index';
import { freshPair, type Pair, type SourceVersion, type TargetVersion } from './pairs';

let counter = 0;

export interface TestRuntime extends Runtime {
  logs: string[];
  dir: string;
  switchFile: string;
  dispose(): void;
}

/** A runtime writing state to a temp dir and collecting log lines instead of printing them. */
export function testRuntime(): TestRuntime {
  const dir = mkdtempSync(join(tmpdir(), 'pgferry-test-'));
  const logs: string[] = [];
  const switchFile = join(dir, 'database-url');
  return {
    dir,
    logs,
    switchFile,
    stateDir: join(dir, 'state'),
    store: new FileMigrationStore(join(dir, 'state')),
    events: {
      log: (m) => logs.push(m),
      phase: (p, e, s) => logs.push(`${e} ${p}${s ? `: ${s}` : ''}`),
    },
    dispose: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export async function loadSample(pair: Pair, rows = 2000) {
  await pair.source(sampleSchema(pair.sourceServer.version));
  await pair.source(sampleData(rows));
}

/** Fast gates for tests: small lag threshold windows, short sampling. */
export async function newMigration(rt: TestRuntime, pair: Pair, extra: Partial<MigrationConfigInput> = {}) {
  writeFileSync(rt.switchFile, `${pair.sourceUrl}\n`);
  return createMigration(rt, {
    id: `t${Date.now().toString(36)}${counter++}`,
    sourceUrl: pair.sourceUrl,
    targetUrl: pair.targetUrl,
    jobs: 2,
    maxLagMs: 1000,
    lagSamples: 2,
    lagSampleIntervalMs: 100,
    catchUpTimeoutMs: 60_000,
    switchFile: rt.switchFile,
    splitTableBytes: 64 * 1024,
    earlyIndexBytes: 64 * 1024, // the bigger sample tables take the during-the-copy index path
    ...extra,
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A point a task is held at (a fault point's body: `await point.hold()`): `reached` resolves once the
 * task is there, `release()` lets it (and every later arrival) go on.
 */
export function holdPoint() {
  let reach!: () => void;
  const reached = new Promise<void>((r) => {
    reach = r;
  });
  let release!: () => void;
  const released = new Promise<void>((r) => {
    release = r;
  });
  return {
    reached,
    release,
    async hold() {
      reach();
      await released;
    },
  };
}

/** Is the database frozen (default_transaction_read_only set on it)? */
export async function frozen(pair: Pair, side: 'source' | 'target'): Promise<boolean> {
  const rows = await pair[side](
    "SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = current_database() AND 'default_transaction_read_only=on' = ANY (s.setconfig)",
  );
  return rows.length > 0;
}

/**
 * A test file's pair of fresh databases and runtime, made by `setup` and dropped after each test, with
 * the live writers it started stopped first.
 */
export function migrationFixture() {
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
  return {
    async setup(label: string, rows = 500, targetVersion: TargetVersion = 15, sourceVersion: SourceVersion = 15) {
      pair = await freshPair(targetVersion, label, sourceVersion);
      rt = testRuntime();
      await loadSample(pair, rows);
      return { pair, rt };
    },
    /** A writer committing through the runtime's switch file, stopped after the test. */
    writer(r: TestRuntime, intervalMs = 1) {
      const w = new LiveWriter({ switchFile: r.switchFile, name: 'app', intervalMs });
      w.start();
      writers.push(w);
      return w;
    },
  };
}

/**
 * A migration caught up and awaiting its cutover, its verify before the switch not done yet (the
 * state as it was before that step), and fault points that hold that verify inside its reads.
 */
export async function verifyHeldAtRead(rt: TestRuntime, pair: Pair) {
  const m = await newMigration(rt, pair, { cutover: 'manual' });
  await advance(rt, m.id, { cutover: 'manual' });
  await rt.store.put({ ...(await rt.store.get(m.id)), verifyBeforeSwitch: undefined });
  const point = holdPoint();
  const faults: FaultPoints = {
    verifyReader: async (p) => {
      if (p.stage === 'reading') await point.hold();
    },
  };
  return { m, point, faults };
}
