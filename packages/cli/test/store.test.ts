import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidInputError, type MigrationState, parseMigrationConfig, StateConflictError } from '../../core/src/index';
import { FileMigrationStore } from '../src/store';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function fresh(): FileMigrationStore {
  const d = mkdtempSync(join(tmpdir(), 'pgferry-store-'));
  dirs.push(d);
  return new FileMigrationStore(join(d, 'state'));
}

function state(id: string): MigrationState {
  const config = parseMigrationConfig({ id, sourceUrl: 'postgres://u:***@a/db', targetUrl: 'postgres://u:***@b/db' });
  return {
    id,
    version: 0,
    createdAt: '2026-01-01T00:00:00Z',
    updatedAt: '',
    status: 'running',
    phase: 'assess',
    config,
    phases: {},
    events: [],
  };
}

describe('file migration store', () => {
  it('rejects a write based on a stale version (optimistic locking)', async () => {
    const store = fresh();
    await store.create(state('m1'), { sourceUrl: 'postgres://u:pw@a/db', targetUrl: 'postgres://u:pw@b/db' });
    const a = await store.get('m1');
    const b = await store.get('m1');
    await store.put({ ...a, phase: 'bulk-load' });
    await expect(store.put({ ...b, phase: 'cutover' })).rejects.toBeInstanceOf(StateConflictError);
    expect((await store.get('m1')).phase).toBe('bulk-load');
    expect((await store.get('m1')).version).toBe(1);
  });

  it('keeps passwords out of the state file, in a secrets file only its owner can read', async () => {
    const store = fresh();
    await store.create(state('m2'), { sourceUrl: 'postgres://u:pw1@a/db', targetUrl: 'postgres://u:pw2@b/db' });
    const { readFileSync } = await import('node:fs');
    const text = readFileSync(join(store.dir, 'm2.json'), 'utf8');
    expect(text).not.toContain('pw1');
    expect(text).not.toContain('pw2');
    expect(statSync(join(store.dir, 'm2.secrets.json')).mode & 0o077).toBe(0);
    expect((await store.secrets('m2')).sourceUrl).toContain('pw1');
  });

  it('writes the state file 0600 with every message redacted, and forgets the secrets on request', async () => {
    const store = fresh();
    await store.create(state('m5'), { sourceUrl: 'postgres://u:pw1@a/db', targetUrl: 'postgres://u:pw2@b/db' });
    const m = await store.get('m5');
    await store.put({
      ...m,
      failure: {
        name: 'Error',
        phase: 'catch-up',
        message: "pid 7 open for 90 s: ALTER ROLE x PASSWORD 'S3cr3t-state'",
      },
      events: [{ at: '', message: 'cannot connect to postgres://u:S3cr3t-url@a/db' }],
    });
    const { readFileSync } = await import('node:fs');
    for (const name of ['m5.json', 'm5.secrets.json']) expect(statSync(join(store.dir, name)).mode & 0o777).toBe(0o600);
    const text = readFileSync(join(store.dir, 'm5.json'), 'utf8');
    expect(text).not.toContain('S3cr3t');
    expect(JSON.parse(text).failure.message).toContain("PASSWORD '***'");
    await store.removeSecrets('m5');
    expect(existsSync(join(store.dir, 'm5.secrets.json'))).toBe(false);
    expect((await store.get('m5')).id).toBe('m5');
  });

  it('refuses to create the same migration twice and lists what exists', async () => {
    const store = fresh();
    const s = { sourceUrl: 'postgres://u:p@a/db', targetUrl: 'postgres://u:p@b/db' };
    await store.create(state('m3'), s);
    // Refused before anything is written: the existing migration keeps its servers and passwords.
    const other = { sourceUrl: 'postgres://u:p@elsewhere/db', targetUrl: 'postgres://u:p@elsewhere/db2' };
    // Invalid input (exit 2), not a conflict (exit 7): trying again could never work.
    await expect(store.create(state('m3'), other)).rejects.toBeInstanceOf(InvalidInputError);
    expect(await store.secrets('m3')).toEqual(s);
    expect((await store.list()).migrations.map((m) => m.id)).toEqual(['m3']);
  });

  it('lets one command at a time claim a migration, naming the holder, and takes over a dead one', async () => {
    const store = fresh();
    await store.create(state('m4'), { sourceUrl: 'postgres://u:p@a/db', targetUrl: 'postgres://u:p@b/db' });
    const release = await store.claim('m4');
    await expect(store.claim('m4')).rejects.toThrow(
      new RegExp(`migration m4 is being worked on by another pgferry process \\(pid ${process.pid} on `),
    );
    await release();
    const again = await store.claim('m4');
    await again();
    // Left by a process that is gone (kill -9): taken over.
    const gone = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' });
    const { hostname } = await import('node:os');
    writeFileSync(join(store.dir, 'm4.run'), JSON.stringify({ pid: Number(gone.stdout.trim()), host: hostname() }));
    const taken = await store.claim('m4');
    await taken();
    expect(existsSync(join(store.dir, 'm4.run'))).toBe(false);
  });
  it("takes over an update lock whose process is gone, and waits for a live one's", async () => {
    const store = fresh();
    await store.create(state('m9'), { sourceUrl: 'postgres://u:pw@a/db', targetUrl: 'postgres://u:pw@b/db' });
    const m = await store.get('m9');
    const lock = join(dirs.at(-1) as string, 'state', 'm9.lock');
    // Left by a process that exited (a signal in the middle of an update, kill -9).
    const gone = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' });
    writeFileSync(lock, gone.stdout.trim());
    const saved = await store.put({ ...m, phase: 'prepare-schema' });
    expect(saved.version).toBe(m.version + 1);
    expect(existsSync(lock)).toBe(false);
    // Held by a live process (this one): the update waits until it is released.
    writeFileSync(lock, String(process.pid));
    let done = false;
    const waiting = store.put({ ...saved, phase: 'bulk-load' }).then((s) => {
      done = true;
      return s;
    });
    await new Promise((r) => setTimeout(r, 500));
    expect(done).toBe(false);
    rmSync(lock);
    expect((await waiting).phase).toBe('bulk-load');
  });
});
