import { readdirSync, readFileSync } from 'node:fs';
import { CloudWatchClient, PutMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import {
  DatabaseMigrationServiceClient,
  DescribeReplicationsCommand,
  DescribeReplicationTasksCommand,
} from '@aws-sdk/client-database-migration-service';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { EventBridgeClient } from '@aws-sdk/client-eventbridge';
import { RDSClient } from '@aws-sdk/client-rds';
import { HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { SendTaskFailureCommand, SendTaskSuccessCommand, SFNClient } from '@aws-sdk/client-sfn';
import { DeleteCommand, DynamoDBDocumentClient, GetCommand, PutCommand } from '@aws-sdk/lib-dynamodb';
import {
  DMS_CALLBACK_STEP,
  DUMP_UPLOAD_STEP,
  dmsReplicationStatus,
  dmsTaskStatus,
  SfnTaskCallbacks,
} from '@pgferry/aws';
import {
  type DeploymentEnv,
  deploymentEnv,
  type MigrationState,
  type TaskInput,
  type TaskName,
  takesLease,
  WORKFLOW_TASKS,
  workflowDefinition,
} from '@pgferry/core';
import { mockClient } from 'aws-sdk-client-mock';
import { build } from 'esbuild';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createHandler as createDmsHandler } from '../functions/events/dms-task-state';
import { createHandler as createDumpHandler } from '../functions/events/dump-created';
import { type AwsClients, awsTaskDeps } from '../functions/lib/aws-deps';
import { publishFigures, taskFigures } from '../functions/lib/metrics';
import { createTaskHandler } from '../functions/lib/task-handler';
import { LAMBDA_TASKS } from '../stacks/tasks';
import { MemoryMigrationStore } from './harness/memory-store';

const ENV: DeploymentEnv = {
  tableName: 'test-pgferry-Migrations',
  busName: 'test-pgferry-events',
  bucketName: 'test-pgferry-artifacts',
  stage: 'test',
};

const clients: AwsClients = {
  dynamo: new DynamoDBClient({ region: 'eu-west-1' }),
  sfn: new SFNClient({ region: 'eu-west-1' }),
  events: new EventBridgeClient({ region: 'eu-west-1' }),
  rds: new RDSClient({ region: 'eu-west-1' }),
  secrets: new SecretsManagerClient({ region: 'eu-west-1' }),
  cloudwatch: new CloudWatchClient({ region: 'eu-west-1' }),
  dms: new DatabaseMigrationServiceClient({ region: 'eu-west-1' }),
  s3: new S3Client({ region: 'eu-west-1' }),
};
// The store sends through a document client made from `clients.dynamo`: mocked on its class.
const dynamo = mockClient(DynamoDBDocumentClient);
const cloudwatch = mockClient(clients.cloudwatch);
const sfnMock = mockClient(clients.sfn);
const mocks = [
  dynamo,
  cloudwatch,
  sfnMock,
  mockClient(clients.events),
  mockClient(clients.rds),
  mockClient(clients.secrets),
];
const dmsMock = mockClient(clients.dms);
mocks.push(dmsMock);
/** Every request any client sent, as `Command` names. */
const sent = () => mocks.flatMap((m) => m.calls().map((c) => c.args[0].constructor.name));

let logged: string[];
const handlerFor = (task: TaskName) => createTaskHandler(task, () => awsTaskDeps(clients, ENV, (m) => logged.push(m)));
const context = { awsRequestId: 'req-1', functionName: 'fn' } as never;

/**
 * The Payload the deployed definition sends a Lambda task state, its `.$` paths read from an
 * execution's data (definition.ts builds them; the same text is deployed).
 */
function payloadFor(task: TaskName, data: Record<string, unknown>): Record<string, unknown> {
  const states: Record<string, { Resource?: string; Parameters?: { Payload?: Record<string, string> } }> = {};
  const collect = (node: unknown): void => {
    if (!node || typeof node !== 'object') return;
    const { States } = node as { States?: Record<string, unknown> };
    if (States) Object.assign(states, States);
    for (const value of Object.values(node)) collect(value);
  };
  collect(workflowDefinition());
  const state = Object.values(states).find((s) => s.Parameters?.Payload?.task === task);
  if (!state?.Parameters?.Payload) throw new Error(`no Lambda state sends task ${task}`);
  const payload: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(state.Parameters.Payload)) {
    if (!key.endsWith('.$')) payload[key] = value;
    else if (value === '$$.Task.Token') payload[key.slice(0, -2)] = 'AQCEAAAAKgAAAAMAAAAAAAAAAe-token';
    else payload[key.slice(0, -2)] = data[value.replace(/^\$\./, '').split('.')[0]!];
  }
  return payload;
}

