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
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), DEFAULTS.onSwitchTimeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else
        reject(
          new CutoverFailedError(
            `--on-switch command failed (${signal ? `killed by ${signal}` : `exit ${code}`}): ${redactText(stderr.trim()).slice(0, 500)}`,
            {
              field: '--on-switch',
              phase: 'cutover',
              hint: 'fix the command and run `pgferry cutover` again (replication goes on meanwhile)',
            },
          ),
        );
    });
  });
}
