/**
 * runWorkflowTask's contract where no database is involved: its input checks, the worker's token
 * completed with the task's result, the task read back from the worker's environment; the lease a
 * deployed task holds (withTaskLease).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  InvalidInputError,
  type MigrationStore,
  PgferryError,
  StateConflictError,
  type TaskCallbacks,
  taskInputFromEnvironment,
  withTaskLease,
} from '@pgferry/core';
import { describe, expect, it } from 'vitest';
import { FileMigrationStore } from '../packages/cli/src/store';
import { keepErrorHint, runWorkflowTask, type TaskDeps } from '../packages/postgres/src/index';

/** A store no test here may reach: the tasks under test must refuse or delegate before reading state. */
const unreachableStore = new Proxy({} as MigrationStore, {
  get: (_t, p) => () => Promise.reject(new Error(`store.${String(p)} called`)),
});

function recordingCallbacks() {
  const calls: unknown[][] = [];
  const callbacks: TaskCallbacks = {
    async succeed(token, output) {
      calls.push(['succeed', token, output]);
      return true;
    },
    async fail(token, error, cause) {
      calls.push(['fail', token, error, cause]);
      return true;
    },
    heartbeat: async (token) => void calls.push(['heartbeat', token]),
  };
  return { calls, callbacks };
}

const deps = (extra: Partial<TaskDeps> = {}): TaskDeps => ({ store: unreachableStore, log: () => {}, ...extra });

describe('runWorkflowTask', () => {
  it('refuses an unknown task or an input without a migration id, naming the field', async () => {
    await expect(runWorkflowTask('nope' as never, { migrationId: 'm1' }, deps())).rejects.toMatchObject({
      name: 'InvalidInputError',
      field: 'task',
    });
    await expect(runWorkflowTask('assess', {} as never, deps())).rejects.toMatchObject({
      name: 'InvalidInputError',
      field: 'migrationId',
    });
  });

  it("fails a worker task's token with the error's name and message, and throws it", async () => {
    const { calls, callbacks } = recordingCallbacks();
    const err = await runWorkflowTask(
      'copyShare',
      { migrationId: 'm1', taskToken: 'tok-1' },
      deps({ callbacks }),
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PgferryError);
    expect(calls).toEqual([['fail', 'tok-1', 'InvalidInputError', (err as Error).message]]);
  });

  it('hands "Provision target" to the provisioner, and says so when there is none', async () => {
    await expect(runWorkflowTask('provisionTarget', { migrationId: 'm1' }, deps())).rejects.toThrow(
      /no target provisioner/,
    );
    const out = await runWorkflowTask(
      'provisionTarget',
      { migrationId: 'm1', taskToken: 't' },
      deps({ provisionTarget: async (i) => ({ summary: `creating the target of ${i.migrationId}` }) }),
    );
    expect(out).toEqual({ summary: 'creating the target of m1' });
  });
});

describe('keepErrorHint', () => {
  it("keeps a typed error's hint with the migration, but never for a version conflict (another process acts on it)", async () => {
    const calls: string[] = [];
    const kept: unknown[] = [];
    const store = {
      get: async () => {
        calls.push('get');
        return { id: 'm1' } as never;
      },
      put: async (s: unknown) => {
        calls.push('put');
        kept.push(s);
      },
    } as unknown as MigrationStore;
    await keepErrorHint(store, 'm1', new StateConflictError('changed by another process', { hint: 'look again' }));
    expect(calls).toEqual([]);
    await keepErrorHint(store, 'm1', new PgferryError('no hint'));
    expect(calls).toEqual([]);
    await keepErrorHint(store, 'm1', new PgferryError('the lock was held', { hint: 'resume once it is free' }));
    expect(calls).toEqual(['get', 'put']);
    expect(kept[0]).toMatchObject({
      lastError: { name: 'PgferryError', message: 'the lock was held', hint: 'resume once it is free' },
    });
  });
});

describe("the worker's environment", () => {
  it('gives back the task, the id, the token and the JSON inputs the definition put there', () => {
    expect(
      taskInputFromEnvironment({
        PGFERRY_TASK: 'verifyBeforeSwitch',
        PGFERRY_MIGRATION_ID: 'm1',
        PGFERRY_TASK_TOKEN: 'tok',
        PGFERRY_INPUT_VERIFY: '{"done":false,"rounds":1}',
      }),
    ).toEqual({
      task: 'verifyBeforeSwitch',
      input: { migrationId: 'm1', taskToken: 'tok', verify: { done: false, rounds: 1 } },
    });
  });

  it('names the variable that is missing or wrong', () => {
    expect(() => taskInputFromEnvironment({ PGFERRY_TASK: 'bulkLoad' })).toThrow(InvalidInputError);
    expect(() => taskInputFromEnvironment({ PGFERRY_TASK: 'load', PGFERRY_MIGRATION_ID: 'm1' })).toThrow(
      /PGFERRY_TASK must name a workflow task/,
    );
    expect(() =>
      taskInputFromEnvironment({
        PGFERRY_TASK: 'verifyBeforeSwitch',
        PGFERRY_MIGRATION_ID: 'm1',
        PGFERRY_INPUT_VERIFY: '{',
      }),
    ).toThrow(/PGFERRY_INPUT_VERIFY is not JSON/);
  });
});

describe('withTaskLease', () => {
  it('gives the lease up at once when the execution is gone, while the work runs on, and releases nothing of a later holder', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgferry-lease-'));
    try {
      const store = new FileMigrationStore(dir);
      const log: string[] = [];
      const stop = new AbortController();
      let later: (() => Promise<void>) | undefined;
      const out = await withTaskLease(
        store,
        'verify',
        { migrationId: 'm1' },
        '"Verify" on a worker',
        async () => {
          await expect(store.claim('m1')).rejects.toMatchObject({ name: 'MigrationBusyError' });
          // The heartbeat is refused: the lease goes while the work is still running.
          stop.abort();
          for (let i = 0; i < 100 && !later; i++)
            later = await store.claim('m1').catch(() => new Promise((r) => setTimeout(() => r(undefined), 10)));
          return 'done';
        },
        { log: (m) => log.push(m), signal: stop.signal },
      );
      expect(out).toBe('done');
      expect(later).toBeDefined();
      expect(log).toContain('the lease on migration m1 is given up: its execution is gone (or out of reach)');
      // The work's end released nothing more: the later holder keeps the migration.
      await expect(store.claim('m1')).rejects.toMatchObject({ name: 'MigrationBusyError' });
      await later?.();
      // A task that takes no lease (inside the bulk load) claims nothing.
      const held = await store.claim('m1');
      expect(
        await withTaskLease(store, 'copyShare', { migrationId: 'm1' }, 'x', async () => 1, { log: () => {} }),
      ).toBe(1);
      await held();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