beforeEach(() => {
  for (const m of mocks) m.reset();
  logged = [];
});
afterEach(() => {
  for (const m of mocks) m.reset();
});

describe('task handlers', () => {
  it('one handler file per Lambda task of the table, and no other', () => {
    expect(readdirSync('functions/tasks').sort()).toEqual(LAMBDA_TASKS.map((t) => `${t}.ts`).sort());
  });

  it.each(LAMBDA_TASKS.filter((t) => t !== 'provisionTarget'))(
    '%s: a migration the table does not hold fails with MigrationNotFoundError after one consistent read, nothing else sent but its lease',
    async (task) => {
      dynamo.on(GetCommand).resolves({});
      const event = payloadFor(task, { migrationId: 'shop_1', target: {}, gate: {}, verify: {} });
      expect(event).toMatchObject({ migrationId: 'shop_1', task });
      if ('callback' in WORKFLOW_TASKS[task]) expect(event.taskToken).toBeDefined();
      const error = await handlerFor(task)(event, context).catch((e: Error) => e);
      expect(error).toBeInstanceOf(Error);
      expect((error as Error).name).toBe('MigrationNotFoundError');
      expect((error as Error).message).toContain('shop_1');
      const gets = dynamo.commandCalls(GetCommand);
      expect(gets.length).toBeGreaterThanOrEqual(1);
      for (const call of gets)
        expect(call.args[0].input).toEqual({
          TableName: ENV.tableName,
          Key: { pk: 'MIGRATION#shop_1', sk: 'STATE' },
          ConsistentRead: true,
        });
      // The task's lease (withTaskLease), taken first and let go of after, unless the task takes none.
      const lease = { TableName: ENV.tableName, Key: { pk: 'MIGRATION#shop_1', sk: 'LEASE' } };
      const input: TaskInput = { ...event, migrationId: 'shop_1' };
      if (takesLease(task, input)) {
        expect(sent()).toEqual(['PutCommand', ...gets.map(() => 'GetCommand'), 'DeleteCommand']);
        expect(dynamo.commandCalls(PutCommand)[0]!.args[0].input).toMatchObject({
          TableName: ENV.tableName,
          Item: { ...lease.Key, who: `"${WORKFLOW_TASKS[task].state}" in Lambda fn, request req-1` },
          ConditionExpression: 'attribute_not_exists(pk) OR leaseUntil < :now',
        });
        expect(dynamo.commandCalls(DeleteCommand)[0]!.args[0].input).toMatchObject(lease);
      } else expect(new Set(sent())).toEqual(new Set(['GetCommand']));
      expect(logged.join('\n')).toContain(`${task} of migration shop_1 failed`);
    },
  );

  it('provisionTarget: a migration whose record names no target is refused naming the field, before anything is created', async () => {
    // The record of a migration not started from a plan: its config has no target.
    const state = {
      id: 'shop_1',
      version: 1,
      status: 'running',
      phase: 'assess',
      config: { id: 'shop_1' },
      events: [],
    };
    dynamo
      .on(GetCommand)
      .resolves({ Item: { pk: 'MIGRATION#shop_1', sk: 'STATE', version: 1, body: JSON.stringify(state) } });
    const event = payloadFor('provisionTarget', { migrationId: 'shop_1' });
    expect(event.taskToken).toBeDefined();
    const error = (await handlerFor('provisionTarget')(event, context).catch((e: Error) => e)) as Error & {
      field?: string;
    };
    expect(error.name).toBe('InvalidInputError');
    expect(error.field).toMatch(/^target/);
    // Nothing but the store's own items (the failure's hint kept with the migration: lastError; the lease).
    expect(
      sent().filter(
        (c) => !/^(Get|Put|Delete|GetItem|PutItem|UpdateItem|DeleteItem|TransactWriteItems)Command$/.test(c),
      ),
    ).toEqual([]);
  });

  it('refuses an event without a migration id, naming the field, and sends nothing', async () => {
    const error = (await handlerFor('assess')({ task: 'assess' }, context).catch((e: Error) => e)) as Error & {
      field?: string;
    };
    expect(error.name).toBe('InvalidInputError');
    expect(error.field).toBe('migrationId');
    expect(sent()).toEqual([]);
  });

  it('refuses an event meant for another task (a wrong substitution), and sends nothing', async () => {
    const error = (await handlerFor('cutover')({ migrationId: 'shop_1', task: 'rollback' }, context).catch(
      (e: Error) => e,
    )) as Error & { field?: string };
    expect(error.name).toBe('InvalidInputError');
    expect(error.field).toBe('task');
    expect(error.message).toContain('"cutover" function was sent the "rollback" task');
    expect(sent()).toEqual([]);
  });

  it('names the deployment variables that are missing', () => {
    expect(() => deploymentEnv({ PGFERRY_TABLE_NAME: 't' })).toThrow(
      'PGFERRY_BUS_NAME, PGFERRY_BUCKET_NAME, PGFERRY_STAGE not set',
    );
  });
});

