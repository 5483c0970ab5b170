/**
 * The migration's lease in a deployment: each Lambda task holds it while it runs (withTaskLease), so
 * that a task Step Functions stopped waiting for (Slack's rollback stops the execution and starts
 * another; Lambda runs the stopped one's invocation on) and the next execution's task never act on one
 * migration at once. Real parts: the Lambda handlers as deployed (createTaskHandler), the DynamoDB store
 * on DynamoDB Local, a real PostgreSQL pair; only CloudWatch (the handler's metrics) is mocked.
 */
import { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { DynamoMigrationStore } from '@pgferry/aws';
import type { DeploymentEnv, MigrationSecrets, TaskName } from '@pgferry/core';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AwsClients, AwsTaskDeps } from '../functions/lib/aws-deps';
import { createTaskHandler } from '../functions/lib/task-handler';
import { advance } from '../packages/cli/src/runner';
import { InProcessTaskCallbacks } from '../packages/cli/src/worker';
import type { FaultPoints } from '../packages/postgres/src/index';
import { type LocalDynamo, startDynamoLocal } from './harness/dynamodb';
import { frozen, holdPoint, migrationFixture, newMigration, sleep } from './harness/migration';

const fixture = migrationFixture();
let dynamo: LocalDynamo;

beforeAll(async () => {
  dynamo = await startDynamoLocal();
});
afterAll(async () => {
  await dynamo?.stop();
});

const ENV: DeploymentEnv = {
  tableName: 'lease',
  busName: 'test-pgferry-events',
  bucketName: 'test-pgferry-artifacts',
  stage: 'test',
};

/** A Lambda task's dependencies as deployed, on `store`, its log lines kept in `logged`. */
function taskDeps(store: DynamoMigrationStore, logged: string[], faults: FaultPoints): AwsTaskDeps {
  return {
    store,
    log: (line: string) => logged.push(line),
    callbacks: new InProcessTaskCallbacks(),
    env: ENV,
    clients: { cloudwatch: new CloudWatchClient({ region: 'eu-west-1' }) } as AwsClients,
    faults,
  } as AwsTaskDeps;
}

describe('the lease each deployed task holds', () => {
  it("keeps a rollback out while a stopped execution's cutover still runs, and lets it run once that ends", async () => {
    const { pair, rt } = await fixture.setup('lease_cut', 300);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    expect((await advance(rt, m.id, { cutover: 'manual' })).status).toBe('awaiting-cutover');

    // The migration as a deployment keeps it: its record in DynamoDB, its URLs in the vault.
    const secrets = await rt.store.secrets(m.id);
    const store = new DynamoMigrationStore({
      client: dynamo.doc,
      tableName: await dynamo.createTable('lease_cut'),
      vault: { resolve: async () => secrets as MigrationSecrets },
    });
    await store.create(await rt.store.get(m.id), secrets);

    const point = holdPoint();
    // The cut-over held after its gate opened, before its freeze: a Lambda still running.
    const logged: string[] = [];
    const cloudwatch = mockClient(CloudWatchClient);
    const deps = taskDeps(store, logged, { beforeDrainForecast: () => point.hold() });
    const handler = (task: TaskName) => createTaskHandler(task, () => deps);
    const context = (fn: string, request: string) => ({ functionName: fn, awsRequestId: request }) as never;

    try {
      const cutover = handler('cutover')({ migrationId: m.id, task: 'cutover' }, context('pgferry-cutover', 'req-a'));
      await point.reached;
      const before = await store.get(m.id);

      // The next execution's "Roll back" (Slack's rollback): refused before it touches anything.
      const refused = await handler('rollback')(
        { migrationId: m.id, task: 'rollback', error: null },
        context('pgferry-rollback', 'req-b'),
      ).catch((e: Error) => e);
      expect(refused).toMatchObject({ name: 'MigrationBusyError' });
      expect((refused as Error).message).toContain('"Cut over" in Lambda pgferry-cutover, request req-a');
      const during = await store.get(m.id);
      expect([during.version, during.status]).toEqual([before.version, before.status]);
      expect(await frozen(pair, 'source')).toBe(false);
      // A task inside the bulk load takes no lease (its coordinator holds it): it is not kept out.
      const plan = await handler('readCopyPlan')(
        { migrationId: m.id, task: 'readCopyPlan', loadId: 'x@1' },
        context('pgferry-readCopyPlan', 'req-c'),
      );
      expect(plan).toMatchObject({ ready: false });

      point.release();
      const cut = await cutover;
      expect(cut.summary).toMatch(/^write gap \d+ ms/);
      expect((await store.get(m.id)).status).toBe('cut-over');

      // The cutover's lease is released as it returns: the rollback runs now, and is the only one.
      const back = await handler('rollback')(
        { migrationId: m.id, task: 'rollback', error: null },
        context('pgferry-rollback', 'req-d'),
      );
      expect(back).toMatchObject({ action: 'roll-back' });
      const after = await store.get(m.id);
      expect(after.status).toBe('rolled-back');
      expect(await frozen(pair, 'source')).toBe(false);
      // And it let go of the lease too.
      await (await store.claim(m.id))();
    } finally {
      point.release();
      cloudwatch.restore();
    }
  });

  it('a task whose lease lapsed and was taken over changes nothing more: its cutover freezes nothing', async () => {
    const { pair, rt } = await fixture.setup('lease_lost', 200);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    expect((await advance(rt, m.id, { cutover: 'manual' })).status).toBe('awaiting-cutover');
    const secrets = await rt.store.secrets(m.id);
    const tableName = await dynamo.createTable('lease_lost');
    const vault = { resolve: async () => secrets as MigrationSecrets };
    // The cut-over's store: a lease of 1 s, renewed every 50 ms.
    const store = new DynamoMigrationStore({ client: dynamo.doc, tableName, vault, leaseMs: 1000, renewEveryMs: 50 });
    await store.create(await rt.store.get(m.id), secrets);
    const point = holdPoint();
    const logged: string[] = [];
    const cloudwatch = mockClient(CloudWatchClient);
    const deps = taskDeps(store, logged, { beforeDrainForecast: () => point.hold() });
    try {
      const cutover = createTaskHandler('cutover', () => deps)({ migrationId: m.id, task: 'cutover' }, {
        functionName: 'pgferry-cutover',
        awsRequestId: 'req-a',
      } as never);
      await point.reached;
      // Its renewals stalled for a whole lease (seen from the next claimant's clock, two leases on):
      // another holder takes the migration over.
      const later = new DynamoMigrationStore({ client: dynamo.doc, tableName, vault, now: () => Date.now() + 5000 });
      const other = await later.claim(m.id, 'the rollback');
      for (let i = 0; i < 100 && !logged.some((l) => l.includes('taken over')); i++) await sleep(20);
      const before = await store.get(m.id);
      // The stalled cutover goes on, and is refused at its first write: nothing frozen, nothing recorded.
      point.release();
      await expect(cutover).rejects.toMatchObject({
        name: 'MigrationBusyError',
        message: expect.stringContaining('this task changes nothing more'),
      });
      expect(await frozen(pair, 'source')).toBe(false);
      const after = await store.get(m.id);
      expect([after.version, after.status]).toEqual([before.version, before.status]);
      // Its release leaves the new holder's lease alone.
      await expect(store.claim(m.id)).rejects.toMatchObject({ name: 'MigrationBusyError' });
      await other();
    } finally {
      point.release();
      cloudwatch.restore();
    }
  });
});
