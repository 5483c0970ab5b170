import { DynamoMigrationStore } from '@pgferry/aws';
import { InvalidInputError, objectNames } from '@pgferry/core';
import { describe, expect, it } from 'vitest';
import { main } from '../packages/cli/src/main';
import { openSession } from '../packages/cli/src/runner';
import type { FileMigrationStore } from '../packages/cli/src/store';
import {
  containerEnvironment,
  deployedWorkerDumpStore,
  deployedWorkerStore,
  HEARTBEAT_FAILURES_TO_STOP,
  InProcessTaskCallbacks,
  runWorker,
  type WorkerTask,
  workerTaskFromEnv,
} from '../packages/cli/src/worker';
import { prepareSchema } from '../packages/postgres/src/index';
import { migrationFixture, newMigration, sleep, testRuntime, verifyHeldAtRead } from './harness/migration';

const fixture = migrationFixture();

const ENV = {
  PGFERRY_TASK: 'copyShare',
  PGFERRY_MIGRATION_ID: 'm1',
  PGFERRY_TASK_TOKEN: 'tok',
  PGFERRY_LOAD_ID: 'exec@now',
  PGFERRY_SHARE: '1',
};

function refused(env: NodeJS.ProcessEnv): InvalidInputError {
  try {
    workerTaskFromEnv(env);
  } catch (err) {
    if (err instanceof InvalidInputError) return err;
    throw err;
  }
  throw new Error('accepted');
}

