/** Switching the application's connection: an atomically rewritten file and/or a user command. */
import { spawn } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  lstatSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { CutoverFailedError, DEFAULTS, redactText } from '@pgferry/core';
import { parse as parseUrl } from 'pg-connection-string';

export interface SwitchOptions {
  switchFile?: string;
  onSwitch?: string;
  migrationId: string;
  direction: 'forward' | 'reverse';
  /** The URL the application should use from now on, and the one it leaves. */
  activeUrl: string;
  previousUrl: string;
  sourceUrl: string;
  targetUrl: string;
  /** How long the --on-switch command may take before it is killed (default DEFAULTS.onSwitchTimeoutMs). */
  timeoutMs?: number;
}

/**
 * Write-then-rename, so a reader sees the old URL or the new one, never half a file. A file that is
 * there keeps what the operator gave it: a symbolic link stays one (the file it points at is
 * replaced), and the file its mode, owner and group (an application running as another user reads
 * it). A new file is 0600: it holds a password.
 */
export function writeSwitchFile(path: string, url: string) {
  const real = switchFileTarget(path);
  let kept: { mode: number; uid: number; gid: number } | undefined;
  try {
    const st = statSync(real);
    kept = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
  } catch {
    // No such file yet.
  }
  const tmp = join(dirname(real), `.${Date.now()}.${process.pid}.pgferry-switch.tmp`);
  try {
    writeFileSync(tmp, `${url}\n`, { mode: 0o600 });
    if (kept) {
      // Only root may give a file to another user; anyone may give it a group they are in. Otherwise
      // it is pgferry's own, with the mode kept (it was before: never a switch failed for it).
      if (process.getuid?.() === 0) chownSync(tmp, kept.uid, kept.gid);
      else if (kept.gid !== process.getgid?.()) {
        try {
          chownSync(tmp, -1, kept.gid);
        } catch {
          // not a group of this user
        }
      }
      chmodSync(tmp, kept.mode);
    }
    renameSync(tmp, real);
  } catch (err) {
    rmSync(tmp, { force: true }); // it holds the URL, password and all
    throw err;
  }
}

/**
 * The file a switch file's path names: itself, or what its symbolic link points at (a link pointing at
 * nothing yet included). Written there, in that file's directory: `--switch-file` is checked there.
 */
export function switchFileTarget(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return danglingLinkTarget(path) ?? path;
  }
}

/** Where a symbolic link that points at nothing yet points (resolved against its directory). */
function danglingLinkTarget(path: string): string | undefined {
  try {
    if (!lstatSync(path).isSymbolicLink()) return undefined;
    return resolve(dirname(path), readlinkSync(path));
  } catch {
    return undefined;
  }
}

/** The URL a switch file names now, or undefined when there is none. */
export function readSwitchFile(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

const STDERR_TAIL_BYTES = 8192;
const STDERR_LINES = 10;
/** After the command's shell exited, how long its stderr may still take to close. */
const STDERR_GRACE_MS = 500;

/** Shorter passwords are not looked for in a command's output: they would match ordinary words. */
const MIN_PASSWORD_SEARCHED = 4;

/**
 * The passwords of `urls` as the connections read them (pg-connection-string, as connectionSettings:
 * an unencoded `@` in the password, `?password=`), and percent-encoded as a URL carries them.
 */
function passwordsOf(urls: string[]): string[] {
  const found = new Set<string>();
  for (const url of urls) {
    try {
      found.add(parseUrl(url, { useLibpqCompat: true }).password ?? '');
      found.add(new URL(url).password);
    } catch {
      // not a URL: nothing to look for
    }
  }
  return [...found].filter((p) => p.length >= MIN_PASSWORD_SEARCHED).sort((a, b) => b.length - a.length);
}

/**
 * The last lines the command wrote to stderr, passwords redacted: those of URLs, and the servers'
 * passwords wherever they appear (a script that echoes the one it took out of PGFERRY_ACTIVE_URL).
 */
function lastLines(stderr: string, passwords: string[]): string {
  let text = stderr;
  for (const p of passwords) text = text.split(p).join('***');
  const lines = redactText(text).trimEnd().split('\n');
  return (lines.length > STDERR_LINES ? ['…', ...lines.slice(-STDERR_LINES)] : lines).join('\n');
}

export async function switchConnection(o: SwitchOptions): Promise<void> {
  if (o.switchFile) writeSwitchFile(o.switchFile, o.activeUrl);
  if (!o.onSwitch) return;
  const env = {
    ...process.env,
    PGFERRY_MIGRATION_ID: o.migrationId,
    PGFERRY_DIRECTION: o.direction,
    PGFERRY_ACTIVE_URL: o.activeUrl,
    PGFERRY_PREVIOUS_URL: o.previousUrl,
    PGFERRY_SOURCE_URL: o.sourceUrl,
    PGFERRY_TARGET_URL: o.targetUrl,
  };
  const timeoutMs = o.timeoutMs ?? DEFAULTS.onSwitchTimeoutMs;
  const passwords = passwordsOf([o.sourceUrl, o.targetUrl, o.activeUrl, o.previousUrl]);
  await new Promise<void>((resolve, reject) => {
    // Its own process group: a command that does not finish in time is killed with everything it
    // started (a `sleep` under the shell kept the pipe open, and the cutover waited on it forever).
    const child = spawn('/bin/sh', ['-c', o.onSwitch!], { env, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    // What the command says last is why it failed: only the tail is kept.
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr = (stderr + d).slice(-STDERR_TAIL_BYTES);
    });
    const failed = (why: string) =>
      new CutoverFailedError(`--on-switch command failed (${why}): ${lastLines(stderr, passwords)}`, {
        field: '--on-switch',
        phase: o.direction === 'forward' ? 'cutover' : 'rollback',
        hint: `fix the command, then run \`pgferry ${o.direction === 'forward' ? 'cutover' : 'rollback'} --id ${o.migrationId} --on-switch '<the fixed command>'\` (replication goes on meanwhile)`,
      });
    let settled = false;
    const timer = setTimeout(() => {
      settled = true;
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // gone already
      }
      child.stderr.destroy();
      reject(failed(`did not finish within ${timeoutMs} ms: killed, with what it started`));
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      if (!settled) reject(err);
      settled = true;
    });
    const settle = (code: number | null, signal: NodeJS.Signals | null) => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      if (code === 0) resolve();
      else reject(failed(signal ? `killed by ${signal}` : `exit ${code}`));
    };
    child.on('close', settle);
    // The command is over when its shell exits: something it left running in the background may keep
    // its stderr open, and is not waited for (its last words get a moment to arrive).
    child.on('exit', (code, signal) => {
      // Exited in time: no kill past this point (a timeout during the grace would undo a switch that worked).
      clearTimeout(timer);
      setTimeout(() => {
        child.stderr.destroy();
        settle(code, signal);
      }, STDERR_GRACE_MS);
    });
  });
}
