/** Client tools (pg_dump, pg_restore): finding one able to handle the server, and running it without leaking passwords. */
import { execFile, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PgferryError, redactText } from '@pgferry/core';
import { libpqParams } from './db';

const execFileAsync = promisify(execFile);

/**
 * Each probe runs the tool (Debian's /usr/bin ones are a Perl wrapper: ~50 ms), and a migration looks
 * for pg_restore once per index build: a path's answer is remembered for the life of the process.
 */
const probed = new Map<string, Promise<number | undefined>>();

function toolMajor(path: string): Promise<number | undefined> {
  let major = probed.get(path);
  if (!major) {
    major = execFileAsync(path, ['--version']).then(
      ({ stdout }) => {
        const m = /(\d+)(?:\.\d+)?/.exec(stdout.replace(/^[^\d]*/, ''));
        return m ? Number(m[1]) : undefined;
      },
      () => {
        probed.delete(path); // a failed probe (not executable, EAGAIN) may succeed next time
        return undefined;
      },
    );
    probed.set(path, major);
  }
  return major;
}

/**
 * pg_dump refuses to dump a server newer than itself, so pick the oldest installed pg_dump whose
 * major version is at least the server's (Debian keeps one per major under /usr/lib/postgresql).
 */
export async function findTool(tool: 'pg_dump' | 'pg_restore', serverMajor: number): Promise<string> {
  const candidates: string[] = [];
  const root = '/usr/lib/postgresql';
  if (existsSync(root)) {
    for (const v of readdirSync(root)) {
      const p = join(root, v, 'bin', tool);
      if (existsSync(p)) candidates.push(p);
    }
  }
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const p = join(dir, tool);
    if (dir && existsSync(p)) candidates.push(p);
  }
  const found: { path: string; major: number }[] = [];
  const majors = await Promise.all(candidates.map(toolMajor));
  candidates.forEach((path, i) => {
    const major = majors[i];
    if (major !== undefined) found.push({ path, major });
  });
  const usable = found.filter((f) => f.major >= serverMajor).sort((a, b) => a.major - b.major);
  if (usable[0]) return usable[0].path;
  const have = found.length ? found.map((f) => `${f.major} (${f.path})`).join(', ') : 'none';
  throw new PgferryError(`no ${tool} able to handle a PostgreSQL ${serverMajor} server is installed (found: ${have})`, {
    field: tool,
    hint: `install the client tools of version ${serverMajor} or newer, e.g. apt-get install -y postgresql-client-${serverMajor}`,
  });
}

/**
 * Split a URL into a password-free URL for argv (visible in `ps`) and PGPASSWORD for the environment.
 * A `?password=` parameter moves to PGPASSWORD too. Parameters are %-encoded, which libpq decodes
 * (URLSearchParams would write a space as `+`, which libpq keeps). `applicationName` names the
 * tool's sessions (PGAPPNAME) after the migration, as pgferry's own are, for `pgferry status` and
 * whoever reads pg_stat_activity.
 */
export function toolConnection(url: string, applicationName?: string): { url: string; env: Record<string, string> } {
  const u = new URL(url);
  const params = libpqParams(u);
  const password = params.find(([k]) => k === 'password')?.[1] ?? decodeURIComponent(u.password);
  u.password = '';
  u.search = params
    .filter(([k]) => k !== 'password')
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join('&');
  return {
    url: u.toString(),
    env: { ...(password ? { PGPASSWORD: password } : {}), ...(applicationName ? { PGAPPNAME: applicationName } : {}) },
  };
}

/**
 * A file of the artifact directory, created empty and readable by this user only before a tool writes
 * it: the dumps are copies of the data (pg_dump truncates the file it is given and keeps its mode).
 */
export function artifactFile(dir: string, name: string, content = ''): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = join(dir, name);
  writeFileSync(file, content, { mode: 0o600 });
  chmodSync(file, 0o600); // a file left by an earlier run keeps its old mode through writeFileSync
  return file;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

/** Run a client tool; never throws on exit code (callers decide which errors matter). */
export function runTool(path: string, args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(path, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ stdout, stderr: redactText(stderr), code: code ?? 1 }));
  });
}