const fixture = (name: string) => JSON.parse(readFileSync(`test/fixtures/events/${name}.json`, 'utf8'));

function eventDeps() {
  const store = new MemoryMigrationStore();
  const deps = {
    store,
    callbacks: new SfnTaskCallbacks(clients.sfn),
    log: (m: string) => logged.push(m),
    describeReplication: (arn: string) => dmsReplicationStatus(clients.dms, arn),
    describeTask: (arn: string) => dmsTaskStatus(clients.dms, arn),
  };
  return { store, deps };
}

const s3 = new S3Client({ region: 'eu-west-1' });
const s3Mock = mockClient(s3);

describe('event handlers', () => {
  beforeEach(() => s3Mock.reset());

  it('S3: the dump under dumps/ completes the waiting upload step once with its digest; a duplicate completes nothing', async () => {
    const { store, deps } = eventDeps();
    const event = fixture('s3-object-created-dump');
    const sha256 = 'ab'.repeat(32);
    s3Mock.on(HeadObjectCommand).resolves({ Metadata: { sha256, size: '734003200' }, ContentLength: 734003200 });
    await store.putTaskToken('shop', DUMP_UPLOAD_STEP, 'token-dump');
    sfnMock.on(SendTaskSuccessCommand).resolves({});
    const handler = createDumpHandler(() => ({ ...deps, s3, bucket: event.detail.bucket.name }));
    expect(await handler(event, context)).toMatchObject({ action: 'succeeded', migrationId: 'shop' });
    expect(await handler(event, context)).toMatchObject({ action: 'ignored', migrationId: 'shop' });
    expect(s3Mock.commandCalls(HeadObjectCommand)[0]!.args[0].input).toEqual({
      Bucket: event.detail.bucket.name,
      Key: 'dumps/shop/data.dump',
    });
    const calls = sfnMock.commandCalls(SendTaskSuccessCommand);
    expect(calls.map((c) => c.args[0].input.taskToken)).toEqual(['token-dump']);
    expect(JSON.parse(calls[0]!.args[0].input.output!)).toMatchObject({ key: 'dumps/shop/data.dump', sha256 });
  });

  it('S3: an event that is not Object Created is refused naming what is wrong, and sends nothing', async () => {
    const { deps } = eventDeps();
    const event = fixture('s3-object-created-dump');
    const handler = createDumpHandler(() => ({ ...deps, s3, bucket: event.detail.bucket.name }));
    const error = (await handler({ ...event, 'detail-type': 'Object Deleted' }, context).catch(
      (e: Error) => e,
    )) as Error;
    expect(error.name).toBe('InvalidInputError');
    expect(error.message).toContain('detail-type Object Deleted');
    expect(sent()).toEqual([]);
    expect(s3Mock.commandCalls(HeadObjectCommand)).toEqual([]);
  });

  it('DMS: the full load finished completes the waiting full-load step once; a duplicate completes nothing', async () => {
    const { store, deps } = eventDeps();
    const event = fixture('dms-task-stopped-full-load-finished');
    const arn = event.resources[0];
    await store.correlate(`DMS#${arn}`, 'shop_1');
    await store.putTaskToken('shop_1', DMS_CALLBACK_STEP, 'token-dms');
    sfnMock.on(SendTaskSuccessCommand).resolves({});
    // The event is a prompt: DescribeReplicationTasks says what is true now.
    dmsMock.on(DescribeReplicationTasksCommand).resolves({
      ReplicationTasks: [{ ReplicationTaskArn: arn, Status: 'stopped', StopReason: 'STOPPED_AFTER_CACHED_EVENTS' }],
    });
    const handler = createDmsHandler(() => deps);
    expect(await handler(event, context)).toMatchObject({ action: 'succeeded', migrationId: 'shop_1', taskArn: arn });
    expect(dmsMock.commandCalls(DescribeReplicationTasksCommand)[0]!.args[0].input).toMatchObject({
      Filters: [{ Name: 'replication-task-arn', Values: [arn] }],
    });
    expect(await handler(event, context)).toMatchObject({ action: 'ignored', migrationId: 'shop_1' });
    expect(sfnMock.commandCalls(SendTaskSuccessCommand).map((c) => c.args[0].input.taskToken)).toEqual(['token-dms']);
  });

  it('DMS Serverless: a state change is a prompt: DescribeReplications decides, the full-load step completes once, a duplicate completes nothing', async () => {
    const { store, deps } = eventDeps();
    const event = fixture('dms-replication-state-change-envelope-only');
    const arn = event.resources[0];
    await store.correlate(`DMS#${arn}`, 'shop_1');
    await store.putTaskToken('shop_1', DMS_CALLBACK_STEP, 'token-dms');
    sfnMock.on(SendTaskSuccessCommand).resolves({});
    const handler = createDmsHandler(() => deps);
    // Still loading: the event ends nothing, and the token stays for the next one.
    dmsMock
      .on(DescribeReplicationsCommand)
      .resolves({ Replications: [{ ReplicationConfigArn: arn, Status: 'running' }] });
    expect(await handler(event, context)).toMatchObject({ action: 'ignored', migrationId: 'shop_1' });
    dmsMock.on(DescribeReplicationsCommand).resolves({
      Replications: [
        { ReplicationConfigArn: arn, Status: 'stopped', StopReason: 'Stop Reason STOPPED_AFTER_CACHED_EVENTS' },
      ],
    });
    expect(await handler(event, context)).toMatchObject({ action: 'succeeded', migrationId: 'shop_1', taskArn: arn });
    expect(await handler(event, context)).toMatchObject({ action: 'ignored', migrationId: 'shop_1' });
    expect(dmsMock.commandCalls(DescribeReplicationsCommand)[0]!.args[0].input).toEqual({
      Filters: [{ Name: 'replication-config-arn', Values: [arn] }],
    });
    expect(sfnMock.commandCalls(SendTaskSuccessCommand).map((c) => c.args[0].input.taskToken)).toEqual(['token-dms']);
    // An event that is neither DMS detail-type is refused, naming the field.
    const error = (await handler({ ...event, 'detail-type': 'DMS Replication Endpoint State Change' }, context).catch(
      (e: Error) => e,
    )) as Error & { field?: string };
    expect(error.name).toBe('InvalidInputError');
    expect(error.field).toBe('detail-type');
  });

  it('DMS: a failed task fails the waiting step; an event that is not a DMS task change is refused naming the field', async () => {
    const { store, deps } = eventDeps();
    const event = fixture('dms-task-failed');
    await store.correlate(`DMS#${event.resources[0]}`, 'shop_1');
    await store.putTaskToken('shop_1', DMS_CALLBACK_STEP, 'token-dms');
    sfnMock.on(SendTaskFailureCommand).resolves({});
    dmsMock.on(DescribeReplicationTasksCommand).resolves({
      ReplicationTasks: [
        { ReplicationTaskArn: event.resources[0], Status: 'failed', LastFailureMessage: 'ODBC general error' },
      ],
    });
    const handler = createDmsHandler(() => deps);
    expect(await handler(event, context)).toMatchObject({ action: 'failed', migrationId: 'shop_1' });
    expect(sfnMock.commandCalls(SendTaskFailureCommand).map((c) => c.args[0].input)).toMatchObject([
      { taskToken: 'token-dms', error: 'DmsTaskFailed' },
    ]);
    sfnMock.resetHistory();
    dmsMock.resetHistory();
    const error = (await handler({ ...event, resources: [] }, context).catch((e: Error) => e)) as Error & {
      field?: string;
    };
    expect(error.name).toBe('InvalidInputError');
    expect(error.field).toBe('resources');
    expect(sent()).toEqual([]);
  });
});

