/**
 * How the application is switched locally: the --on-switch command (a real shell, real processes) and
 * the switch file (real files, links, owners).
 */
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type SwitchOptions, switchConnection, writeSwitchFile } from '../packages/postgres/src/switch';

const SOURCE = 'postgres://app:s%40urce-Pw1@db-a.internal:5432/shop';
const TARGET = 'postgres://app:t4rget-Pw2@db-b.internal:5432/shop';

function options(onSwitch: string, extra: Partial<SwitchOptions> = {}): SwitchOptions {
  return {
    onSwitch,
    migrationId: 'sw1',
    direction: 'forward',
    activeUrl: TARGET,
    previousUrl: SOURCE,
    sourceUrl: SOURCE,
    targetUrl: TARGET,
    ...extra,
  };
}

/** Processes whose command line holds `marker`. */
function running(marker: string): string[] {
  return execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.includes(marker) && !l.includes('ps -eo'));
}

let dir: string | undefined;
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
  for (const marker of ['611.25', '613.75'])
    for (const line of running(`sleep ${marker}`)) {
      try {
        process.kill(Number(line.trim().split(/\s+/)[0]), 'SIGKILL');
      } catch {
        // gone
      }
    }
});

describe('the --on-switch command', () => {
  it('is killed with everything it started when it does not finish in time, its words redacted', async () => {
    // It prints the source's password as it took it out of the URL, then hangs in a child of the shell.
    const cmd = `echo "using $(echo "$PGFERRY_PREVIOUS_URL" | sed 's/.*:\\(.*\\)@.*/\\1/') and s@urce-Pw1" >&2; sleep 611.25`;
    const started = Date.now();
    const err = await switchConnection(options(cmd, { timeoutMs: 400 })).catch((e: Error) => e);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(err).toMatchObject({ name: 'CutoverFailedError', field: '--on-switch' });
    expect((err as Error).message).toContain('did not finish within 400 ms: killed, with what it started');
    expect((err as Error).message).toContain('using *** and ***');
    expect((err as Error).message).not.toContain('urce-Pw1');
    for (let i = 0; i < 50 && running('sleep 611.25').length; i++) await new Promise((r) => setTimeout(r, 20));
    expect(running('sleep 611.25')).toEqual([]);
  });

  it('is over when its shell exits 0, whatever it left running in the background', async () => {
    const started = Date.now();
    await switchConnection(options('sleep 613.75 & echo reloaded >&2; exit 0', { timeoutMs: 10_000 }));
    expect(Date.now() - started).toBeLessThan(5000);
    // Exited 0 just inside its time, its stderr held open by what it left: a switch that worked, never
    // killed and reported as timed out while its last words were awaited (the switch would be undone).
    await switchConnection(options('sleep 0.2; sleep 613.75 & exit 0', { timeoutMs: 400 }));
  });

  it('fails with its exit code and last words, the target password redacted', async () => {
    const err = await switchConnection(options('echo "pool refused t4rget-Pw2" >&2; exit 5')).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/failed \(exit 5\): pool refused \*\*\*$/);
  });
});

describe('the switch file', () => {
  it('is made 0600 when new', () => {
    dir = mkdtempSync(join(tmpdir(), 'pgferry-switch-'));
    const file = join(dir, 'url');
    writeSwitchFile(file, TARGET);
    expect(readFileSync(file, 'utf8')).toBe(`${TARGET}\n`);
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it("keeps a link a link and the file's mode, owner and group", () => {
    dir = mkdtempSync(join(tmpdir(), 'pgferry-switch-'));
    mkdirSync(join(dir, 'conf'));
    mkdirSync(join(dir, 'app'));
    const real = join(dir, 'conf', 'real-url');
    writeFileSync(real, `${SOURCE}\n`);
    chmodSync(real, 0o640);
    // Another owner and group where this process may give them (root, as CI runs).
    const other = process.getuid?.() === 0 ? { uid: 1, gid: 1 } : undefined;
    if (other) chownSync(real, other.uid, other.gid);
    const link = join(dir, 'app', 'link-url');
    symlinkSync('../conf/real-url', link);
    writeSwitchFile(link, TARGET);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readFileSync(real, 'utf8')).toBe(`${TARGET}\n`);
    const st = statSync(real);
    expect(st.mode & 0o7777).toBe(0o640);
    if (other) expect([st.uid, st.gid]).toEqual([other.uid, other.gid]);
  });
});
