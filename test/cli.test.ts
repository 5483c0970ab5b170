import { execFile, spawn } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { startServer } from '../packages/cli/src/local-servers';
import { frozen, loadSample } from './harness/migration';
import { freshPair, leftovers, type Pair, serverUrl } from './harness/pairs';

const BIN = resolve(__dirname, '../packages/cli/bin/pgferry.mjs');
let pair: Pair | undefined;
let cwd: string | undefined;

afterEach(async () => {
  await pair?.drop();
  if (cwd) rmSync(cwd, { recursive: true, force: true });
  pair = undefined;
  cwd = undefined;
});

function pgferry(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
  return new Promise((res) => {
    execFile(
      process.execPath,
      [BIN, ...args],
      { cwd, timeout: 120_000, env: { ...process.env, ...env } },
      (err, stdout, stderr) => {
        res({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
      },
    );
  });
}

/** Nothing pgferry could have created exists, and the source is writable. */
async function nothingLeft(p: Pair) {
  expect(await leftovers(p)).toEqual([]);
  expect(await frozen(p, 'source')).toBe(false);
  const tables = await p.target(
    "SELECT count(*)::int AS n FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
  );
  expect(tables[0]?.n).toBe(0);
}

describe('pgferry CLI', () => {
  it('prints help for every command and documents the exit codes', async () => {
    const main = await pgferry(['--help']);
    expect(main.code).toBe(0);
    for (const cmd of ['assess', 'migrate', 'status', 'cutover', 'rollback', 'cleanup', 'resume', 'demo'])
      expect(main.stdout).toContain(cmd);
    expect(main.stdout).toContain('4 assessment blocked');
    const migrate = await pgferry(['migrate', '--help']);
    expect(migrate.stdout).toContain('--max-lag-ms');
  });

  it('runs the bundle only while it is newer than every source, the sources through tsx otherwise', async () => {
    // A copy of the layout bin/pgferry.mjs looks at, with a bundle and sources that say which ran.
    const root = mkdtempSync(join(tmpdir(), 'pgferry-bin-'));
    try {
      symlinkSync(resolve(__dirname, '../node_modules'), join(root, 'node_modules'));
      const write = (path: string, text: string) => {
        mkdirSync(dirname(join(root, path)), { recursive: true });
        writeFileSync(join(root, path), text);
      };
      write('packages/cli/bin/pgferry.mjs', readFileSync(BIN, 'utf8'));
      write('packages/cli/package.json', '{ "type": "module" }\n');
      for (const pkg of ['core', 'postgres', 'cli']) write(`packages/${pkg}/src/index.ts`, 'export {};\n');
      write('packages/cli/src/main.ts', "export async function main() { console.log('sources'); return 0; }\n");
      write('packages/cli/dist/pgferry.mjs', "export async function main() { console.log('bundle'); return 0; }\n");
      const run = () =>
        new Promise<string>((res) =>
          execFile(process.execPath, [join(root, 'packages/cli/bin/pgferry.mjs')], (_, stdout) => res(stdout.trim())),
        );
      const past = new Date(Date.now() - 60_000);
      for (const pkg of ['core', 'postgres', 'cli']) utimesSync(join(root, `packages/${pkg}/src/index.ts`), past, past);
      for (const f of ['src/main.ts', 'package.json']) utimesSync(join(root, 'packages/cli', f), past, past);
      expect(await run()).toBe('bundle');
      // A source edited after the build: the bundle is older code and does not run.
      utimesSync(join(root, 'packages/postgres/src/index.ts'), new Date(), new Date(Date.now() + 1000));
      expect(await run()).toBe('sources');
      rmSync(join(root, 'packages/cli/dist'), { recursive: true });
      expect(await run()).toBe('sources');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('rejects a malformed URL naming --source, creating nothing', async () => {
    const r = await pgferry([
      'migrate',
      '--source',
      'postgres//nope',
      '--target',
      'postgres://u:p@127.0.0.1:1/x',
      '--yes',
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--source is not a valid URL');
    expect((await pgferry(['status'])).stdout).toContain('no migrations');
  });

  it('rejects an unknown flag and a missing --yes without a terminal', async () => {
    expect((await pgferry(['migrate', '--sorce', 'x'])).code).toBe(2);
    // A real option on the wrong command is not ignored either.
    const misplaced = await pgferry(['status', '--jobs', '3']);
    expect(misplaced.code).toBe(2);
    expect(misplaced.stderr).toContain('--jobs does not apply to pgferry status');
    const split = await pgferry(['migrate', '--split-table-mb', '0', '--source', 'x', '--target', 'y', '--yes']);
    expect(split.code).toBe(2);
    expect(split.stderr).toContain('--split-table-mb must be at least 1 (MiB)');
    pair = await freshPair(15, 'cliyes');
    const r = await pgferry(['migrate', '--source', pair.sourceUrl, '--target', pair.targetUrl]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('pass --yes');
    await nothingLeft(pair);
  });

  it('names --source and never prints the password when it is wrong', async () => {
    pair = await freshPair(15, 'clipw');
    const bad = pair.sourceUrl.replace(/:([^:@/]+)@/, ':wrong-secret-123@');
    const r = await pgferry(['migrate', '--source', bad, '--target', pair.targetUrl, '--yes']);
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('rejected the password for --source');
    expect(r.stdout + r.stderr).not.toContain('wrong-secret-123');
    expect(r.stdout + r.stderr).not.toContain(pair.sourceServer.password);
    await nothingLeft(pair);
    // No migration was recorded that could be neither resumed nor removed.
    expect(existsSync(join(cwd!, '.pgferry')) ? readdirSync(join(cwd!, '.pgferry')) : []).toEqual([]);
  });

  it('refuses a non-empty target before creating anything', async () => {
    pair = await freshPair(15, 'clinonempty');
    await loadSample(pair, 50);
    await pair.target('CREATE TABLE something_else (id int PRIMARY KEY)');
    const r = await pgferry(['migrate', '--source', pair.sourceUrl, '--target', pair.targetUrl, '--yes']);
    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(/not empty/);
    expect(await leftovers(pair)).toEqual([]);
    // Whatever happens, a database holding someone's data is never touched.
    expect(await pair.target("SELECT count(*)::int AS n FROM pg_tables WHERE tablename = 'something_else'")).toEqual([
      { n: 1 },
    ]);
    expect(await frozen(pair, 'source')).toBe(false);
  });

  it('refuses a table without primary key or replica identity, naming it (URLs from the environment)', async () => {
    pair = await freshPair(15, 'clinoid');
    await pair.source('CREATE TABLE no_key (a int, b text)');
    const r = await pgferry(['migrate', '--yes'], {
      PGFERRY_SOURCE_URL: pair.sourceUrl,
      PGFERRY_TARGET_URL: pair.targetUrl,
    });
    expect(r.code).toBe(4);
    expect(r.stderr).toContain('no_key');
    await nothingLeft(pair);
  });

  it('refuses a source role without the replication privilege', async () => {
    pair = await freshPair(15, 'clipriv');
    await loadSample(pair, 50);
    await pair.source("CREATE ROLE plain_user LOGIN PASSWORD 'plain-pw'");
    await pair.source('GRANT SELECT ON ALL TABLES IN SCHEMA public TO plain_user');
    const url = serverUrl(pair.sourceServer, pair.sourceDb, 'plain_user', 'plain-pw');
    const r = await pgferry(['migrate', '--source', url, '--target', pair.targetUrl, '--yes']);
    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(/REPLICATION|replication/);
    await nothingLeft(pair);
  });

  it('refuses a source with wal_level = replica, saying how to fix it', async () => {
    const server = await startServer({ version: 15, walLevel: 'replica', name: 'replica-only' });
    try {
      await server.query('CREATE DATABASE app');
      await server.query('CREATE TABLE t (id int PRIMARY KEY)', [], 'app');
      pair = await freshPair(15, 'cliwal');
      const r = await pgferry(['migrate', '--source', server.url('app'), '--target', pair.targetUrl, '--yes']);
      expect(r.code).toBe(4);
      expect(r.stderr).toContain('wal_level');
      expect(r.stderr).toMatch(/logical/);
      expect((await server.query('SELECT count(*)::int AS n FROM pg_replication_slots')).rows[0]?.n).toBe(0);
      expect((await server.query('SELECT count(*)::int AS n FROM pg_publication', [], 'app')).rows[0]?.n).toBe(0);
    } finally {
      await server.stop();
    }
  });

  it('stops caught up with --cutover manual, then cuts over and cleans up from another invocation', async () => {
    pair = await freshPair(17, 'climanual');
    await loadSample(pair, 300);
    cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
    const switchFile = join(cwd, 'url');
    const m = await pgferry([
      'migrate',
      '--source',
      pair.sourceUrl,
      '--target',
      pair.targetUrl,
      '--id',
      'climanual',
      '--switch-file',
      switchFile,
      '--yes',
    ]);
    expect(m.code).toBe(0);
    expect(m.stdout).toContain('pgferry cutover --id climanual');
    // Copy progress in bytes and rows (plain lines: stdout is not a terminal here).
    expect(m.stdout).toMatch(/copy: [\d.]+ [KMG]iB of ~[\d.]+ [KMG]iB, \d+k? of ~\d+k? rows \(\d+%\)/);
    expect(m.stdout + m.stderr).not.toContain(pair.sourceServer.password);
    const status = await pgferry(['status', '--id', 'climanual', '--json']);
    const last = JSON.parse(status.stdout.trim().split('\n').at(-1)!);
    expect(last.result.status).toBe('awaiting-cutover');
    // Caught up with no pgferry process: the subscription streams from the slot, nothing needs anyone.
    expect(last.result.live.source.slots).toEqual([
      expect.objectContaining({ name: 'pgferry_climanual', active: true }),
    ]);
    expect(last.result.live.target.subscriptions).toEqual([
      expect.objectContaining({ name: 'pgferry_climanual', enabled: true, workerRunning: true, applyErrors: 0 }),
    ]);
    expect(last.result.live.attention).toEqual([]);
    // A stopped subscription and a source left frozen are read from the servers, each with its remedy.
    await pair.target('ALTER SUBSCRIPTION pgferry_climanual DISABLE');
    await pair.source(`ALTER DATABASE ${pair.sourceDb} SET default_transaction_read_only = on`);
    for (let i = 0; i < 100 && (await pair.source('SELECT 1 FROM pg_replication_slots WHERE active')).length; i++)
      await new Promise((r) => setTimeout(r, 50));
    const stuck = await pgferry(['status', '--id', 'climanual']);
    expect(stuck.stdout).toContain('ATTENTION: subscription pgferry_climanual on the target is disabled');
    expect(stuck.stdout).toMatch(/ATTENTION: replication slot pgferry_climanual on the source is not being read/);
    expect(stuck.stdout).toContain(
      'ATTENTION: the source database, which the application writes to, is read-only (default_transaction_read_only) and no pgferry process is working on it: a cutover was interrupted',
    );
    await pair.source(`ALTER DATABASE ${pair.sourceDb} RESET default_transaction_read_only`);
    await pair.target('ALTER SUBSCRIPTION pgferry_climanual ENABLE');
    expect(JSON.stringify(last)).not.toContain(pair.targetServer.password);
    await pair.source('INSERT INTO orders (customer_id, amount) VALUES (1, 42)');
    const c = await pgferry(['cutover', '--id', 'climanual', '--report', 'report.json']);
    expect(c.code).toBe(0);
    expect(c.stdout).toMatch(/write gap: \d+ ms/);
    expect(readFileSync(switchFile, 'utf8').trim()).toBe(pair.targetUrl);
    const report = JSON.parse(readFileSync(join(cwd, 'report.json'), 'utf8'));
    expect(report.verify.ok).toBe(true);
    expect(JSON.stringify(report)).not.toContain(pair.sourceServer.password);
    const clean = await pgferry(['cleanup', '--id', 'climanual']);
    expect(clean.code).toBe(0);
    expect(await leftovers(pair)).toEqual([]);
    expect(existsSync(join(cwd, '.pgferry', 'artifacts', 'climanual'))).toBe(false); // the schema dump went too
    // A migration that is over stays as it is: resume and rollback say why, as invalid input.
    for (const command of ['resume', 'rollback']) {
      const late = await pgferry([command, '--id', 'climanual']);
      expect(late.code).toBe(2);
      expect(late.stderr).toMatch(/is cleaned-up; nothing to resume|was cleaned up/);
    }
    expect(JSON.parse(readFileSync(join(cwd, '.pgferry', 'climanual.json'), 'utf8')).status).toBe('cleaned-up');
  });

  it('resumes after the process is killed in the middle of the bulk load', async () => {
    pair = await freshPair(15, 'clikill');
    await loadSample(pair, 200_000);
    cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
    const args = [
      'migrate',
      '--source',
      pair.sourceUrl,
      '--target',
      pair.targetUrl,
      '--id',
      'killed',
      '--jobs',
      '2',
      // Its bigger tables go as ranges, so the kill and the resume meet split tables too.
      '--split-table-mb',
      '1',
      '--yes',
    ];
    const child = spawn(process.execPath, [BIN, ...args], { cwd, stdio: 'ignore' });
    const stateFile = join(cwd, '.pgferry', 'killed.json');
    const until = Date.now() + 60_000;
    // Kill -9 once the copy is under way (the slot exists and the state says bulk-load).
    while (Date.now() < until) {
      const phase = existsSync(stateFile) ? JSON.parse(readFileSync(stateFile, 'utf8')).phase : undefined;
      if (phase === 'bulk-load' && (await leftovers(pair)).includes('source slot pgferry_killed')) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    // While it runs, no other command may work on the same migration (it would roll back under it).
    const meanwhile = await pgferry(['rollback', '--id', 'killed']);
    expect(meanwhile.code).toBe(7);
    expect(meanwhile.stderr).toContain('migration killed is being worked on by another pgferry process');
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    // The servers notice the dead process's connections go within moments.
    const sessions = "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE 'pgferry:killed%'";
    for (let i = 0; i < 200 && ((await pair.source(sessions))[0]?.n || (await pair.target(sessions))[0]?.n); i++)
      await new Promise((r) => setTimeout(r, 50));
    expect(JSON.parse(readFileSync(stateFile, 'utf8')).config.splitTableBytes).toBe(1024 * 1024);
    const status = await pgferry(['status', '--id', 'killed']);
    expect(status.stdout).toMatch(/Bulk load\s+\(running or interrupted\)/);
    // After a kill -9 nothing reads the slot: status says so from the servers, and what to run.
    expect(status.stdout).toMatch(
      /ATTENTION: replication slot pgferry_killed on the source is not being read and retains [\d.]+ [KMG]iB of WAL, more with every write, until `pgferry resume --id killed` \(goes on\) or `pgferry rollback --id killed` \(drops it\)/,
    );
    expect(status.stdout).toContain('ATTENTION: no pgferry process is connected to either server');
    expect((await pgferry(['status', '--id', 'killed', '--offline'])).stdout).not.toContain('ATTENTION');
    // A pg_restore outlives a kill -9 of pgferry: such a session, still at work, is ended before the resume loads again.
    const orphan = new pg.Client({ connectionString: pair.targetUrl, application_name: 'pgferry:killed:pg_restore' });
    orphan.on('error', () => {});
    await orphan.connect();
    const sleeping = orphan.query('SELECT pg_sleep(60)').then(
      () => 'finished',
      () => 'ended',
    );
    const resumed = await pgferry(['resume', '--id', 'killed']);
    expect(await sleeping).toBe('ended');
    await orphan.end().catch(() => {});
    expect(resumed.stdout).toContain('ended 1 session(s) on the target left by a pgferry process that is gone');
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain('Caught up and replicating');
    for (const t of ['customers', 'orders', 'invoices', 'events', 'audit_log']) {
      const [s] = await pair.source(`SELECT count(*)::int AS n FROM ${t}`);
      const [d] = await pair.target(`SELECT count(*)::int AS n FROM ${t}`);
      expect(d?.n).toBe(s?.n);
    }
    expect((await leftovers(pair)).filter((l) => l.includes('slot')).sort()).toEqual(['source slot pgferry_killed']);
    expect((await pgferry(['rollback', '--id', 'killed'])).code).toBe(0);
    await nothingLeft(pair);
    const after = await pgferry(['status', '--id', 'killed']);
    expect(after.stdout).toContain('nothing needs attention');
    expect(after.stdout).toContain('source: database writable; no pgferry session');
  });

  it('drops the slot of an unfinished copy on Ctrl-C, so no WAL is retained until a resume starts again', async () => {
    pair = await freshPair(15, 'cliintcopy');
    await loadSample(pair, 200_000);
    cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
    const args = ['migrate', '--source', pair.sourceUrl, '--target', pair.targetUrl, '--id', 'ic', '--yes'];
    const child = spawn(process.execPath, [BIN, ...args], { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const stateFile = join(cwd, '.pgferry', 'ic.json');
    const until = Date.now() + 60_000;
    // Ctrl-C as soon as the slot exists: the copy of 200,000 rows has only begun.
    while (Date.now() < until) {
      const state = existsSync(stateFile) ? JSON.parse(readFileSync(stateFile, 'utf8')) : undefined;
      if (state?.phase === 'bulk-load' && state.slotLsn) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill('SIGINT');
    const code = await new Promise((r) => child.once('exit', (c) => r(c)));
    expect(code).toBe(130);
    expect(JSON.parse(readFileSync(stateFile, 'utf8')).dataLoadedAt).toBeUndefined();
    expect(stderr).toContain('SIGINT: dropped replication slot pgferry_ic of the unfinished copy');
    expect((await leftovers(pair)).filter((l) => l.includes('slot'))).toEqual([]);
    const resumed = await pgferry(['resume', '--id', 'ic']);
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain('Caught up and replicating');
    const [s] = await pair.source('SELECT count(*)::int AS n FROM orders');
    const [d] = await pair.target('SELECT count(*)::int AS n FROM orders');
    expect(d?.n).toBe(s?.n);
    expect((await pgferry(['rollback', '--id', 'ic'])).code).toBe(0);
    await nothingLeft(pair);
  });

  it('finishes, never undoes, a cutover whose process was killed while switching', async () => {
    pair = await freshPair(15, 'clikillswitch');
    await loadSample(pair, 200);
    cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
    const switchFile = join(cwd, 'url');
    // The first time the switch runs, the switch command kills pgferry itself (kill -9 of its parent).
    const onSwitch = `test -f ${join(cwd, 'killed-once')} || { touch ${join(cwd, 'killed-once')}; kill -9 $PPID; }`;
    const args = ['--source', pair.sourceUrl, '--target', pair.targetUrl, '--id', 'ks', '--switch-file', switchFile];
    expect((await pgferry(['migrate', ...args, '--on-switch', onSwitch, '--yes'])).code).toBe(0);
    const killed = await pgferry(['cutover', '--id', 'ks']);
    expect(killed.code).not.toBe(0);
    const half = JSON.parse(readFileSync(join(cwd, '.pgferry', 'ks.json'), 'utf8'));
    expect(half.cutover.switchStartedAt).toBeDefined();
    expect(half.cutover.switchAt).toBeUndefined();
    // The application may already write to the target: a rollback now would empty it, so it refuses.
    const status = await pgferry(['status', '--id', 'ks']);
    expect(status.stdout).toContain('ATTENTION: a cutover stopped while switching the application to the target');
    const refused = await pgferry(['rollback', '--id', 'ks']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('the application may already write there, so the target is not emptied');
    expect(refused.stderr).toContain('pgferry resume --id ks');
    const [{ n: orders }] = (await pair.target('SELECT count(*)::int AS n FROM orders')) as [{ n: number }];
    expect(orders).toBeGreaterThan(0);
    const resumed = await pgferry(['resume', '--id', 'ks']);
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain('switch finished after an interruption');
    expect(readFileSync(switchFile, 'utf8').trim()).toBe(pair.targetUrl);
    // The application is on the target and the source follows it: nothing went back.
    await pair.target("INSERT INTO audit_log (actor, action) VALUES ('app', 'after the interrupted switch')");
    await expect
      .poll(
        async () =>
          (
            await pair!.source("SELECT count(*)::int AS n FROM audit_log WHERE action = 'after the interrupted switch'")
          )[0]?.n,
        { timeout: 10_000 },
      )
      .toBe(1);
    expect(await frozen(pair, 'source')).toBe(true);
    expect((await pgferry(['cleanup', '--id', 'ks'])).code).toBe(0);
    expect(await leftovers(pair)).toEqual([]);
  });

  it('keeps the loaded target and replication when the switch command fails, and cuts over on the next try', async () => {
    pair = await freshPair(15, 'clionswitch');
    await loadSample(pair, 200);
    cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
    const once = join(cwd, 'failed-once');
    const onSwitch = `test -f ${once} || { touch ${once}; echo "load balancer said no" >&2; exit 3; }`;
    const args = ['--source', pair.sourceUrl, '--target', pair.targetUrl, '--id', 'os', '--on-switch', onSwitch];
    expect((await pgferry(['migrate', ...args, '--yes'])).code).toBe(0);
    const failed = await pgferry(['cutover', '--id', 'os']);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain('--on-switch command failed (exit 3): load balancer said no');
    // Nothing moved: the source writes, forward replication goes on, the loaded target stays.
    const state = JSON.parse(readFileSync(join(cwd, '.pgferry', 'os.json'), 'utf8'));
    expect(state.status).toBe('running');
    expect(state.cutover).toBeUndefined();
    expect(await frozen(pair, 'source')).toBe(false);
    await pair.source("INSERT INTO audit_log (actor, action) VALUES ('app', 'after the failed switch')");
    await expect
      .poll(
        async () =>
          (await pair!.target("SELECT count(*)::int AS n FROM audit_log WHERE action = 'after the failed switch'"))[0]
            ?.n,
        { timeout: 10_000 },
      )
      .toBe(1);
    const again = await pgferry(['cutover', '--id', 'os']);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('verify: OK');
  });

  it('does not undo a switch whose file already names the target when the switch command then fails', async () => {
    pair = await freshPair(15, 'cliswitchfile');
    await loadSample(pair, 200);
    cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
    const switchFile = join(cwd, 'url');
    const once = join(cwd, 'failed-once');
    const onSwitch = `test -f ${once} || { touch ${once}; exit 3; }`;
    const args = ['--source', pair.sourceUrl, '--target', pair.targetUrl, '--id', 'sf', '--switch-file', switchFile];
    expect((await pgferry(['migrate', ...args, '--on-switch', onSwitch, '--yes'])).code).toBe(0);
    const failed = await pgferry(['cutover', '--id', 'sf']);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain('the switch file already names the target, so the cutover is not undone');
    // The application may have followed the file and written to the target: that target is kept.
    expect(readFileSync(switchFile, 'utf8').trim()).toBe(pair.targetUrl);
    await pair.target("INSERT INTO audit_log (actor, action) VALUES ('app', 'followed the file')");
    const state = JSON.parse(readFileSync(join(cwd, '.pgferry', 'sf.json'), 'utf8'));
    expect(state.status).toBe('running');
    expect(state.cutover.switchStartedAt).toBeDefined();
    expect((await pgferry(['rollback', '--id', 'sf'])).code).toBe(1);
    const resumed = await pgferry(['resume', '--id', 'sf']);
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain('switch finished after an interruption');
    expect(
      (await pair.target("SELECT count(*)::int AS n FROM audit_log WHERE action = 'followed the file'"))[0]?.n,
    ).toBe(1);
    // ...and reaches the source through reverse replication, so a rollback would lose nothing.
    await expect
      .poll(
        async () =>
          (await pair!.source("SELECT count(*)::int AS n FROM audit_log WHERE action = 'followed the file'"))[0]?.n,
        { timeout: 10_000 },
      )
      .toBe(1);
  });

  it('undoes a rollback whose switch command fails: the application stays on a writable target, and a later rollback works', async () => {
    pair = await freshPair(15, 'clirbfail');
    await loadSample(pair, 200);
    cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
    const once = join(cwd, 'failed-once');
    const onSwitch = `[ "$PGFERRY_DIRECTION" = forward ] || test -f ${once} || { touch ${once}; exit 4; }`;
    const args = ['--source', pair.sourceUrl, '--target', pair.targetUrl, '--id', 'rf', '--on-switch', onSwitch];
    expect((await pgferry(['migrate', ...args, '--cutover', 'auto', '--yes'])).code).toBe(0);
    const failed = await pgferry(['rollback', '--id', 'rf']);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain('the switch back failed; the rollback was undone');
    expect(await frozen(pair, 'target')).toBe(false);
    expect(await frozen(pair, 'source')).toBe(true);
    expect(JSON.parse(readFileSync(join(cwd, '.pgferry', 'rf.json'), 'utf8')).rollback).toBeUndefined();
    // Reverse replication goes on: a write on the target still reaches the source.
    await pair.target("INSERT INTO audit_log (actor, action) VALUES ('app', 'after the failed rollback')");
    await expect
      .poll(
        async () =>
          (await pair!.source("SELECT count(*)::int AS n FROM audit_log WHERE action = 'after the failed rollback'"))[0]
            ?.n,
        { timeout: 10_000 },
      )
      .toBe(1);
    const again = await pgferry(['rollback', '--id', 'rf']);
    expect(again.code).toBe(0);
    expect(await frozen(pair, 'source')).toBe(false);
    expect(await frozen(pair, 'target')).toBe(true);
  });

  it('takes new credentials for the same servers after a password rotation, and refuses other servers', async () => {
    pair = await freshPair(15, 'clirotate');
    await loadSample(pair, 100);
    const role = `rot_${pair.targetDb.slice(-8)}`;
    await pair.target(`CREATE ROLE ${role} LOGIN SUPERUSER PASSWORD 'old-pw-1'`);
    const as = (pw: string) => pair!.targetUrl.replace(/\/\/[^@]*@/, `//${role}:${pw}@`);
    try {
      expect(
        (await pgferry(['migrate', '--source', pair.sourceUrl, '--target', as('old-pw-1'), '--id', 'rot', '--yes']))
          .code,
      ).toBe(0);
      await pair.target(`ALTER ROLE ${role} PASSWORD 'new-pw-2'`);
      const stale = await pgferry(['status', '--id', 'rot']);
      expect(stale.stdout).toContain('ATTENTION: could not check the target: the target rejected the password');
      // Another database is not a new password: refused, nothing changed.
      const other = await pgferry([
        'rollback',
        '--id',
        'rot',
        '--target',
        as('new-pw-2').replace(pair.targetDb, 'postgres'),
      ]);
      expect(other.code).toBe(2);
      expect(other.stderr).toContain('--target may only bring new credentials');
      // ...nor is one named by a parameter, as libpq reads it.
      const viaParam = await pgferry(['rollback', '--id', 'rot', '--target', `${as('new-pw-2')}?dbname=postgres`]);
      expect(viaParam.code).toBe(2);
      const rolled = await pgferry(['rollback', '--id', 'rot', '--target', as('new-pw-2')]);
      expect(rolled.code).toBe(0);
      expect(rolled.stdout + rolled.stderr).not.toContain('new-pw-2');
      expect(readFileSync(join(cwd!, '.pgferry', 'rot.secrets.json'), 'utf8')).toContain('new-pw-2');
      await nothingLeft(pair);
    } finally {
      await pair.drop();
      const { sql } = await import('./harness/pairs');
      await sql(serverUrl(pair.targetServer), `DROP ROLE IF EXISTS ${role}`);
    }
  });

  it("gives pgferry's subscription the new password after the source's is rotated, so replication goes on", async () => {
    pair = await freshPair(15, 'clirotsrc');
    await loadSample(pair, 50);
    const role = `rots_${pair.sourceDb.slice(-8)}`;
    await pair.source(`CREATE ROLE ${role} LOGIN SUPERUSER PASSWORD 'src-pw-1'`);
    const as = (pw: string) => pair!.sourceUrl.replace(/\/\/[^@]*@/, `//${role}:${pw}@`);
    try {
      expect(
        (await pgferry(['migrate', '--source', as('src-pw-1'), '--target', pair.targetUrl, '--id', 'rs', '--yes']))
          .code,
      ).toBe(0);
      // The password changes and the subscription's connection drops: it has to log in again.
      await pair.source(`ALTER ROLE ${role} PASSWORD 'src-pw-2'`);
      await pair.source(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'pgferry_rs' AND active_pid IS NOT NULL",
      );
      await pair.source("INSERT INTO customers (name, email) VALUES ('after rotation', 'rot@example.com')");
      const cut = await pgferry(['cutover', '--id', 'rs', '--source', as('src-pw-2')]);
      expect(cut.code).toBe(0);
      expect(cut.stdout + cut.stderr).toContain(
        'subscription pgferry_rs on the target now logs in with the new source credentials',
      );
      expect(await pair.target("SELECT count(*)::int AS n FROM customers WHERE email = 'rot@example.com'")).toEqual([
        { n: 1 },
      ]);
      expect((await pgferry(['cleanup', '--id', 'rs'])).code).toBe(0);
    } finally {
      await pair.drop();
      const { sql } = await import('./harness/pairs');
      await sql(serverUrl(pair.sourceServer), `DROP ROLE IF EXISTS ${role}`);
    }
  });

  it.each([
    ['SIGINT', 130],
    ['SIGTERM', 143],
    ['SIGHUP', 129],
  ] as const)('finishes the write gap before stopping on %s', async (signal, exitCode) => {
    pair = await freshPair(15, `cli${signal.toLowerCase()}`);
    await loadSample(pair, 200);
    cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
    const switchFile = join(cwd, 'url');
    const args = ['--source', pair.sourceUrl, '--target', pair.targetUrl, '--id', 'si', '--switch-file', switchFile];
    expect(
      (await pgferry(['migrate', ...args, '--on-switch', `touch ${join(cwd, 'switching')}; sleep 1`, '--yes'])).code,
    ).toBe(0);
    const child = spawn(process.execPath, [BIN, 'cutover', '--id', 'si'], { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const until = Date.now() + 30_000;
    while (!existsSync(join(cwd, 'switching')) && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    child.kill(signal); // the source is frozen right now
    const code = await new Promise((r) => child.once('exit', (c) => r(c)));
    expect(code).toBe(exitCode);
    expect(stderr).toContain(`${signal}: finishing the cutover write gap first`);
    const state = JSON.parse(readFileSync(join(cwd, '.pgferry', 'si.json'), 'utf8'));
    expect(state.cutover.switchAt).toBeDefined();
    expect(readFileSync(switchFile, 'utf8').trim()).toBe(pair.targetUrl);
    const resumed = await pgferry(['resume', '--id', 'si']);
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain('verify: OK');
  });

  it('completes a rollback whose process was killed while switching back', async () => {
    pair = await freshPair(16, 'clikillback');
    await loadSample(pair, 200);
    cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
    const switchFile = join(cwd, 'url');
    const once = join(cwd, 'killed-back');
    const onSwitch = `[ "$PGFERRY_DIRECTION" = forward ] || test -f ${once} || { touch ${once}; kill -9 $PPID; }`;
    const args = ['--source', pair.sourceUrl, '--target', pair.targetUrl, '--id', 'kb', '--switch-file', switchFile];
    expect((await pgferry(['migrate', ...args, '--on-switch', onSwitch, '--cutover', 'auto', '--yes'])).code).toBe(0);
    await pair.target("INSERT INTO audit_log (actor, action) VALUES ('app', 'on the target')");
    expect((await pgferry(['rollback', '--id', 'kb'])).code).not.toBe(0); // killed mid-switch
    // The target is frozen: status says so, and resume does not pretend the application is on it.
    const status = await pgferry(['status', '--id', 'kb']);
    expect(status.stdout).toContain('ATTENTION: a rollback began at');
    expect(status.stdout).toContain('Run `pgferry rollback --id kb` to finish it.');
    const resumed = await pgferry(['resume', '--id', 'kb']);
    expect(resumed.code).toBe(2);
    expect(resumed.stderr).toContain('pgferry rollback --id kb');
    // Nor may a clean-up drop the reverse replication the unfinished rollback needs.
    expect((await pgferry(['cleanup', '--id', 'kb'])).code).toBe(2);
    const again = await pgferry(['rollback', '--id', 'kb']);
    expect(again.code).toBe(0);
    expect(readFileSync(switchFile, 'utf8').trim()).toBe(pair.sourceUrl);
    expect(await frozen(pair, 'source')).toBe(false);
    expect(await pair.source("SELECT count(*)::int AS n FROM audit_log WHERE action = 'on the target'")).toEqual([
      { n: 1 },
    ]);
    expect((await pgferry(['cleanup', '--id', 'kb'])).code).toBe(0);
    expect(await leftovers(pair)).toEqual([]);
  });
});