describe('metrics', () => {
  const state = {
    lag: [
      { at: '2026-12-06T10:00:00Z', bytes: 10, ms: 100, generatedBps: 1, appliedBps: 1 },
      { at: '2026-12-06T10:00:05Z', bytes: 4096, ms: 1500, generatedBps: 1, appliedBps: 1 },
    ],
    walRetainedBytes: 123456,
    cutover: { writeGapMs: 87 },
  } as unknown as MigrationState;

  it('publishes the last lag sample and the retained WAL after Check lag, the write gap after Cut over, nothing else', () => {
    expect(taskFigures('checkLag', state)).toEqual({ lagBytes: 4096, lagSeconds: 1.5, walRetainedBytes: 123456 });
    expect(taskFigures('cutover', state)).toEqual({ writeGapMs: 87 });
    expect(taskFigures('assess', state)).toEqual({});
  });

  it('sends each figure per stage (what the alarms read) and per stage and migration', async () => {
    cloudwatch.on(PutMetricDataCommand).resolves({});
    const at = new Date('2026-12-06T10:00:05Z');
    await publishFigures(clients.cloudwatch, 'test', 'shop_1', { walRetainedBytes: 123456 }, at);
    expect(cloudwatch.commandCalls(PutMetricDataCommand).map((c) => c.args[0].input)).toEqual([
      {
        Namespace: 'pgferry',
        MetricData: [
          {
            MetricName: 'WalRetainedBytes',
            Dimensions: [{ Name: 'Stage', Value: 'test' }],
            Value: 123456,
            Unit: 'Bytes',
            Timestamp: at,
          },
          {
            MetricName: 'WalRetainedBytes',
            Dimensions: [
              { Name: 'Stage', Value: 'test' },
              { Name: 'MigrationId', Value: 'shop_1' },
            ],
            Value: 123456,
            Unit: 'Bytes',
            Timestamp: at,
          },
        ],
      },
    ]);
  });
});

