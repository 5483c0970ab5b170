import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DBInstanceNotFoundFault, DescribeDBInstancesCommand, RDSClient } from '@aws-sdk/client-rds';
import {
  SendTaskFailureCommand,
  SendTaskSuccessCommand,
  SFNClient,
  SFNServiceException,
  TaskTimedOut,
} from '@aws-sdk/client-sfn';
import type { Context } from 'aws-lambda';
import { mockClient } from 'aws-sdk-client-mock';
import { beforeEach, describe, expect, it } from 'vitest';
import { createHandler } from '../functions/rds-instance-event';
import { RDS_WAIT_EVENTS, type RdsEventDeps, SfnTaskCallbacks } from '../packages/aws/src/index';
import { TEST_CLIENT_CONFIG } from './harness/aws-clients';
import { MemoryMigrationStore } from './harness/memory-store';
import { availableInstance, rdsInstance } from './harness/rds';

const fixtures = join(import.meta.dirname, 'fixtures/events');
function fixture(name: string): Record<string, unknown> & { detail: Record<string, unknown> } {
  return JSON.parse(readFileSync(join(fixtures, `rds-${name}.json`), 'utf8'));
}

const rdsClient = new RDSClient(TEST_CLIENT_CONFIG);
const rds = mockClient(rdsClient);
const sfnClient = new SFNClient(TEST_CLIENT_CONFIG);
const sfn = mockClient(sfnClient);
const meta = { $metadata: {} };
const context = {} as Context;

let store: MemoryMigrationStore;
let logged: string[];
let handler: ReturnType<typeof createHandler>;

beforeEach(async () => {
  rds.reset();
  sfn.reset();
  sfn.on(SendTaskSuccessCommand).resolves({}).on(SendTaskFailureCommand).resolves({});
  store = new MemoryMigrationStore();
  logged = [];
  const deps: RdsEventDeps = {
    rds: rdsClient,
    store,
    callbacks: new SfnTaskCallbacks(sfnClient),
    log: (m) => logged.push(m),
  };
  handler = createHandler(() => deps);
  // Provision target created pgferry-shop for migration shop and waits on token-1.
  await store.correlate('RDS#pgferry-shop', 'shop');
  await store.putTaskToken('shop', 'provisionTarget', 'token-1');
});

