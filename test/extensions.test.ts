import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openSession } from '../packages/cli/src/runner';
import {
  assess,
  bulkLoad,
  catchUp,
  cleanup,
  cutover,
  prepareSchema,
  startReplication,
  verify,
} from '../packages/postgres/src/index';
import { loadSample, newMigration, type TestRuntime, testRuntime } from './harness/migration';
import { freshPair, leftovers, type Pair } from './harness/pairs';

/**
 * An extension with configuration tables (`pg_extension_config_dump`), as pg_partman's part_config,
 * pg_cron's jobs or PostGIS's spatial_ref_sys are: the user's rows live in the extension's tables.
 * The source and the 15 target are Debian's PostgreSQL 15, whose extension directory this installs
 * into for the length of the file (CI runs as root).
 */
const EXTENSION_DIR = '/usr/share/postgresql/15/extension';
const NAME = 'pgferry_cfgtest';
const SCRIPT = `
CREATE TABLE cfg_settings (id serial PRIMARY KEY, name text NOT NULL UNIQUE, value text, builtin boolean NOT NULL DEFAULT false);
INSERT INTO cfg_settings (name, value, builtin) VALUES ('default-a', 'a', true), ('default-b', 'b', true);
SELECT pg_catalog.pg_extension_config_dump('cfg_settings', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('cfg_settings_id_seq', '');
CREATE TABLE cfg_jobs (id bigserial PRIMARY KEY, cmd text NOT NULL);
SELECT pg_catalog.pg_extension_config_dump('cfg_jobs', '');
CREATE TABLE cfg_cache (k int PRIMARY KEY, v text);
`;
const VERSION_11 = "CREATE FUNCTION cfg_version() RETURNS text LANGUAGE sql AS $$ SELECT '1.1'::text $$;\n";
const FILES: Record<string, string> = {
  [`${NAME}.control`]:
    "comment = 'pgferry test: an extension with configuration tables'\ndefault_version = '1.1'\nrelocatable = true\n",
  [`${NAME}--1.0.sql`]: SCRIPT,
  [`${NAME}--1.1.sql`]: SCRIPT + VERSION_11,
  [`${NAME}--1.0--1.1.sql`]: VERSION_11,
  // A stand-in for pg_cron (whose scheduler runs the jobs of its configuration table cron.job).
  'pg_cron.control': "comment = 'pgferry test: stands in for pg_cron'\ndefault_version = '1.0'\nrelocatable = false\n",
  'pg_cron--1.0.sql': `
CREATE SCHEMA cron;
CREATE TABLE cron.job (jobid bigserial PRIMARY KEY, schedule text NOT NULL, command text NOT NULL);
SELECT pg_catalog.pg_extension_config_dump('cron.job', '');
SELECT pg_catalog.pg_extension_config_dump('cron.job_jobid_seq', '');
`,
};

beforeAll(() => {
  if (existsSync(join(EXTENSION_DIR, 'pg_cron.control')))
    throw new Error(
      `${EXTENSION_DIR} holds a real pg_cron, which this test would overwrite with its stand-in: run the tests on a machine without postgresql-15-cron`,
    );
  for (const [file, text] of Object.entries(FILES)) {
    try {
      writeFileSync(join(EXTENSION_DIR, file), text);
    } catch (err) {
      throw new Error(
        `this test installs a test extension into ${EXTENSION_DIR} and needs write access there (run as root, as CI does): ${err}`,
      );
    }
  }
});

afterAll(() => {
  for (const file of Object.keys(FILES)) rmSync(join(EXTENSION_DIR, file), { force: true });
});

let pair: Pair | undefined;
let rt: TestRuntime | undefined;
afterEach(async () => {
  await pair?.drop();
  rt?.dispose();
  pair = undefined;
  rt = undefined;
});

const rows = async (p: Pair, side: 'source' | 'target', table: string) => p[side](`SELECT * FROM ${table} ORDER BY id`);

