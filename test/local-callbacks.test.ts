/**
 * The local token registry: callback states complete locally through the TaskCallbacks port, backed
 * by files beside the migration's state. A token completes once, whichever processes race for it.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalTaskCallbacks } from '../packages/cli/src/local-callbacks';
import { completeApproval } from '../packages/cli/src/local-runtime';
import { FileMigrationStore } from '../packages/cli/src/store';
import type { MigrationState } from '../packages/core/src/index';

const PASSWORD = 'hunter2-s3cret';
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pgferry-callbacks-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function migration(id: string): MigrationState {
  const at = new Date().toISOString();
  return {
    id,
    version: 0,
    createdAt: at,
    updatedAt: at,
    status: 'awaiting-cutover',
    phase: 'catch-up',
    config: {
      id,
      sourceUrl: 'postgres://app:***@source.example:5432/shop',
      targetUrl: 'postgres://app:***@target.example:5432/shop',
    } as MigrationState['config'],
    phases: {},
    events: [{ at, message: 'migration created' }],
  };
}

/**
 * Run `body` (an ES module's top-level code, with `stateDir` and `ids` defined) in `n` processes at
 * once: each says it is ready, waits for the same signal, and prints the JSON its body leaves in `out`.
 */
async function race(stateDir: string, ids: string[], n: number, imports: string, body: string): Promise<unknown[]> {
  const go = join(stateDir, `go-${Date.now()}`);
  const script = `import { existsSync } from 'node:fs';
    ${imports}
    const stateDir = ${JSON.stringify(stateDir)};
    const ids = ${JSON.stringify(ids)};
    process.stdout.write('ready\\n');
    while (!existsSync(${JSON.stringify(go)})) await new Promise((r) => setTimeout(r, 2));
    const out = [];
    ${body}
    process.stdout.write(JSON.stringify(out));`;
  const children = Array.from({ length: n }, () => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: resolve(__dirname, '..'),
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => {
      out += c;
    });
    child.stderr.on('data', (c) => {
      err += c;
    });
    const done = new Promise<string>((res, rej) =>
      child.on('exit', (code) => (code === 0 ? res(out) : rej(new Error(`racer exited ${code}: ${err}`)))),
    );
    const ready = new Promise<void>((r) => child.stdout.once('data', () => r()));
    return { ready, done };
  });
  // A racer that dies before it is ready fails the race instead of leaving it waiting.
  await Promise.all(children.map((c) => Promise.race([c.ready, c.done])));
  await writeFile(go, '');
  return (await Promise.all(children.map((c) => c.done))).map((o) => JSON.parse(o.slice(o.indexOf('\n') + 1)));
}

const src = (file: string) => JSON.stringify(resolve(__dirname, '../packages/cli/src', file));

describe('the local token registry', () => {
  it('gives the approval to exactly one of two `pgferry cutover` processes racing for it', async () => {
    const stateDir = await mkdtemp(join(dir, 'approve-'));
    const store = new FileMigrationStore(stateDir);
    const ids = Array.from({ length: 12 }, (_, i) => `race${process.pid % 10000}_${i}`);
    const tokens = new Map<string, string>();
    for (const id of ids) {
      await store.create(migration(id), {
        sourceUrl: `postgres://app:${PASSWORD}@source.example:5432/shop`,
        targetUrl: `postgres://app:${PASSWORD}@target.example:5432/shop`,
      });
      const token = LocalTaskCallbacks.mint(id, 'awaitApproval');
      tokens.set(id, token);
      await store.putTaskToken(id, 'awaitApproval', token);
    }
    // What `pgferry cutover` does first: take the token from the store and complete it.
    const won = (await race(
      stateDir,
      ids,
      2,
      `import { FileMigrationStore } from ${src('store.ts')};
       import { completeApproval } from ${src('local-runtime.ts')};`,
      `const store = new FileMigrationStore(stateDir);
       for (const id of ids) if (await completeApproval({ store, stateDir }, id)) out.push(id);`,
    )) as string[][];
    expect([...(won[0] ?? []), ...(won[1] ?? [])].sort()).toEqual([...ids].sort());
    expect((won[0] ?? []).filter((id) => won[1]?.includes(id))).toEqual([]);
    const registry = new LocalTaskCallbacks(stateDir);
    for (const id of ids) {
      expect(registry.result(tokens.get(id) as string)).toMatchObject({ status: 'succeeded' });
      expect(await store.takeTaskToken(id, 'awaitApproval')).toBeUndefined();
      // A later cutover finds nothing to approve.
      expect(await completeApproval({ store, stateDir }, id)).toBe(false);
    }
  });

  it('completes a token once when two processes complete it at the same moment, keeping the first result', async () => {
    const stateDir = await mkdtemp(join(dir, 'complete-'));
    const ids = Array.from({ length: 20 }, (_, i) => LocalTaskCallbacks.mint(`m${i}`, 'bulkLoad'));
    const results = (await race(
      stateDir,
      ids,
      2,
      `import { LocalTaskCallbacks } from ${src('local-callbacks.ts')};`,
      `const registry = new LocalTaskCallbacks(stateDir);
       for (const token of ids) if (await registry.succeed(token, { summary: 'by ' + process.pid })) out.push([token, process.pid]);`,
    )) as [string, number][][];
    const all = results.flat();
    expect(all.map(([t]) => t).sort()).toEqual([...ids].sort());
    const registry = new LocalTaskCallbacks(stateDir);
    for (const [token, pid] of all)
      expect(registry.result(token)).toEqual({
        status: 'succeeded',
        at: expect.any(String),
        output: { summary: `by ${pid}` },
      });
  });

  it('fails a token with the error name and a redacted cause, once; a heartbeat after completion is refused', async () => {
    const stateDir = await mkdtemp(join(dir, 'fail-'));
    const registry = new LocalTaskCallbacks(stateDir);
    const token = LocalTaskCallbacks.mint('m1', 'verify');
    expect(registry.result(token)).toBeUndefined();
    await registry.heartbeat(token);
    expect(
      await registry.fail(token, 'VerificationFailedError', `postgres://app:${PASSWORD}@source.example/shop differs`),
    ).toBe(true);
    expect(await registry.succeed(token, { summary: 'late' })).toBe(false);
    const done = registry.result(token);
    expect(done).toMatchObject({ status: 'failed', error: 'VerificationFailedError' });
    expect(JSON.stringify(done)).not.toContain(PASSWORD);
    await expect(registry.heartbeat(token)).rejects.toMatchObject({ name: 'TaskTokenGoneError' });
    registry.clear('m1');
    expect(registry.result(token)).toBeUndefined();
  });

  it('refuses a token that is not one', async () => {
    const registry = new LocalTaskCallbacks(dir);
    await expect(registry.succeed('', {})).rejects.toThrow(/a task token is 1-1024 characters/);
  });
});