describe('the RDS DB Instance Event fixtures', () => {
  it('each names its documentation source and is an RDS DB Instance Event with a documented EventID', () => {
    const files = readdirSync(fixtures).filter((f) => f.startsWith('rds-'));
    expect(files.length).toBeGreaterThanOrEqual(7);
    for (const f of files) {
      const e = JSON.parse(readFileSync(join(fixtures, f), 'utf8'));
      expect(e._source, f).toMatch(/https:\/\/docs\.aws\.amazon\.com\/AmazonRDS\/latest\/UserGuide\//);
      expect(e['detail-type']).toBe('RDS DB Instance Event');
      expect(e.source).toBe('aws.rds');
      expect(e.detail.EventID).toMatch(/^RDS-EVENT-\d{4}$/);
    }
  });
});

describe('functions/rds-instance-event', () => {
  it('completes the step when "DB instance created" finds the instance available, with its endpoint and secret ARN', async () => {
    const instance = availableInstance({ migrationId: 'shop' });
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [instance] });
    const outcome = await handler(fixture('instance-created'), context);
    expect(outcome).toEqual({
      action: 'succeeded',
      migrationId: 'shop',
      instance: 'pgferry-shop',
      eventId: 'RDS-EVENT-0005',
      status: 'available',
    });
    expect(rds.commandCalls(DescribeDBInstancesCommand).map((c) => c.args[0].input)).toEqual([
      { DBInstanceIdentifier: 'pgferry-shop' },
    ]);
    expect(sfn.commandCalls(SendTaskSuccessCommand).map((c) => c.args[0].input)).toEqual([
      {
        taskToken: 'token-1',
        output: JSON.stringify({
          summary:
            'RDS instance pgferry-shop is available at pgferry-shop.c1a2b3c4d5e6.eu-west-1.rds.amazonaws.com:5432 (PostgreSQL 17.4, Multi-AZ)',
          instance: 'pgferry-shop',
          status: 'available',
          created: true,
          waiting: false,
          endpoint: 'pgferry-shop.c1a2b3c4d5e6.eu-west-1.rds.amazonaws.com',
          port: 5432,
          engineVersion: '17.4',
          masterUserSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-0a1b2c3d-AbCdEf',
        }),
      },
    ]);
    expect(store.tokens.size).toBe(0);
  });

  it('waits through "created" while the first backup runs, and completes on "Finished DB Instance backup"', async () => {
    rds
      .on(DescribeDBInstancesCommand)
      .resolvesOnce({ DBInstances: [rdsInstance({ migrationId: 'shop', DBInstanceStatus: 'backing-up' })] })
      .resolves({ DBInstances: [availableInstance({ migrationId: 'shop' })] });
    expect(await handler(fixture('instance-created'), context)).toMatchObject({
      action: 'ignored',
      reason: 'not-available-yet',
      status: 'backing-up',
    });
    expect(store.tokens.get('shop#provisionTarget')).toBe('token-1');
    // "Backing up the DB instance." ends no wait: not even a look at the instance.
    expect(await handler(fixture('instance-backup-started'), context)).toMatchObject({
      action: 'ignored',
      reason: 'other-event',
    });
    expect(rds.commandCalls(DescribeDBInstancesCommand)).toHaveLength(1);
    expect(await handler(fixture('instance-backup-finished'), context)).toMatchObject({ action: 'succeeded' });
    expect(sfn.commandCalls(SendTaskSuccessCommand)).toHaveLength(1);
    expect(logged).toEqual([
      'ignored RDS-EVENT-0005 (DB instance created.) for RDS instance pgferry-shop of migration shop: the instance is backing-up, not available yet',
      'ignored RDS-EVENT-0001 (Backing up the DB instance.) for RDS instance pgferry-shop of migration shop: not an event that ends the wait',
      'completed Provision target of migration shop on RDS-EVENT-0002 (Finished DB Instance backup.) for RDS instance pgferry-shop: instance available',
    ]);
  });

  it('completes nothing twice: a duplicate or a late event is ignored with a log line', async () => {
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [availableInstance({ migrationId: 'shop' })] });
    await handler(fixture('instance-created'), context);
    expect(await handler(fixture('instance-created'), context)).toMatchObject({
      action: 'ignored',
      reason: 'no-waiting-step',
    });
    expect(await handler(fixture('instance-backup-finished'), context)).toMatchObject({
      action: 'ignored',
      reason: 'no-waiting-step',
    });
    expect(sfn.commandCalls(SendTaskSuccessCommand)).toHaveLength(1);
    expect(logged.at(-1)).toBe(
      'ignored RDS-EVENT-0002 (Finished DB Instance backup.) for RDS instance pgferry-shop of migration shop: no step waits on it (a duplicate or late event)',
    );
  });

  it('completes one step only when two deliveries of the same event race', async () => {
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [availableInstance({ migrationId: 'shop' })] });
    const outcomes = await Promise.all([
      handler(fixture('instance-created'), context),
      handler(fixture('instance-created'), context),
    ]);
    expect(outcomes.map((o) => o.action).sort()).toEqual(['ignored', 'succeeded']);
    expect(sfn.commandCalls(SendTaskSuccessCommand)).toHaveLength(1);
  });

  it.each([
    ['instance-incompatible-network', 'incompatible-network', /its subnets or network are invalid/],
    ['instance-invalid-parameters', 'incompatible-parameters', /parameter of its parameter group is incompatible/],
    ['instance-storage-full', 'storage-full', /its storage is full/],
  ])('fails the step on %s, with the status and the event in the cause', async (name, status, reason) => {
    rds
      .on(DescribeDBInstancesCommand)
      .resolves({ DBInstances: [rdsInstance({ migrationId: 'shop', DBInstanceStatus: status })] });
    const e = fixture(name);
    expect(await handler(e, context)).toMatchObject({ action: 'failed', status, migrationId: 'shop' });
    const input = sfn.commandCalls(SendTaskFailureCommand)[0]!.args[0].input;
    expect(input.taskToken).toBe('token-1');
    expect(input.error).toBe('RdsTargetFailedError');
    expect(input.cause).toMatch(new RegExp(`^RDS instance pgferry-shop is ${status}: `));
    expect(input.cause).toMatch(reason);
    expect(input.cause).toContain(`Last event: ${e.detail.EventID} ${e.detail.Message}`);
    expect(sfn.commandCalls(SendTaskSuccessCommand)).toHaveLength(0);
  });

  it('fails the step when the instance it waits for is gone', async () => {
    rds.on(DescribeDBInstancesCommand).rejects(new DBInstanceNotFoundFault({ message: 'not found', ...meta }));
    const deleted = fixture('instance-created');
    deleted.detail = { ...deleted.detail, EventID: 'RDS-EVENT-0003', Message: 'The DB instance has been deleted.' };
    expect(await handler(deleted, context)).toMatchObject({ action: 'failed', status: 'deleted' });
    expect(sfn.commandCalls(SendTaskFailureCommand)[0]!.args[0].input.cause).toMatch(/is deleted: it no longer exists/);
  });

  it('goes by the status, not the event, when a failure event arrives out of order after the instance recovered', async () => {
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [availableInstance({ migrationId: 'shop' })] });
    expect(await handler(fixture('instance-invalid-parameters'), context)).toMatchObject({ action: 'succeeded' });
    expect(sfn.commandCalls(SendTaskFailureCommand)).toHaveLength(0);
  });

  it('ignores an instance no migration waits for, without asking RDS or Step Functions', async () => {
    // The RDS User Guide's own sample: instance "testdb", stopped.
    expect(await handler(fixture('instance-stopped'), context)).toEqual({
      action: 'ignored',
      reason: 'unknown-instance',
      instance: 'testdb',
      eventId: 'RDS-EVENT-0087',
    });
    expect(rds.calls()).toHaveLength(0);
    expect(sfn.calls()).toHaveLength(0);
    expect(logged).toEqual([
      'ignored RDS-EVENT-0087 (DB instance stopped) for RDS instance testdb: no migration waits for this instance',
    ]);
  });

  it('logs a token Step Functions no longer waits on (the step timed out) and does not throw', async () => {
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [availableInstance({ migrationId: 'shop' })] });
    sfn.on(SendTaskSuccessCommand).rejects(new TaskTimedOut({ message: 'Task Timed Out', ...meta }));
    expect(await handler(fixture('instance-created'), context)).toMatchObject({
      action: 'ignored',
      reason: 'token-already-complete',
    });
    expect(logged.at(-1)).toMatch(/Step Functions no longer waits on its token/);
  });

  it('puts the token back when Step Functions cannot be reached, so that a redelivery completes it', async () => {
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [availableInstance({ migrationId: 'shop' })] });
    sfn
      .on(SendTaskSuccessCommand)
      .rejectsOnce(
        new SFNServiceException({ name: 'ServiceUnavailable', $fault: 'server', message: 'unavailable', ...meta }),
      )
      .resolves({});
    await expect(handler(fixture('instance-created'), context)).rejects.toThrow(/unavailable/);
    expect(store.tokens.get('shop#provisionTarget')).toBe('token-1');
    expect(await handler(fixture('instance-created'), context)).toMatchObject({ action: 'succeeded' });
  });

  it('fails the invocation on an event that is not an RDS DB Instance Event (the DLQ keeps it)', async () => {
    const other = { ...fixture('instance-created'), 'detail-type': 'RDS DB Cluster Event' };
    await expect(handler(other, context)).rejects.toThrow(/not an RDS DB Instance Event: detail-type/);
    await expect(handler({ ...fixture('instance-created'), detail: {} }, context)).rejects.toThrow(
      /detail.SourceIdentifier/,
    );
    expect(sfn.calls()).toHaveLength(0);
  });

  it('acts on the documented creation and failure events only', () => {
    expect(Object.keys(RDS_WAIT_EVENTS).sort()).toEqual(
      ['0002', '0003', '0005', '0007', '0031', '0035', '0036', '0087', '0088', '0221'].map((n) => `RDS-EVENT-${n}`),
    );
  });
});