describe('extension configuration tables', () => {
  for (const strategy of ['snapshot', 'dump', 'native'] as const) {
    it(`copies, replicates, verifies and syncs the sequences of an extension's configuration tables (${strategy})`, async () => {
      pair = await freshPair(15, `extcfg_${strategy}`);
      rt = testRuntime();
      await loadSample(pair, 20);
      await pair.source(`CREATE EXTENSION ${NAME};
        INSERT INTO cfg_settings (name, value) VALUES ('mine-1', '1'), ('mine-2', '2');
        UPDATE cfg_settings SET value = 'changed' WHERE name = 'default-a';
        INSERT INTO cfg_jobs (cmd) VALUES ('vacuum'), ('analyze');
        INSERT INTO cfg_cache VALUES (1, 'the extension''s own')`);
      const m = await newMigration(rt, pair, { cutover: 'manual', strategy });
      const session = await openSession(rt, m.id);
      const { ctx } = session;
      try {
        if (strategy === 'snapshot') {
          const found = (await assess(ctx.source, ctx.target)).findings.filter(
            (f) => f.code === 'extension-configuration-table',
          );
          expect(found.map((f) => f.object)).toEqual(['public.cfg_jobs', 'public.cfg_settings']);
        }
        await prepareSchema(ctx);
        await bulkLoad(ctx);
        await startReplication(ctx);
        // Changes during catch-up reach the target too.
        await pair.source(`INSERT INTO cfg_settings (name, value) VALUES ('during', 'x');
          DELETE FROM cfg_jobs WHERE cmd = 'vacuum'; INSERT INTO cfg_jobs (cmd) VALUES ('reindex');
          UPDATE cfg_settings SET value = 'again' WHERE name = 'mine-1'`);
        await catchUp(ctx);
        await cutover(ctx);
        expect(await verify(ctx)).toMatch(/checksums match/);
        // The target's tables equal the source's, the extension's own rows included.
        expect(await rows(pair, 'target', 'cfg_settings')).toEqual(await rows(pair, 'source', 'cfg_settings'));
        expect((await rows(pair, 'target', 'cfg_settings')).map((r) => r.name)).toEqual([
          'default-a',
          'default-b',
          'mine-1',
          'mine-2',
          'during',
        ]);
        expect(await rows(pair, 'target', 'cfg_jobs')).toEqual(await rows(pair, 'source', 'cfg_jobs'));
        // A member table that is not a configuration table is the extension's business: not copied.
        expect(await pair.target('SELECT count(*)::int AS n FROM cfg_cache')).toEqual([{ n: 0 }]);
        // The sequences were synced: the application's next rows on the target take new keys.
        const [job] = await pair.target("INSERT INTO cfg_jobs (cmd) VALUES ('after') RETURNING id::int AS id");
        expect(job?.id).toBe(4);
        const [setting] = await pair.target("INSERT INTO cfg_settings (name) VALUES ('after') RETURNING id");
        expect(setting?.id).toBe(6);
        expect(await cleanup(ctx)).toMatch(/nothing left behind/);
        expect(await leftovers(pair)).toEqual([]);
      } finally {
        await session.close();
      }
    });
  }

  it('says when the target would create another version of an extension whose configuration tables it copies', async () => {
    pair = await freshPair(15, 'extcfg_version');
    rt = testRuntime();
    await pair.source(`CREATE EXTENSION ${NAME} VERSION '1.0'`);
    const m = await newMigration(rt, pair);
    const session = await openSession(rt, m.id);
    try {
      const found = (await assess(session.ctx.source, session.ctx.target)).findings.find(
        (f) => f.code === 'extension-version',
      );
      expect(found?.message).toMatch(
        /extension pgferry_cfgtest is version 1\.0 on the source; the schema restore creates version 1\.1 on the target\. Its configuration tables \(public\.cfg_jobs, public\.cfg_settings\) are copied/,
      );
      expect(found?.hint).toBe(
        "bring both to one version first: ALTER EXTENSION pgferry_cfgtest UPDATE TO '1.1' on the source, if that version is installed there",
      );
    } finally {
      await session.close();
    }
  });

  for (const strategy of ['snapshot', 'dump'] as const) {
    it(`leaves a scheduler's jobs (pg_cron) on the source, with a warning, so the target does not run them too (${strategy})`, async () => {
      pair = await freshPair(15, `extcron_${strategy}`);
      rt = testRuntime();
      await loadSample(pair, 10);
      await pair.source(`CREATE EXTENSION pg_cron;
        INSERT INTO cron.job (schedule, command) VALUES ('* * * * *', 'DELETE FROM events WHERE true')`);
      const m = await newMigration(rt, pair, { cutover: 'manual', strategy });
      const session = await openSession(rt, m.id);
      const { ctx } = session;
      try {
        const found = (await assess(ctx.source, ctx.target)).findings.filter((f) => f.code === 'scheduler-extension');
        expect(found.map((f) => [f.level, f.object])).toEqual([['warning', 'pg_cron']]);
        await prepareSchema(ctx);
        await bulkLoad(ctx);
        await startReplication(ctx);
        await pair.source("INSERT INTO cron.job (schedule, command) VALUES ('0 * * * *', 'VACUUM')");
        await catchUp(ctx);
        await cutover(ctx);
        expect(await verify(ctx)).toMatch(/checksums match/);
        expect(await pair.target('SELECT count(*)::int AS n FROM cron.job')).toEqual([{ n: 0 }]);
        expect(await cleanup(ctx)).toMatch(/nothing left behind/);
      } finally {
        await session.close();
      }
    });
  }
});
