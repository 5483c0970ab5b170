import { execFile, spawn } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { startServer } from '../packages/cli/src/local-servers';
import { advance, openSession } from '../packages/cli/src/runner';
import { frozen, loadSample, newMigration, testRuntime } from './harness/migration';
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

/**
 * A migration of a fresh 200-row pair caught up by `migrate`, then `pgferry cutover` spawned and waited
 * for until it is inside its write gap: its --on-switch touches a file, then sleeps `sleepS` seconds.
 */
async function cutoverInWriteGap(label: string, id: string, sleepS: number) {
  const p = await freshPair(15, label);
  pair = p;
  await loadSample(p, 200);
  cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
  const dir = cwd;
  const switchFile = join(dir, `url-${id}`);
  const switching = join(dir, `switching-${id}`);
  const args = ['--source', p.sourceUrl, '--target', p.targetUrl, '--id', id, '--switch-file', switchFile];
  const onSwitch = `touch ${switching}; sleep ${sleepS}`;
  expect((await pgferry(['migrate', ...args, '--on-switch', onSwitch, '--yes'])).code).toBe(0);
  const child = spawn(process.execPath, [BIN, 'cutover', '--id', id], {
    cwd: dir,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const until = Date.now() + 30_000;
  while (!existsSync(switching) && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  return { child, exited, stderr: () => stderr, switchFile, pair: p, dir };
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
    // --version: the CLI package's own, as text and as JSON.
    const { version } = JSON.parse(readFileSync(resolve(__dirname, '../packages/cli/package.json'), 'utf8'));
    const v = await pgferry(['--version']);
    expect([v.code, v.stdout.trim()]).toEqual([0, `pgferry ${version} (Node ${process.version})`]);
    for (const args of [
      ['--version', 'status'],
      ['status', '--version'],
    ])
      expect((await pgferry(args)).stdout.trim()).toBe(`pgferry ${version} (Node ${process.version})`);
    const json = await pgferry(['--version', '--json']);
    expect(JSON.parse(json.stdout.trim()).result).toEqual({ version, node: process.version });
    expect(main.stdout).toContain('--version');
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
      write('packages/cli/dist/pgferry-sfn.mjs', 'export {};\n');
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
    // Checked before the confirmation is asked for (or, without a terminal, refused): every problem
    // at once, never a question about a migration that cannot start.
    const unasked = await pgferry(['migrate', '--source', 'postgres//nope', '--cutover', 'sometimes']);
    expect(unasked.code).toBe(2);
    expect(unasked.stderr).toContain('--source is not a valid URL');
    expect(unasked.stderr).toContain('--cutover must be auto or manual');
    expect(unasked.stderr).not.toContain('--yes');
    // On a terminal (script(1) gives it one): "n" is not confirming, exit 2 saying so; Ctrl-C at the
    // question exits 130. Nothing is created either way. (Both were exit 1, "n" without a word.)
    const urls = '--source postgres://u:p@127.0.0.1:1/a --target postgres://u:p@127.0.0.1:2/b';
    const onTerminal = (keys: string) =>
      new Promise<{ code: number | null; out: string }>((res, rej) => {
        const child = spawn('script', ['-qec', `"${process.execPath}" "${BIN}" migrate ${urls}`, '/dev/null'], {
          cwd,
        });
        let out = '';
        let answered = false;
        // The answer is typed once: written again on each later chunk, it met a closed pipe once
        // the command had exited (EPIPE, an unhandled error that failed CI).
        child.stdin.on('error', rej);
        child.stdout.on('data', (d) => {
          out += d;
          if (!answered && out.includes('[y/N]')) {
            answered = true;
            child.stdin.write(keys);
          }
        });
        child.on('close', (code) => res({ code, out }));
      });
    const declined = await onTerminal('n\n');
    expect(declined.code).toBe(2);
    expect(declined.out).toContain('not confirmed: nothing was created');
    const interrupted = await onTerminal('\u0003');
    expect(interrupted.code).toBe(130);
    expect(interrupted.out).toContain('not confirmed (Ctrl-C): nothing was created');
    expect((await pgferry(['status'])).stdout).toContain('no migrations');
    // --json before the command, as people write it: the same as after it (it said the command takes no positional arguments).
    const leading = await pgferry(['--json', 'status']);
    expect(leading.code).toBe(0);
    expect(JSON.parse(leading.stdout)).toMatchObject({ event: 'result', result: [] });
  });

  it('checks --switch-file, --report and --state-dir before creating anything, naming the flag', async () => {
    cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
    const urls = ['--source', 'postgres://u:p@127.0.0.1:1/a', '--target', 'postgres://u:p@127.0.0.1:2/b', '--yes'];
    symlinkSync(join(cwd, 'no-such-dir', 'url'), join(cwd, 'link-url'));
    const cases: [string[], string, RegExp][] = [
      [['--switch-file', join(cwd, 'no-such-dir', 'url')], '--switch-file', /does not exist/],
      [['--switch-file', cwd], '--switch-file', /is a directory/],
      [['--switch-file', ''], '--switch-file', /empty/],
      // A link is written where it points: a directory there that does not exist is named up front.
      [['--switch-file', join(cwd, 'link-url')], '--switch-file', /no-such-dir.* does not exist/],
      [['--report', join(cwd, 'no-such-dir', 'r.json')], '--report', /does not exist/],
      [['--report', ''], '--report', /empty/],
    ];
    for (const [args, field, problem] of cases) {
      const r = await pgferry(['migrate', ...urls, ...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toContain(field);
      expect(r.stderr).toMatch(problem);
    }
    const cutover = await pgferry(['cutover', '--id', 'someid', '--report', join(cwd, 'nope', 'r.json')]);
    expect(cutover.code).toBe(2);
    expect(cutover.stderr).toContain('--report');
    expect(existsSync(join(cwd, '.pgferry'))).toBe(false);
    expect(readdirSync(cwd).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    // A state dir that is a file: named, for every command.
    writeFileSync(join(cwd, 'state-file'), '');
    for (const command of [['status'], ['migrate', ...urls]]) {
      const r = await pgferry([...command, '--state-dir', join(cwd, 'state-file')]);
      expect(r.code, command[0]).toBe(2);
      expect(r.stderr).toContain('--state-dir');
      expect(r.stderr).toContain('is a file');
    }
    // A link to nowhere: named as such.
    symlinkSync(join(cwd, 'nowhere'), join(cwd, 'state-link'));
    const dangling = await pgferry(['migrate', ...urls, '--state-dir', join(cwd, 'state-link')]);
    expect(dangling.code).toBe(2);
    expect(dangling.stderr).toContain(`is a link to ${join(cwd, 'nowhere')}, which does not exist`);
    // One that cannot be made: refused at once, naming why (under /proc Node's recursive mkdir looped for ever).
    const proc = await pgferry(['migrate', ...urls, '--state-dir', '/proc/pgferry-state']);
    expect(proc.code).toBe(2);
    expect(proc.stderr).toContain('--state-dir /proc/pgferry-state cannot be made (ENOENT)');
  });

  it('validates --id wherever it is given, and names an unreadable state file', async () => {
    cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
    mkdirSync(join(cwd, '.pgferry'));
    writeFileSync(join(cwd, 'outside.json'), '{}');
    for (const command of ['status', 'resume', 'rollback', 'cleanup', 'cutover']) {
      const r = await pgferry([command, '--id', '../outside', ...(command === 'status' ? ['--offline'] : [])]);
      expect(r.code, command).toBe(2);
      expect(r.stderr).toContain('--id "../outside" is not a migration id');
    }
    for (const option of ['--id', '--source']) {
      const empty = await pgferry(['status', option, '']);
      expect(empty.code, option).toBe(2);
      expect(empty.stderr).toContain(`${option} is empty`);
    }
    writeFileSync(join(cwd, '.pgferry', 'broken.json'), '{"id": "broken", "vers');
    const one = await pgferry(['status', '--id', 'broken', '--offline']);
    expect(one.code).toBe(2);
    expect(one.stderr).toContain(
      `the state file ${join(cwd, '.pgferry', 'broken.json')} of migration broken is unreadable`,
    );
    expect(one.stderr).toContain('restore');
    const all = await pgferry(['status']);
    expect(all.code).toBe(0);
    expect(all.stdout).toContain('broken  UNREADABLE');
    // A state file that is a directory, and a --state-dir under a file: named, exit 2, never a raw
    // EISDIR / ENOTDIR with exit 1 (the code for a failed, rolled back migration).
    mkdirSync(join(cwd, '.pgferry', 'dirlike.json'));
    const dirlike = await pgferry(['status', '--id', 'dirlike', '--offline']);
    expect(dirlike.code).toBe(2);
    expect(dirlike.stderr).toContain(`cannot read the state file ${join(cwd, '.pgferry', 'dirlike.json')}`);
    const under = await pgferry(['status', '--state-dir', join(cwd, '.pgferry', 'broken.json', 'x')]);
    expect(under.code).toBe(2);
    expect(under.stderr).toMatch(/--state-dir .* cannot be used \(ENOTDIR\)/);
  });

  it('refuses an --id that exists as invalid input (exit 2), not as a conflict to retry', async () => {
    pair = await freshPair(15, 'cliidreuse');
    cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
    mkdirSync(join(cwd, '.pgferry'));
    writeFileSync(join(cwd, '.pgferry', 'taken.json'), '{}');
    const urls = ['--source', pair.sourceUrl, '--target', pair.targetUrl];
    const r = await pgferry(['migrate', ...urls, '--id', 'taken', '--yes']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--id taken: migration taken already exists');
    expect(readFileSync(join(cwd, '.pgferry', 'taken.json'), 'utf8')).toBe('{}');
  });

  it('checks URLs the same way in assess and migrate: scheme, port, sslmode, unknown parameters', async () => {
    const ok = 'postgres://u:p@127.0.0.1:1/db';
    const cases: [string, RegExp][] = [
      ['notaurl', /--source is not a valid URL/],
      ['host=127.0.0.1 dbname=db user=u', /--source is a key=value connection string/],
      ['postgres://u:p@127.0.0.1:99999/db', /--source is not a valid URL.*port/],
      ['http://u:p@127.0.0.1:1/db', /--source must start with postgres:\/\//],
      [`${ok}?sslmode=bogus`, /--source has sslmode=bogus; sslmode must be one of disable/],
      [`${ok}?sslmod=require`, /--source has an unknown parameter "sslmod"/],
      // (Accepted, its password was shown and stored in full: redaction ends a URL at white space.)
      ['postgres://u:SEK RET@127.0.0.1:1/db', /--source holds white space.*%20/],
      ['postgres://u:SEK\u00a0RET@127.0.0.1:1/db', /--source holds white space/],
      [`${ok}?password=a b`, /--source holds white space/],
      // libpq ends the password at the first @ (pg_dump failed late), a URL parser at the last.
      [
        'postgres://u:SEK@RET@127.0.0.1:1/db',
        /--source has an unencoded @ in its user or password: %-encode it as %40/,
      ],
      [`${ok}?connect_timeout=abc`, /--source has connect_timeout=abc; connect_timeout must be a whole number/],
      // A CA file that is not there failed only on connecting (exit 3, as if the server were away).
      [
        `${ok}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem`,
        /--source has sslrootcert=\/nonexistent\/ca\.pem, which is no file on this machine/,
      ],
    ];
    for (const [url, message] of cases) {
      for (const command of [
        ['assess', '--source', url],
        ['migrate', '--source', url, '--target', 'postgres://u:p@127.0.0.1:2/db', '--yes'],
      ]) {
        const r = await pgferry(command);
        expect(r.code, `${command[0]} ${url}`).toBe(2);
        expect(r.stderr).toMatch(message);
        expect(`${r.stdout}${r.stderr}`).not.toMatch(/RET|a b/);
      }
    }
    // libpq reads a number with strtol, a sign allowed: such a URL gets past the checks to the connection.
    const signed = await pgferry(['assess', '--source', `${ok}?connect_timeout=-1`]);
    expect([signed.code, signed.stderr]).toEqual([3, expect.stringContaining('no PostgreSQL server answered')]);
    // New credentials for a stored migration are checked the same way.
    mkdirSync(join(cwd!, '.pgferry'), { recursive: true });
    writeFileSync(join(cwd!, '.pgferry', 'stored.json'), JSON.stringify({ id: 'stored', version: 0, config: {} }));
    writeFileSync(join(cwd!, '.pgferry', 'stored.secrets.json'), JSON.stringify({ sourceUrl: ok, targetUrl: ok }));
    const rotated = await pgferry(['status', '--id', 'stored', '--source', `${ok}?sslmod=require`]);
    expect(rotated.code).toBe(2);
    expect(rotated.stderr).toContain('--source has an unknown parameter "sslmod"');
    const typoTarget = await pgferry(['assess', '--source', ok, '--target', `${ok}?sslmod=require`]);
    expect(typoTarget.code).toBe(2);
    expect(typoTarget.stderr).toContain('--target has an unknown parameter "sslmod"');
    // A password with an unencoded @ is refused (libpq would read another host), showing nothing of it.
    const at = await pgferry(['assess', '--source', 'postgres://app:p@ss@word9@127.0.0.1:1/db']);
    expect(at.code).toBe(2);
    expect(at.stderr).toContain('--source has an unencoded @ in its user or password');
    expect(at.stderr).not.toMatch(/ss@|word9/);
    // Given twice with two values (a script's default and its override): refused, not the last one taken.
    const twice = await pgferry(['assess', '--source', ok, '--source', 'postgres://u:SEKRET@127.0.0.1:1/other']);
    expect(twice.code).toBe(2);
    expect(twice.stderr).toContain('--source is given twice, with two different values: give it once');
    expect(twice.stderr).not.toContain('SEKRET');
  });

  it('refuses --strategy dms, which runs in AWS only, creating nothing', async () => {
    const r = await pgferry([
      'migrate',
      '--strategy',
      'dms',
      '--source',
      'postgres://u:p@127.0.0.1:1/a',
      '--target',
      'postgres://u:p@127.0.0.1:2/b',
      '--yes',
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--strategy dms runs in AWS only');
    expect((await pgferry(['status'])).stdout).toContain('no migrations');
  });

  it('says what --jobs accepts when given a negative number', async () => {
    const urls = ['--source', 'postgres://u:p@127.0.0.1:1/a', '--target', 'postgres://u:p@127.0.0.1:2/b', '--yes'];
    for (const args of [['--jobs', '-1'], ['--jobs=-1'], ['--jobs', '0'], ['--jobs', '65']]) {
      const r = await pgferry(['migrate', ...urls, ...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toContain('--jobs must be a whole number from 1 to 64');
    }
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
    const memory = await pgferry(['migrate', '--index-memory-mb', '32', '--source', 'x', '--target', 'y', '--yes']);
    expect(memory.code).toBe(2);
    expect(memory.stderr).toContain('--index-memory-mb must be a whole number from 64 up (got "32")');
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

  it('refuses the same database under another host name or user as the target, creating nothing', async () => {
    pair = await freshPair(15, 'clisame');
    const role = `same_${pair.sourceDb.slice(-8)}`;
    await pair.source(`CREATE ROLE ${role} LOGIN PASSWORD 'same-pw' REPLICATION`);
    try {
      const byName = pair.sourceUrl.replace('127.0.0.1', 'localhost');
      const m = await pgferry(['migrate', '--source', pair.sourceUrl, '--target', byName, '--yes']);
      expect(m.code).toBe(4);
      expect(m.stderr).toContain('--source and --target name the same database');
      await nothingLeft(pair);
      // Another user, here one who may not read pg_control_system() (revoked in this database): still the same database.
      await pair.source('REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC');
      const asOther = serverUrl(pair.sourceServer, pair.sourceDb, role, 'same-pw');
      for (const [source, target] of [
        [pair.sourceUrl, asOther],
        [asOther, pair.sourceUrl],
      ]) {
        const a = await pgferry(['assess', '--source', source as string, '--target', target as string]);
        expect(a.code).toBe(4);
        expect(a.stdout).toContain('--source and --target name the same database');
      }
      // Another database of the same server is not the same database.
      const other = await pgferry(['assess', '--source', pair.sourceUrl, '--target', serverUrl(pair.sourceServer)]);
      expect(other.stdout).not.toContain('name the same database');
    } finally {
      await pair.drop();
      const { sql } = await import('./harness/pairs');
      await sql(serverUrl(pair.sourceServer), `DROP ROLE IF EXISTS ${role}`);
    }
  });

  it("leaks no password, another session's or a URL's, to any output, state file, event or server log, failing or succeeding", async () => {
    pair = await freshPair(15, 'clileak');
    await loadSample(pair, 200);
    const planted = 'S3cr3t-planted';
    const role = `leak_${pair.sourceDb.slice(-8)}`;
    await pair.source(`CREATE ROLE ${role}`);
    const logs = [pair.sourceServer.logFile, pair.targetServer.logFile].map((file) => ({
      file,
      from: statSync(file).size,
    }));
    const written: string[] = [];
    /** Every file under `dir`, as text, but the two made to hold URLs: the secrets and the switch file. */
    const files = (dir: string): string[] =>
      readdirSync(dir, { recursive: true, encoding: 'utf8' })
        .map((f) => join(dir, f))
        .filter((f) => statSync(f).isFile() && !/(\.secrets\.json|[/]url|[/]database-url)$/.test(f))
        .map((f) => readFileSync(f, 'latin1'));
    // Another session changes a password in a transaction it keeps open: it holds the slot's creation back.
    const holder = new pg.Client({ connectionString: pair.sourceUrl });
    holder.on('error', () => {});
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`ALTER ROLE ${role} PASSWORD '${planted}'`);
      // Failing: the slot cannot be created in time, and the failure names what holds it back.
      const rt = testRuntime();
      try {
        const m = await newMigration(rt, pair, { slotWaitTimeoutMs: 2000 });
        const err = await advance(rt, m.id, { cutover: 'manual' }).catch((e: Error & { hint?: string }) => e);
        expect(err).toBeInstanceOf(Error);
        written.push((err as Error).message, (err as { hint?: string }).hint ?? '', ...rt.logs, ...files(rt.dir));
        expect((err as Error).message).toContain('ALTER ROLE'); // it was seen, and named
      } finally {
        rt.dispose();
      }
      // Succeeding: the CLI waits for that transaction, naming it, until it ends.
      cwd ??= mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
      const args = ['--source', pair.sourceUrl, '--target', pair.targetUrl, '--id', 'leak', '--cutover', 'auto'];
      const child = spawn(
        process.execPath,
        [BIN, 'migrate', ...args, '--switch-file', join(cwd, 'url'), '--report', join(cwd, 'report.json'), '--yes'],
        { cwd, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let output = '';
      child.stdout.on('data', (d) => {
        output += d;
      });
      child.stderr.on('data', (d) => {
        output += d;
      });
      const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
      await expect.poll(() => output, { timeout: 60_000, interval: 100 }).toContain('open transaction(s)');
      await holder.query('ROLLBACK');
      await holder.end();
      expect(await exited).toBe(0);
      expect(output).toContain('ALTER ROLE');
      written.push(output);
      for (const command of [['status', '--id', 'leak', '--json'], ['cleanup', '--id', 'leak'], ['status']]) {
        const r = await pgferry(command);
        written.push(r.stdout, r.stderr);
      }
      written.push(...files(cwd));
    } finally {
      await holder.end().catch(() => {});
      const { sql } = await import('./harness/pairs');
      await pair.drop();
      await sql(serverUrl(pair.sourceServer), `DROP ROLE IF EXISTS ${role}`);
    }
    for (const { file, from } of logs) written.push(readFileSync(file, 'latin1').slice(from));
    const all = written.join('\n');
    for (const secret of [planted, pair.sourceServer.password, pair.targetServer.password])
      expect(all.includes(secret), `${secret.slice(0, 3)}… found`).toBe(false);
  });

  it('keeps an --on-switch command that holds a password whole for a later command, and out of the state file', async () => {
    pair = await freshPair(15, 'clionswitch');
    const rt = testRuntime();
    try {
      const command = `psql 'postgres://app:Sw1tch-secret@db/app' -c 'SELECT 1'; echo password=Sw1tch-secret2`;
      const m = await newMigration(rt, pair, { onSwitch: command });
      const session = await openSession(rt, m.id); // as `pgferry cutover` opens it, in another process
      try {
        expect(session.ctx.config.onSwitch).toBe(command);
      } finally {
        await session.close();
      }
      expect(readFileSync(join(rt.stateDir, `${m.id}.json`), 'utf8')).not.toContain('Sw1tch');
    } finally {
      rt.dispose();
    }
  });

  it('refuses a non-empty target before creating anything', async () => {
    pair = await freshPair(15, 'clinonempty');
    await loadSample(pair, 50);
    await pair.target('CREATE TABLE something_else (id int PRIMARY KEY)');
    const r = await pgferry(['migrate', '--source', pair.sourceUrl, '--target', pair.targetUrl, '--yes', '--id', 'ne']);
    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(/not empty/);
    expect(await leftovers(pair)).toEqual([]);
    // Nothing goes on from it: its passwords are not left on disk (they were), and its clean-up needs no server.
    expect(existsSync(join(cwd!, '.pgferry', 'ne.secrets.json'))).toBe(false);
    expect((await pgferry(['cleanup', '--id', 'ne'])).code).toBe(0);
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
    mkdirSync(join(cwd, 'reports'));
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
      '--report',
      join(cwd, 'reports', 'first.json'),
      '--yes',
    ]);
    expect(m.code).toBe(0);
    expect(m.stdout).toContain('pgferry cutover --id climanual');
    // Copy progress in bytes and rows (plain lines: stdout is not a terminal here).
    expect(m.stdout).toMatch(/copy: [\d.]+ [KMG]iB of ~[\d.]+ [KMG]iB, \d+k? of ~\d+k? rows \(\d+%\)/);
    expect(m.stdout + m.stderr).not.toContain(pair.sourceServer.password);
    // The state, its secrets and the schema dump (a copy of the data's shape) are readable by this user only.
    const artifacts = join(cwd, '.pgferry', 'artifacts', 'climanual');
    for (const file of [
      join(cwd, '.pgferry', 'climanual.json'),
      join(cwd, '.pgferry', 'climanual.secrets.json'),
      ...readdirSync(artifacts).map((f) => join(artifacts, f)),
    ])
      expect(statSync(file).mode & 0o777, file).toBe(0o600);
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
      'ATTENTION: the source database, which the application writes to, is read-only (default_transaction_read_only) and no pgferry process is working on it: not frozen by this migration',
    );
    await pair.source(`ALTER DATABASE ${pair.sourceDb} RESET default_transaction_read_only`);
    await pair.target('ALTER SUBSCRIPTION pgferry_climanual ENABLE');
    // The report's directory went away since migrate: a resume warns and goes on, it does not fail.
    expect(existsSync(join(cwd, 'reports', 'first.json'))).toBe(true);
    rmSync(join(cwd, 'reports'), { recursive: true });
    const resumed = await pgferry(['resume', '--id', 'climanual']);
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain('warning: the report could not be written to');
    expect(JSON.stringify(last)).not.toContain(pair.targetServer.password);
    await pair.source('INSERT INTO orders (customer_id, amount) VALUES (1, 42)');
    // Without --report, cutover brings the report migrate was given up to date (as resume does).
    mkdirSync(join(cwd, 'reports'));
    const c = await pgferry(['cutover', '--id', 'climanual']);
    expect(c.code).toBe(0);
    expect(c.stdout).toMatch(/write gap: \d+ ms/);
    expect(readFileSync(switchFile, 'utf8').trim()).toBe(pair.targetUrl);
    const report = JSON.parse(readFileSync(join(cwd, 'reports', 'first.json'), 'utf8'));
    expect(report.status).toBe('cut-over');
    expect(report.verify.ok).toBe(true);
    expect(JSON.stringify(report)).not.toContain(pair.sourceServer.password);
    const clean = await pgferry(['cleanup', '--id', 'climanual']);
    expect(clean.code).toBe(0);
    expect(await leftovers(pair)).toEqual([]);
    expect(existsSync(join(cwd, '.pgferry', 'artifacts', 'climanual'))).toBe(false); // the schema dump went too
    expect(existsSync(join(cwd, '.pgferry', 'climanual.secrets.json'))).toBe(false); // and the passwords
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

  it('records a second Ctrl-C, which forces the exit in the write gap, as what stopped the migration (not a crash)', async () => {
    const { child, exited, switchFile, pair } = await cutoverInWriteGap('cliforce', 'forced', 3);
    // The first waits for the write gap to finish; the second, while it does, forces the exit.
    child.kill('SIGINT');
    await new Promise((r) => setTimeout(r, 300));
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    const status = await pgferry(['status', '--id', 'forced']);
    expect(status.stdout).toMatch(/: aborted at "[^"]+" — stopped by SIGINT, twice \(Ctrl-C\)/);
    expect(status.stdout).not.toContain('crash');
    // Stopped in the middle of the switch: resume finishes it.
    expect((await pgferry(['resume', '--id', 'forced'])).code).toBe(0);
    expect(readFileSync(switchFile, 'utf8').trim()).toBe(pair.targetUrl);
    expect((await pgferry(['cleanup', '--id', 'forced'])).code).toBe(0);
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

  it('shows the last lines a failing switch command wrote, redacted, and takes the fixed command on cutover', async () => {
    pair = await freshPair(15, 'clifixswitch');
    await loadSample(pair, 100);
    // A chatty command that fails at the end, last saying which URL it could not use; it holds a
    // password of its own (kept whole with the secrets, redacted in the state).
    const onSwitch = `for i in $(seq 1 40); do echo "reloading pool member $i of 40, waiting for its health check"; done >&2; echo "gave up: $PGFERRY_TARGET_URL unreachable from the pool" >&2; exit 5 # admin postgres://ops:s3cr3t@pool.internal/admin`;
    const args = ['--source', pair.sourceUrl, '--target', pair.targetUrl, '--id', 'fx', '--on-switch', onSwitch];
    expect((await pgferry(['migrate', ...args, '--yes'])).code).toBe(0);
    const failed = await pgferry(['cutover', '--id', 'fx']);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain('reloading pool member 40 of 40');
    expect(failed.stderr).toMatch(
      /gave up: postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:\d+\/tgt_clifixswitch_\w+ unreachable/,
    );
    expect(failed.stderr).not.toContain(pair.targetServer.password);
    expect(failed.stderr).toContain("pgferry cutover --id fx --on-switch '<the fixed command>'");
    // The hint's command works: the fixed switch command is taken (not the secret one kept at migrate),
    // and the cutover goes through.
    const fixed = await pgferry(['cutover', '--id', 'fx', '--on-switch', 'true']);
    expect(fixed.code).toBe(0);
    expect(fixed.stdout).toContain('verify: OK');
    expect(JSON.parse(readFileSync(join(cwd!, '.pgferry', 'fx.json'), 'utf8')).config.onSwitch).toBe('true');
  });

  it('makes the source writable again without a dead target, once --yes accepts the risk its help spells out', async () => {
    pair = await freshPair(15, 'cliunfreeze');
    await loadSample(pair, 100);
    const args = ['--source', pair.sourceUrl, '--target', pair.targetUrl, '--id', 'uf', '--cutover', 'auto'];
    expect((await pgferry(['migrate', ...args, '--yes'])).code).toBe(0);
    expect(await frozen(pair, 'source')).toBe(true);
    // The target dies: nothing can connect to it any more.
    const admin = serverUrl(pair.targetServer);
    const { sql } = await import('./harness/pairs');
    await sql(admin, `ALTER DATABASE ${pair.targetDb} ALLOW_CONNECTIONS false`);
    await sql(admin, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [pair.targetDb]);
    try {
      expect((await pgferry(['rollback', '--id', 'uf'])).code).toBe(3); // a rollback needs the target
      expect(await frozen(pair, 'source')).toBe(true);
      expect((await pgferry(['unfreeze', '--help'])).stdout).toContain(
        'RISK: every write the application made on the target',
      );
      const refused = await pgferry(['unfreeze', '--id', 'uf']);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toContain('pass --yes to accept that');
      expect(await frozen(pair, 'source')).toBe(true);
      const unfrozen = await pgferry(['unfreeze', '--id', 'uf', '--yes']);
      expect(unfrozen.code).toBe(0);
      expect(unfrozen.stdout).toContain('The source takes writes again.');
      expect(await frozen(pair, 'source')).toBe(false);
      // A clean-up needs the target too; for one gone for good it names the flag that does without.
      const cleanup = await pgferry(['cleanup', '--id', 'uf']);
      expect(cleanup.code).toBe(3);
      expect(cleanup.stderr).toContain(
        '`pgferry cleanup --id uf --without-target` removes what pgferry left on the source',
      );
      expect((await pgferry(['cleanup', '--help'])).stdout).toContain(
        '--without-target, when the target is gone for good',
      );
      // A target that comes back applies nothing more into the source, which now takes writes of its own.
      expect(await pair.source("SELECT subenabled FROM pg_subscription WHERE subname = 'pgferry_uf_rev'")).toEqual([
        { subenabled: false },
      ]);
    } finally {
      await sql(admin, `ALTER DATABASE ${pair.targetDb} ALLOW_CONNECTIONS true`);
    }
    // The target is back, and the source has taken writes of its own: neither rollback nor resume may
    // bring the target's into it (a rollback re-enabled reverse replication and synced sequences over
    // the source's); status says so, and clean-up is the way out.
    await pair.source("INSERT INTO orders (customer_id, amount, status) VALUES (1, 1, 'own')");
    const before = JSON.parse(readFileSync(join(cwd!, '.pgferry', 'uf.json'), 'utf8'));
    for (const command of ['rollback', 'resume']) {
      const r = await pgferry([command, '--id', 'uf', '--max-drain-ms', '9000']);
      expect(r.code, command).toBe(2);
      expect(r.stderr).toMatch(/was made writable without the target by `pgferry unfreeze` at .*: both databases/);
    }
    // A refused command changes nothing it was given (it stored its --max-drain-ms before it was refused).
    const after = JSON.parse(readFileSync(join(cwd!, '.pgferry', 'uf.json'), 'utf8'));
    expect(after.config.maxDrainMs).toBe(before.config.maxDrainMs);
    expect(after.version).toBe(before.version);
    expect(await pair.source("SELECT subenabled FROM pg_subscription WHERE subname = 'pgferry_uf_rev'")).toEqual([
      { subenabled: false },
    ]);
    const status = await pgferry(['status', 'uf']);
    expect(status.stdout).toMatch(
      /no rollback or resume; compare the databases by hand, then `pgferry cleanup --id uf`/,
    );
    expect(status.stdout).not.toContain('`pgferry rollback --id uf` goes back');
    // The target answers again: --without-target cleans it up as well, as a plain clean-up would.
    expect((await pgferry(['cleanup', '--id', 'uf', '--without-target'])).code).toBe(0);
    expect(await leftovers(pair)).toEqual([]);
  });

  it('cleans up the source alone with new source credentials, never trying the dead target (--without-target --source)', async () => {
    pair = await freshPair(15, 'clinotarget');
    await loadSample(pair, 100);
    const args = ['--source', pair.sourceUrl, '--target', pair.targetUrl, '--id', 'nt', '--cutover', 'manual'];
    expect((await pgferry(['migrate', ...args, '--yes'])).code).toBe(0);
    // Nothing frozen, nothing switched: unfreeze is refused and does not end the migration (it did, exit 0).
    const unfreeze = await pgferry(['unfreeze', '--id', 'nt', '--yes']);
    expect(unfreeze.code).toBe(2);
    expect(unfreeze.stderr).toContain('is not frozen and its application was never switched');
    expect(JSON.parse(readFileSync(join(cwd!, '.pgferry', 'nt.json'), 'utf8')).unfrozenWithoutTargetAt).toBeUndefined();
    const admin = serverUrl(pair.targetServer);
    const { sql } = await import('./harness/pairs');
    await sql(admin, `ALTER DATABASE ${pair.targetDb} ALLOW_CONNECTIONS false`);
    await sql(admin, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [pair.targetDb]);
    try {
      // Credentials for the source (as after a rotated password) go with the clean-up: they are stored,
      // and the dead target's subscription is not given them (that would fail, and keep the slot).
      const r = await pgferry(['cleanup', '--id', 'nt', '--without-target', '--force', '--source', pair.sourceUrl]);
      expect(r.stderr).not.toContain('could not be given them');
      expect(r.code).toBe(0);
      expect(
        await pair.source("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pgferry_nt%'"),
      ).toEqual([]);
      expect(JSON.parse(readFileSync(join(cwd!, '.pgferry', 'nt.json'), 'utf8')).status).toBe('cleaned-up');
    } finally {
      await sql(admin, `ALTER DATABASE ${pair.targetDb} ALLOW_CONNECTIONS true`);
    }
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
    // Clean-up resets what the rollback set: the target is an ordinary database again.
    expect((await pgferry(['cleanup', '--id', 'rf'])).code).toBe(0);
    expect(await frozen(pair, 'target')).toBe(false);
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
      // status takes the new URL too, as the README says, and gives it to the subscription.
      const status = await pgferry(['status', '--id', 'rs', '--source', as('src-pw-2')]);
      expect(status.code).toBe(0);
      expect(status.stdout + status.stderr).toContain(
        'subscription pgferry_rs on the target now logs in with the new source credentials',
      );
      expect(status.stdout + status.stderr).not.toContain('src-pw-2');
      await expect
        .poll(
          async () =>
            (await pair!.target("SELECT count(*)::int AS n FROM customers WHERE email = 'rot@example.com'"))[0]?.n,
          { timeout: 30_000, interval: 200 },
        )
        .toBe(1);
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
    const {
      child,
      exited,
      stderr: said,
      switchFile,
      pair,
      dir,
    } = await cutoverInWriteGap(`cli${signal.toLowerCase()}`, 'si', 1);
    child.kill(signal); // the source is frozen right now
    expect(await exited).toBe(exitCode);
    const stderr = said();
    expect(stderr).toContain(`${signal}: finishing the cutover write gap first`);
    // Said once (the handlers were installed twice, and each said it).
    expect(stderr.split(`${signal}: finishing the cutover write gap first`)).toHaveLength(2);
    const state = JSON.parse(readFileSync(join(dir, '.pgferry', 'si.json'), 'utf8'));
    expect(state.cutover.switchAt).toBeDefined();
    expect(readFileSync(switchFile, 'utf8').trim()).toBe(pair.targetUrl);
    // Status says the signal stopped it, not a crash (the execution record was left "running").
    const status = await pgferry(['status', '--id', 'si']);
    expect(status.stdout).toMatch(
      new RegExp(`: aborted at "[^"]+" — stopped by ${signal}${signal === 'SIGINT' ? ' \\(Ctrl-C\\)' : ''}\n`),
    );
    expect(status.stdout).not.toContain('crash');
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