describe('pgferry worker', () => {
  it('reads its task from the container environment the state machine sets', () => {
    expect(workerTaskFromEnv(ENV)).toEqual({
      task: 'copyShare',
      migrationId: 'm1',
      taskToken: 'tok',
      loadId: 'exec@now',
      share: 1,
    });
    const runTask = {
      Overrides: {
        ContainerOverrides: [
          { Name: 'worker', Environment: Object.entries(ENV).map(([Name, Value]) => ({ Name, Value })) },
        ],
      },
    };
    expect(containerEnvironment(runTask)).toEqual(ENV);
  });

  it('acts on the table of the stack when its environment names one, and on the local state directory otherwise', async () => {
    expect(await deployedWorkerStore({})).toBeUndefined();
    const deployed = {
      PGFERRY_TABLE_NAME: 'prod-pgferry-migrations',
      PGFERRY_BUS_NAME: 'prod-pgferry-events',
      PGFERRY_BUCKET_NAME: 'prod-pgferry-artifacts',
      PGFERRY_STAGE: 'prod',
      AWS_REGION: 'eu-west-1',
    };
    expect(await deployedWorkerStore(deployed)).toBeInstanceOf(DynamoMigrationStore);
    // The dump strategy's data goes through the stack's bucket there, and through a local file otherwise.
    expect(await deployedWorkerDumpStore({})).toBeUndefined();
    // Deployed, the bucket announces each dump (its S3 event completes "Wait for the dump upload").
    const dumps = await deployedWorkerDumpStore(deployed);
    expect(Object.keys(dumps ?? {}).sort()).toEqual(['announces', 'discard', 'open', 'put']);
    expect(dumps?.announces).toBe(true);
    // Half a deployment's environment is named, not guessed around.
    await expect(deployedWorkerStore({ PGFERRY_TABLE_NAME: 'prod-pgferry-migrations' })).rejects.toMatchObject({
      name: 'InvalidInputError',
      field: 'PGFERRY_BUS_NAME',
    });
  });

  it('names the variable that is missing or wrong, and what it takes', () => {
    expect(refused({ ...ENV, PGFERRY_TASK_TOKEN: '' })).toMatchObject({ field: 'PGFERRY_TASK_TOKEN' });
    const lambda = refused({ ...ENV, PGFERRY_TASK: 'cutover' });
    expect(lambda.field).toBe('PGFERRY_TASK');
    expect(lambda.hint).toMatch(/bulkLoad.*copyShare/);
    expect(refused({ ...ENV, PGFERRY_SHARE: 'two' })).toMatchObject({ field: 'PGFERRY_SHARE' });
    expect(refused({ ...ENV, PGFERRY_LOAD_ID: undefined })).toMatchObject({ field: 'PGFERRY_LOAD_ID' });
  });

  it('has --help, and exits 2 naming the variable when started without its environment', async () => {
    const out: string[] = [];
    const write = process.stdout.write.bind(process.stdout);
    const err = process.stderr.write.bind(process.stderr);
    process.stdout.write = ((s: string) => out.push(s) > 0) as typeof process.stdout.write;
    process.stderr.write = ((s: string) => out.push(s) > 0) as typeof process.stderr.write;
    const saved = process.env.PGFERRY_TASK;
    delete process.env.PGFERRY_TASK;
    const rt = testRuntime();
    try {
      expect(await main(['worker', '--help'])).toBe(0);
      expect(out.join('')).toMatch(/PGFERRY_TASK_TOKEN/);
      out.length = 0;
      expect(await main(['worker', '--state-dir', rt.stateDir])).toBe(2);
      expect(out.join('')).toMatch(/PGFERRY_TASK is not set/);
    } finally {
      process.stdout.write = write;
      process.stderr.write = err;
      if (saved !== undefined) process.env.PGFERRY_TASK = saved;
      rt.dispose();
    }
  });

  it('fails its token with the error name and a message without a secret', async () => {
    const rt = testRuntime();
    try {
      const callbacks = new InProcessTaskCallbacks();
      const task: WorkerTask = { task: 'prepareSchema', migrationId: 'nosuch', taskToken: 't1' };
      const outcome = await runWorker(task, { rt, callbacks, heartbeatMs: 10 });
      expect(outcome).toMatchObject({ ok: false, error: { name: 'MigrationNotFoundError' } });
      expect(callbacks.completed.get('t1')).toMatchObject({ error: 'MigrationNotFoundError' });
      // Completing twice is harmless, and no heartbeat goes out for a completed token.
      expect(await callbacks.fail('t1', 'x', 'y')).toBe(false);
    } finally {
      rt.dispose();
    }
  });

  it('runs a task with heartbeats and completes its token with a short summary', async () => {
    const { pair, rt } = await fixture.setup('workerok', 200);
    const m = await newMigration(rt, pair);
    const callbacks = new InProcessTaskCallbacks();
    const task: WorkerTask = { task: 'prepareSchema', migrationId: m.id, taskToken: 't2' };
    const outcome = await runWorker(task, { rt, callbacks, heartbeatMs: 5 });
    expect(outcome.ok).toBe(true);
    const done = callbacks.completed.get('t2');
    expect(done?.output).toMatchObject({ summary: expect.stringMatching(/schema restored/) });
    expect(JSON.stringify(done?.output)).not.toContain(new URL(pair.sourceUrl).password);
    expect(callbacks.heartbeats).toBeGreaterThan(0);
    expect((await rt.store.get(m.id)).phases['prepare-schema']?.endedAt).toBeDefined();
  });

  it('deployed, keeps out of a migration another holds, and lets go of it before completing its token', async () => {
    const { pair, rt } = await fixture.setup('workerlease', 100);
    const m = await newMigration(rt, pair);
    const files = rt.store as FileMigrationStore;
    const holder = await files.claim(m.id);
    const callbacks = new InProcessTaskCallbacks();
    const kept = await runWorker(
      { task: 'prepareSchema', migrationId: m.id, taskToken: 't5' },
      { rt, callbacks, lease: true },
    );
    expect(kept).toMatchObject({ ok: false, error: { name: 'MigrationBusyError' } });
    expect(callbacks.completed.get('t5')).toMatchObject({ error: 'MigrationBusyError' });
    const untouched = await rt.store.get(m.id);
    expect(untouched.phases['prepare-schema']).toBeUndefined();
    expect(untouched.lastError).toBeUndefined();
    await holder();

    // Once free, it runs; when its token is completed (the next state begins) the lease is free again.
    let freeAtCompletion: boolean | undefined;
    const completing = new (class extends InProcessTaskCallbacks {
      override async succeed(token: string, output: unknown) {
        try {
          await (await files.claim(m.id))();
          freeAtCompletion = true;
        } catch {
          freeAtCompletion = false;
        }
        return super.succeed(token, output);
      }
    })();
    const ran = await runWorker(
      { task: 'prepareSchema', migrationId: m.id, taskToken: 't6' },
      { rt, callbacks: completing, lease: true },
    );
    expect(ran.ok).toBe(true);
    expect(freeAtCompletion).toBe(true);
  });

  it('its execution gone, gives the lease up at once and ends the process when the work does not stop by itself', async () => {
    const { pair, rt } = await fixture.setup('workerexit', 200);
    // Its verify before the switch held inside its read (a verify checks no stop signal).
    const { m, point, faults } = await verifyHeldAtRead(rt, pair);
    const files = rt.store as FileMigrationStore;
    const callbacks = new InProcessTaskCallbacks();
    let exited = 0;
    try {
      const running = runWorker(
        { task: 'verifyBeforeSwitch', migrationId: m.id, taskToken: 't7' },
        { rt: { ...rt, faults }, callbacks, lease: true, heartbeatMs: 20, stopWithinMs: 200, exit: () => exited++ },
      );
      await point.reached;
      await expect(files.claim(m.id)).rejects.toMatchObject({ name: 'MigrationBusyError' });
      // The execution is gone (Slack's rollback stopped it): its heartbeat is refused.
      callbacks.gone = true;
      let free: (() => Promise<void>) | undefined;
      for (let i = 0; i < 100 && !free; i++)
        free = await files.claim(m.id).catch(() => sleep(20).then(() => undefined));
      expect(free).toBeDefined();
      await free?.();
      for (let i = 0; i < 100 && !exited; i++) await sleep(20);
      expect(exited).toBe(1);
      expect(rt.logs).toContain('verifyBeforeSwitch did not stop within 200 ms: ending the process');
      point.release();
      await running;
    } finally {
      point.release();
    }
  });

  it('its lease lost to another holder, stops its work, changes nothing more and ends the process', async () => {
    const { pair, rt } = await fixture.setup('workerlost', 200);
    const { m, point, faults } = await verifyHeldAtRead(rt, pair);
    const files = rt.store as FileMigrationStore;
    // The real store, but its claim tells the holder it was lost when the test says (as the deployed
    // store does once another holder took a lapsed lease).
    let lose: ((message: string) => void) | undefined;
    const store = Object.assign(Object.create(files) as FileMigrationStore, {
      claim: async (id: string, _holder?: string, options?: { onLost?: (message: string) => void }) => {
        lose = options?.onLost;
        return files.claim(id);
      },
    });
    const callbacks = new InProcessTaskCallbacks();
    let exited = 0;
    try {
      const running = runWorker(
        { task: 'verifyBeforeSwitch', migrationId: m.id, taskToken: 't8' },
        { rt: { ...rt, store, faults }, callbacks, lease: true, stopWithinMs: 200, exit: () => exited++ },
      );
      await point.reached;
      const before = await files.get(m.id);
      lose?.(`the lease on migration ${m.id} was taken over by another holder after it lapsed`);
      for (let i = 0; i < 100 && !exited; i++) await sleep(20);
      expect(exited).toBe(1);
      expect(rt.logs.join('\n')).toContain('this task changes nothing more');
      point.release();
      const outcome = await running;
      // Its verify's result is written nowhere: the migration is as the other holder has it.
      expect(outcome).toMatchObject({ ok: false, error: { name: 'MigrationBusyError' } });
      expect((await files.get(m.id)).version).toBe(before.version);
    } finally {
      point.release();
    }
  });

  it('goes on through heartbeats that fail for a moment (throttled, the network), and says so', async () => {
    const { pair, rt } = await fixture.setup('workerblip', 200);
    const m = await newMigration(rt, pair);
    const callbacks = new InProcessTaskCallbacks();
    callbacks.failing = HEARTBEAT_FAILURES_TO_STOP - 1;
    const task: WorkerTask = { task: 'prepareSchema', migrationId: m.id, taskToken: 't4' };
    const outcome = await runWorker(task, { rt, callbacks, heartbeatMs: 1 });
    expect(outcome.ok, JSON.stringify(outcome)).toBe(true);
    expect(
      rt.logs.some((l) => /heartbeat failed \(ThrottlingException: Rate exceeded\), 1 of 5 in a row/.test(l)),
    ).toBe(true);
    expect(rt.logs.some((l) => /heartbeat refused/.test(l))).toBe(false);
  });

  it('a coordinator whose heartbeat is refused (the execution is gone) stops and drops its slot', async () => {
    const { pair, rt } = await fixture.setup('workergone', 300);
    const m = await newMigration(rt, pair, { copyWorkers: 2, splitTableBytes: 32 * 1024 });
    const session = await openSession(rt, m.id);
    await prepareSchema(session.ctx).finally(() => session.close());
    const callbacks = new InProcessTaskCallbacks();
    const task: WorkerTask = { task: 'bulkLoad', migrationId: m.id, taskToken: 't3', loadId: 'gone@1' };
    const running = runWorker(task, { rt, callbacks, heartbeatMs: 20 });
    // The plan is recorded and the slot holds WAL: no worker will ever copy a share.
    for (let i = 0; i < 200 && (await rt.store.get(m.id)).copyPlan?.loadId !== 'gone@1'; i++) await sleep(50);
    expect((await rt.store.get(m.id)).copyPlan?.shares).toHaveLength(2);
    callbacks.gone = true;
    const outcome = await running;
    expect(outcome).toMatchObject({ ok: false, error: { name: 'BulkLoadFailedError' } });
    expect(outcome.error?.message).toMatch(/stopped while its workers copied/);
    expect(
      await pair.source('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [objectNames(m.id).slot]),
    ).toEqual([]);
    expect((await rt.store.get(m.id)).dataLoadedAt).toBeUndefined();
  });
});