describe('bundles', () => {
  // SST bundles with the esbuild this resolves to (package.json overrides SST's own 0.18, which cannot
  // parse the import attributes packages/postgres uses): a handler that fails here fails `sst deploy`.
  it('every handler the stack names bundles for Node 22 as ESM', async () => {
    const entryPoints = [
      ...readdirSync('functions/tasks').map((f) => `functions/tasks/${f}`),
      ...readdirSync('functions/events').map((f) => `functions/events/${f}`),
      ...readdirSync('functions/slack').map((f) => `functions/slack/${f}`),
      'functions/rds-instance-event.ts',
    ];
    const result = await build({
      entryPoints,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node22',
      // One build of the shared code for all of them (SST bundles each alone; the code is the same).
      splitting: true,
      outdir: 'out',
      write: false,
      // As SST builds them: pg's optional native binding is not installed.
      external: ['pg-native'],
      logLevel: 'silent',
      metafile: true,
    });
    expect(result.errors).toEqual([]);
    // With splitting, a dynamic import of a dependency is an entry point of its own.
    const entries = Object.values(result.metafile.outputs).filter((o) => o.entryPoint?.startsWith('functions/'));
    expect(entries.map((o) => o.entryPoint).sort()).toEqual([...entryPoints].sort());
    for (const entry of entries) expect(entry.exports).toContain('handler');
  });
});
