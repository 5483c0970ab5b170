/** Switching the application's connection: an atomically rewritten file and/or a user command. */
import { spawn } from 'node:child_process';
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { CutoverFailedError, DEFAULTS, redactText } from '@pgferry/core';

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
}

/** Write-then-rename, so a reader sees the old URL or the new one, never half a file. */
export function writeSwitchFile(path: string, url: string) {
  const tmp = join(dirname(path), `.${Date.now()}.${process.pid}.pgferry-switch.tmp`);
  try {
    writeFileSync(tmp, `${url}\n`, { mode: 0o600 });
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true }); // it holds the URL, password and all
    throw err;
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

/** The last lines the command wrote to stderr, passwords redacted. */
function lastLines(stderr: string): string {
  const lines = redactText(stderr).trimEnd().split('\n');
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
  await new Promise<void>((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', o.onSwitch!], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    // What the command says last is why it failed: only the tail is kept.
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr = (stderr + d).slice(-STDERR_TAIL_BYTES);
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), DEFAULTS.onSwitchTimeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else
        reject(
          new CutoverFailedError(
            `--on-switch command failed (${signal ? `killed by ${signal}` : `exit ${code}`}): ${lastLines(stderr)}`,
            {
              field: '--on-switch',
              phase: o.direction === 'forward' ? 'cutover' : 'rollback',
              hint: `fix the command, then run \`pgferry ${o.direction === 'forward' ? 'cutover' : 'rollback'} --id ${o.migrationId} --on-switch '<the fixed command>'\` (replication goes on meanwhile)`,
            },
          ),
        );
    });
  });
}
