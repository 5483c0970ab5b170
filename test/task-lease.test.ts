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
import { frozen, holdPoint, migrationFixture, newMigration } from './harness/migration';

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
    const faults: FaultPoints = {
      beforeDrainForecast: async () => {
        await point.hold();
      },
    };
    const logged: string[] = [];
    const cloudwatch = mockClient(CloudWatchClient);
    const deps = {
      store,
      log: (line: string) => logged.push(line),
      callbacks: new InProcessTaskCallbacks(),
      env: ENV,
      clients: { cloudwatch: new CloudWatchClient({ region: 'eu-west-1' }) } as AwsClients,
      faults,
    } as AwsTaskDeps;
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
});
