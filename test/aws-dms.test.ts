import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CloudWatchClient, GetMetricDataCommand, ListMetricsCommand } from '@aws-sdk/client-cloudwatch';
import {
  CreateEndpointCommand,
  CreateReplicationConfigCommand,
  CreateReplicationTaskCommand,
  DatabaseMigrationServiceClient,
  DeleteEndpointCommand,
  DeleteReplicationConfigCommand,
  DeleteReplicationTaskCommand,
  DescribeEndpointsCommand,
  DescribeReplicationConfigsCommand,
  DescribeReplicationInstancesCommand,
  DescribeReplicationsCommand,
  DescribeReplicationTasksCommand,
  ResourceNotFoundFault,
  StartReplicationCommand,
  StartReplicationTaskCommand,
  StopReplicationCommand,
  StopReplicationTaskCommand,
} from '@aws-sdk/client-database-migration-service';
import { mockClient } from 'aws-sdk-client-mock';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  AwsDmsReplication,
  type DmsReplicationStateChangeEvent,
  type DmsTaskStateChangeEvent,
  type DmsTaskStatus,
  dmsCdcLatency,
  dmsInstanceIdentifier,
  ensureDmsEndpoints,
  ensureDmsReplication,
  handleDmsReplicationStateChange,
  handleDmsTaskStateChange,
  startDmsTask,
  stopDmsTask,
} from '../packages/aws/src/index';
import {
  classifyDmsReplication,
  classifyDmsTaskEvent,
  type DmsPlan,
  type DmsTableInput,
  dmsDrained,
  dmsFindings,
  dmsNames,
  dmsPlanProblems,
  dmsReplicationConfigInput,
  dmsTableMappings,
  InvalidInputError,
  parseMigrationConfig,
  type TaskCallbacks,
} from '../packages/core/src/index';
import type { TableInfo } from '../packages/postgres/src/catalog';
import { MemoryMigrationStore } from './harness/memory-store';

const fixture = (name: string) =>
  JSON.parse(readFileSync(join(__dirname, 'fixtures/events', name), 'utf8')) as DmsTaskStateChangeEvent;

function table(name: string, columns: [string, string][], o: Partial<DmsTableInput> = {}): DmsTableInput {
  return {
    schema: 'public',
    name,
    kind: 'table',
    unlogged: false,
    primaryKey: ['id'],
    replicaIdentity: 'default',
    columns: columns.map(([n, type]) => ({ name: n, type })),
    ...o,
  };
}

describe('dmsFindings', () => {
  it("takes the assessment's TableInfo as it is", () => {
    // Type-level: a catalog TableInfo is a DmsTableInput.
    const info = {} as TableInfo;
    const input: DmsTableInput = info;
    expect(input).toBe(info);
  });

  it('finds nothing per table for types DMS migrates, only the database-wide limits (sequences, TRUNCATE, DDL)', () => {
    const findings = dmsFindings([
      table('orders', [
        ['id', 'bigint'],
        ['quantity', 'numeric(12)'],
        ['code', 'character varying(40)'],
        ['note', 'text'],
        ['at', 'date'],
      ]),
    ]);
    expect(findings.map((f) => [f.code, f.object])).toEqual([
      ['dms-sequences', '*'],
      ['dms-truncate', '*'],
      ['dms-ddl', '*'],
    ]);
    for (const f of findings) expect(f.source).toMatch(/^https:\/\//);
  });

  it('names each table and column DMS would not carry faithfully, citing the documentation', () => {
    const findings = dmsFindings([
      table(
        'events',
        [
          ['payload', 'jsonb'],
          ['tags', 'text[]'],
        ],
        { primaryKey: [] },
      ),
      table('hosts', [
        ['id', 'integer'],
        ['addr', 'inet'],
        ['mac', 'macaddr'],
        ['mood', 'public.mood'],
        ['price', 'numeric'],
      ]),
      table(
        'docs',
        [
          ['slug', 'text'],
          ['body', 'xml'],
          ['at', 'timestamp with time zone'],
          ['seen', 'timestamp(3) without time zone'],
        ],
        {
          primaryKey: ['slug'],
        },
      ),
      table('scratch', [['id', 'integer']], { unlogged: true }),
      table('measurements', [['id', 'integer']], { kind: 'partitioned' }),
      table('Orders', [['id', 'integer']]),
      table('orders', [['id', 'integer']]),
      table('blobs', [
        ['id', 'integer'],
        ['data', 'oid'],
      ]),
    ]).filter((f) => f.object !== '*');
    const by = (code: string) =>
      findings
        .filter((f) => f.code === code)
        .map((f) => ({ object: f.object, columns: f.columns, severity: f.severity }));
    expect(by('dms-no-primary-key')).toEqual([{ object: 'public.events', columns: undefined, severity: 'blocker' }]);
    expect(by('dms-array-without-primary-key')).toEqual([
      { object: 'public.events', columns: ['tags'], severity: 'blocker' },
    ]);
    expect(by('dms-type-not-migrated')).toEqual([
      { object: 'public.hosts', columns: ['addr', 'mac'], severity: 'blocker' },
    ]);
    expect(by('dms-user-type')).toEqual([{ object: 'public.hosts', columns: ['mood'], severity: 'blocker' }]);
    expect(by('dms-numeric-without-precision')).toEqual([
      { object: 'public.hosts', columns: ['price'], severity: 'blocker' },
    ]);
    expect(by('dms-lob-primary-key')).toEqual([{ object: 'public.docs', columns: ['slug'], severity: 'blocker' }]);
    expect(by('dms-type-partial')).toEqual([
      { object: 'public.events', columns: ['payload'], severity: 'warning' },
      { object: 'public.docs', columns: ['body', 'at'], severity: 'warning' },
    ]);
    expect(by('dms-timestamp-infinity')).toEqual([{ object: 'public.docs', columns: ['seen'], severity: 'warning' }]);
    expect(by('dms-unlogged')).toEqual([{ object: 'public.scratch', columns: undefined, severity: 'blocker' }]);
    expect(by('dms-partitioned')).toEqual([{ object: 'public.measurements', columns: undefined, severity: 'warning' }]);
    expect(by('dms-names-differ-in-case')).toEqual([
      { object: 'public.Orders, public.orders', columns: undefined, severity: 'blocker' },
    ]);
    expect(by('dms-oid-lob')).toEqual([{ object: 'public.blobs', columns: ['data'], severity: 'blocker' }]);
    expect(findings.find((f) => f.code === 'dms-type-not-migrated')!.message).toBe(
      'public.hosts: DMS does not migrate the type of addr (inet), mac (macaddr)',
    );
  });

  it('follows the data-type table on lengths and scales: VARCHAR(n) migrates, VARCHAR and NUMERIC(p,s>0) partially', () => {
    const partial = dmsFindings([
      table('prices', [
        ['id', 'integer'],
        ['amount', 'numeric(12,2)'],
        ['huge', 'numeric(40)'],
        ['label', 'character varying'],
        ['sku', 'character varying(12)'],
        ['flag', 'character(1)'],
      ]),
    ]).find((f) => f.code === 'dms-type-partial');
    expect(partial!.columns).toEqual(['amount', 'huge', 'label']);
  });

  it('takes REPLICA IDENTITY FULL without a primary key as a warning, not a blocker', () => {
    const [f] = dmsFindings([table('log', [['line', 'text']], { primaryKey: [], replicaIdentity: 'full' })]).filter(
      (x) => x.code === 'dms-no-primary-key',
    );
    expect(f!.severity).toBe('warning');
  });
});

describe('dmsTableMappings', () => {
  it('includes every table of each schema and excludes the left-out tables and partitioned parents, underscores literal', () => {
    expect(
      dmsTableMappings({
        schemas: ['public', 'sales_eu'],
        excluded: [{ schema: 'cron', name: 'job_run_details' }],
        partitionedParents: [{ schema: 'public', name: 'measurements' }],
      }),
    ).toEqual({
      rules: [
        {
          'rule-type': 'selection',
          'rule-id': '1',
          'rule-name': '1-include-schema',
          'object-locator': { 'schema-name': 'public', 'table-name': '%' },
          'rule-action': 'include',
        },
        {
          'rule-type': 'selection',
          'rule-id': '2',
          'rule-name': '2-include-schema',
          'object-locator': { 'schema-name': 'sales[_]eu', 'table-name': '%' },
          'rule-action': 'include',
        },
        {
          'rule-type': 'selection',
          'rule-id': '3',
          'rule-name': '3-exclude-table',
          'object-locator': { 'schema-name': 'cron', 'table-name': 'job[_]run[_]details' },
          'rule-action': 'exclude',
        },
        {
          'rule-type': 'selection',
          'rule-id': '4',
          'rule-name': '4-exclude-partitioned-parent',
          'object-locator': { 'schema-name': 'public', 'table-name': 'measurements' },
          'rule-action': 'exclude',
        },
      ],
    });
  });

  it('refuses to map no schema', () => {
    expect(() => dmsTableMappings({ schemas: [], excluded: [], partitionedParents: [] })).toThrow(InvalidInputError);
  });
});

describe('dmsNames', () => {
  it('derives valid, distinct DMS identifiers from migration ids', () => {
    const valid = /^[A-Za-z](?!.*--)[A-Za-z0-9-]{0,254}(?<!-)$/;
    const a = dmsNames('shop_v2_');
    const b = dmsNames('shop__v2');
    for (const n of [...Object.values(a), ...Object.values(b)]) expect(n).toMatch(valid);
    expect(a.task).not.toBe(b.task);
    expect(dmsNames('shop_v2_')).toEqual(a);
  });
});

const plan: DmsPlan = {
  migrationId: 'shop',
  sourceSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgferry/shop/source-AbCdEf',
  targetSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgferry/shop/target-GhIjKl',
  secretsAccessRoleArn: 'arn:aws:iam::123456789012:role/pgferry-dms-secrets',
  sourceDatabase: 'shop',
  targetDatabase: 'shop',
  compute: { kind: 'instance', replicationInstanceArn: 'arn:aws:dms:eu-west-1:123456789012:rep:ABCDEFGHIJKLMNOP' },
};
const mappings = { schemas: ['public'], excluded: [], partitionedParents: [] };
const TASK_ARN = 'arn:aws:dms:eu-west-1:123456789012:task:QXAJ6QWKZ5TPBHX7SOPGLY4F2Y';

describe('dmsPlanProblems', () => {
  it('names every field that is wrong', () => {
    expect(
      dmsPlanProblems({
        ...plan,
        sourceSecretArn: 'pgferry/shop/source',
        compute: { kind: 'serverless', maxCapacityUnits: 3, replicationSubnetGroupId: '', vpcSecurityGroupIds: [] },
      }).map((p) => p.field),
    ).toEqual(['sourceSecretArn', 'compute.maxCapacityUnits', 'compute.replicationSubnetGroupId']);
    expect(dmsPlanProblems(plan)).toEqual([]);
  });

  it('checks each DMS Serverless field, naming it: DCU sizes, min under max, the subnet group, security group ids', () => {
    const serverless = (c: Record<string, unknown>) =>
      dmsPlanProblems({
        ...plan,
        compute: { kind: 'serverless', maxCapacityUnits: 16, replicationSubnetGroupId: 'pgferry-subnets', ...c },
      });
    expect(serverless({})).toEqual([]);
    expect(serverless({ minCapacityUnits: 2, vpcSecurityGroupIds: ['sg-0123abcd'], multiAz: true })).toEqual([]);
    expect(serverless({ maxCapacityUnits: 12 })).toEqual([
      {
        field: 'compute.maxCapacityUnits',
        message: expect.stringContaining('1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 384'),
      },
    ]);
    expect(serverless({ minCapacityUnits: 32 }).map((p) => p.field)).toEqual(['compute.minCapacityUnits']);
    expect(serverless({ minCapacityUnits: 3 }).map((p) => p.field)).toEqual(['compute.minCapacityUnits']);
    expect(serverless({ vpcSecurityGroupIds: ['sg-0123abcd', 'default'] })).toEqual([
      { field: 'compute.vpcSecurityGroupIds', message: expect.stringContaining('"default"') },
    ]);
    expect(serverless({ replicationSubnetGroupId: 'subnets with spaces' }).map((p) => p.field)).toEqual([
      'compute.replicationSubnetGroupId',
    ]);
  });

  it("takes a migration's DMS Serverless settings, and names a field of the wrong type", () => {
    const config = (compute: Record<string, unknown>) =>
      parseMigrationConfig({
        id: 'shop',
        sourceUrl: 'postgres://u@s/shop',
        targetUrl: 'postgres://u@t/shop',
        strategy: 'dms',
        dms: {
          sourceSecretArn: plan.sourceSecretArn,
          targetSecretArn: plan.targetSecretArn,
          secretsAccessRoleArn: plan.secretsAccessRoleArn,
          compute,
        },
      });
    expect(
      config({ kind: 'serverless', maxCapacityUnits: 8, replicationSubnetGroupId: 'g', multiAz: true }).dms?.compute,
    ).toEqual({ kind: 'serverless', maxCapacityUnits: 8, replicationSubnetGroupId: 'g', multiAz: true });
    const err = (() => {
      try {
        config({ kind: 'serverless', maxCapacityUnits: '8', replicationSubnetGroupId: 'g' });
      } catch (e) {
        return e as Error;
      }
    })();
    expect(err?.message).toContain('dms.compute.maxCapacityUnits');
  });
});

describe('DMS task and endpoints', () => {
  const dms = mockClient(DatabaseMigrationServiceClient);
  const client = new DatabaseMigrationServiceClient({});
  beforeEach(() => dms.reset());

  it('creates the endpoints from the Secrets Manager secrets once, and finds them on a re-run', async () => {
    dms
      .on(DescribeEndpointsCommand)
      .rejects(new ResourceNotFoundFault({ message: 'No Endpoints found', $metadata: {} }));
    dms.on(CreateEndpointCommand).callsFake((i) => ({
      Endpoint: { EndpointArn: `arn:aws:dms:eu-west-1:123456789012:endpoint:${i.EndpointType}` },
    }));
    const names = dmsNames('shop');
    expect(await ensureDmsEndpoints(client, plan)).toEqual({
      sourceArn: 'arn:aws:dms:eu-west-1:123456789012:endpoint:source',
      targetArn: 'arn:aws:dms:eu-west-1:123456789012:endpoint:target',
    });
    expect(dms.commandCalls(DescribeEndpointsCommand)[0]!.args[0].input).toEqual({
      Filters: [{ Name: 'endpoint-id', Values: [names.sourceEndpoint] }],
    });
    expect(dms.commandCalls(CreateEndpointCommand).map((c) => c.args[0].input)).toEqual([
      {
        EndpointIdentifier: names.sourceEndpoint,
        EndpointType: 'source',
        EngineName: 'postgres',
        SslMode: 'require',
        PostgreSQLSettings: {
          DatabaseName: 'shop',
          SecretsManagerSecretId: plan.sourceSecretArn,
          SecretsManagerAccessRoleArn: plan.secretsAccessRoleArn,
          CaptureDdls: false,
          HeartbeatEnable: false,
        },
        Tags: [{ Key: 'pgferry:migration', Value: 'shop' }],
      },
      {
        EndpointIdentifier: names.targetEndpoint,
        EndpointType: 'target',
        EngineName: 'postgres',
        SslMode: 'require',
        PostgreSQLSettings: {
          DatabaseName: 'shop',
          SecretsManagerSecretId: plan.targetSecretArn,
          SecretsManagerAccessRoleArn: plan.secretsAccessRoleArn,
          AfterConnectScript: 'SET session_replication_role = replica',
        },
        Tags: [{ Key: 'pgferry:migration', Value: 'shop' }],
      },
    ]);

    dms.reset();
    dms
      .on(DescribeEndpointsCommand)
      .callsFake((i) => ({ Endpoints: [{ EndpointArn: `found:${i.Filters[0].Values[0]}` }] }));
    expect(await ensureDmsEndpoints(client, plan)).toEqual({
      sourceArn: `found:${names.sourceEndpoint}`,
      targetArn: `found:${names.targetEndpoint}`,
    });
    expect(dms.commandCalls(CreateEndpointCommand)).toHaveLength(0);
  });

  it('creates the full-load-and-CDC task with the mappings and settings, and correlates it with the migration', async () => {
    dms
      .on(DescribeReplicationTasksCommand)
      .rejects(new ResourceNotFoundFault({ message: 'No Tasks found', $metadata: {} }));
    dms.on(CreateReplicationTaskCommand).resolves({ ReplicationTask: { ReplicationTaskArn: TASK_ARN } });
    const store = new MemoryMigrationStore();
    const endpoints = { sourceArn: 'arn:src', targetArn: 'arn:tgt' };
    expect(await ensureDmsReplication(client, plan, endpoints, mappings, store)).toEqual({
      arn: TASK_ARN,
      created: true,
    });
    const input = dms.commandCalls(CreateReplicationTaskCommand)[0]!.args[0].input;
    expect({
      ...input,
      TableMappings: JSON.parse(input.TableMappings!),
      ReplicationTaskSettings: JSON.parse(input.ReplicationTaskSettings!),
    }).toEqual({
      ReplicationTaskIdentifier: dmsNames('shop').task,
      SourceEndpointArn: 'arn:src',
      TargetEndpointArn: 'arn:tgt',
      ReplicationInstanceArn: 'arn:aws:dms:eu-west-1:123456789012:rep:ABCDEFGHIJKLMNOP',
      MigrationType: 'full-load-and-cdc',
      TableMappings: dmsTableMappings(mappings),
      ReplicationTaskSettings: {
        TargetMetadata: {
          SupportLobs: true,
          FullLobMode: true,
          LobChunkSize: 64,
          LimitedSizeLobMode: false,
          LobMaxSize: 0,
        },
        FullLoadSettings: {
          TargetTablePrepMode: 'DO_NOTHING',
          StopTaskCachedChangesApplied: true,
          StopTaskCachedChangesNotApplied: false,
        },
        Logging: { EnableLogging: true },
        ControlTablesSettings: { ControlSchema: 'pgferry' },
      },
      Tags: [{ Key: 'pgferry:migration', Value: 'shop' }],
    });
    expect(store.correlations.get(`DMS#${TASK_ARN}`)).toBe('shop');

    dms.reset();
    dms.on(DescribeReplicationTasksCommand).resolves({ ReplicationTasks: [{ ReplicationTaskArn: TASK_ARN }] });
    expect(await ensureDmsReplication(client, plan, endpoints, mappings, store)).toEqual({
      arn: TASK_ARN,
      created: false,
    });
    expect(dms.commandCalls(CreateReplicationTaskCommand)).toHaveLength(0);
  });

  it('creates a DMS Serverless replication config when the plan asks for one', async () => {
    dms.on(DescribeReplicationConfigsCommand).rejects(new ResourceNotFoundFault({ message: 'none', $metadata: {} }));
    dms.on(CreateReplicationConfigCommand).resolves({
      ReplicationConfig: { ReplicationConfigArn: 'arn:aws:dms:eu-west-1:123456789012:replication-config:XYZ' },
    });
    const serverless: DmsPlan = {
      ...plan,
      compute: {
        kind: 'serverless',
        maxCapacityUnits: 16,
        minCapacityUnits: 2,
        replicationSubnetGroupId: 'pgferry-subnets',
        vpcSecurityGroupIds: ['sg-0123abcd'],
      },
    };
    await ensureDmsReplication(client, serverless, { sourceArn: 'arn:src', targetArn: 'arn:tgt' }, mappings);
    const input = dms.commandCalls(CreateReplicationConfigCommand)[0]!.args[0].input;
    expect(input.ReplicationType).toBe('full-load-and-cdc');
    expect(input.ComputeConfig).toEqual({
      MaxCapacityUnits: 16,
      MinCapacityUnits: 2,
      ReplicationSubnetGroupId: 'pgferry-subnets',
      VpcSecurityGroupIds: ['sg-0123abcd'],
      MultiAZ: false,
    });
    expect(JSON.parse(input.ReplicationSettings!).FullLoadSettings.StopTaskCachedChangesApplied).toBe(true);
    // Without security groups none is sent (DMS chooses), rather than an empty list.
    const bare = dmsReplicationConfigInput(
      {
        ...serverless,
        compute: { kind: 'serverless', maxCapacityUnits: 4, replicationSubnetGroupId: 'pgferry-subnets' },
      },
      { sourceArn: 'arn:src', targetArn: 'arn:tgt' },
      mappings,
    );
    expect(bare.ComputeConfig).toEqual({
      MaxCapacityUnits: 4,
      ReplicationSubnetGroupId: 'pgferry-subnets',
      MultiAZ: false,
    });
  });

  it('starts or resumes the task only when it is not running, and stops it only once', async () => {
    dms
      .on(DescribeReplicationTasksCommand)
      .resolves({ ReplicationTasks: [{ ReplicationTaskArn: TASK_ARN, Status: 'stopped' }] });
    expect(await startDmsTask(client, TASK_ARN, 'resume-processing')).toEqual({ started: true, status: 'starting' });
    expect(dms.commandCalls(StartReplicationTaskCommand)[0]!.args[0].input).toEqual({
      ReplicationTaskArn: TASK_ARN,
      StartReplicationTaskType: 'resume-processing',
    });
    expect(await stopDmsTask(client, TASK_ARN)).toEqual({ stopped: false });
    dms
      .on(DescribeReplicationTasksCommand)
      .resolves({ ReplicationTasks: [{ ReplicationTaskArn: TASK_ARN, Status: 'running' }] });
    expect(await startDmsTask(client, TASK_ARN, 'resume-processing')).toEqual({ started: false, status: 'running' });
    expect(dms.commandCalls(StartReplicationTaskCommand)).toHaveLength(1);
    expect(await stopDmsTask(client, TASK_ARN)).toEqual({ stopped: true });
    expect(dms.commandCalls(StopReplicationTaskCommand)[0]!.args[0].input).toEqual({ ReplicationTaskArn: TASK_ARN });
  });

  it('names the task and the permission when DMS refuses', async () => {
    dms.on(DescribeReplicationTasksCommand).rejects(
      Object.assign(new Error('not authorized to perform dms:DescribeReplicationTasks'), {
        name: 'AccessDeniedFault',
      }),
    );
    const err = (await startDmsTask(client, TASK_ARN, 'start-replication').catch((e: unknown) => e)) as Error & {
      hint?: string;
    };
    expect(err.message).toContain(`dms:DescribeReplicationTasks for DMS task ${TASK_ARN} failed`);
    expect(err.hint).toBe('grant dms:DescribeReplicationTasks to the role pgferry runs as');
  });
});

/** TaskCallbacks that records what it was asked; SendTask* themselves are the adapters' (packages/aws/src/callbacks). */
function recordingCallbacks(fail = false) {
  const calls: unknown[][] = [];
  const callbacks: TaskCallbacks = {
    succeed: async (token, output) => {
      if (fail) throw new Error('Step Functions unreachable');
      calls.push(['succeed', token, output]);
      return true;
    },
    fail: async (token, error, cause) => {
      calls.push(['fail', token, error, cause]);
      return true;
    },
    heartbeat: async () => {},
  };
  return { callbacks, calls };
}

describe('handleDmsTaskStateChange', () => {
  let store: MemoryMigrationStore;
  let lines: string[];
  /** What DescribeReplicationTasks says of the task now. */
  let task: DmsTaskStatus;
  beforeEach(async () => {
    store = new MemoryMigrationStore();
    lines = [];
    task = { status: 'stopped', stopReason: 'STOPPED_AFTER_CACHED_EVENTS' };
    await store.correlate(`DMS#${TASK_ARN}`, 'shop');
    await store.putTaskToken('shop', 'awaitDmsFullLoad', 'token-1');
  });
  const deps = (callbacks: TaskCallbacks) => ({
    store,
    callbacks,
    log: (l: string) => lines.push(l),
    describeTask: async (arn: string) => {
      expect(arn).toBe(TASK_ARN);
      return task;
    },
  });

  it('completes the bulk load when the full load and its cached changes are applied, once for duplicate events', async () => {
    const { callbacks, calls } = recordingCallbacks();
    const event = fixture('dms-task-stopped-full-load-finished.json');
    expect(await handleDmsTaskStateChange(event, deps(callbacks))).toEqual({
      action: 'succeeded',
      migrationId: 'shop',
      taskArn: TASK_ARN,
      summary: 'DMS full load finished (STOPPED_AFTER_CACHED_EVENTS)',
    });
    expect(calls).toEqual([
      [
        'succeed',
        'token-1',
        {
          summary: 'DMS full load finished (STOPPED_AFTER_CACHED_EVENTS)',
          taskArn: TASK_ARN,
          stopReason: 'STOPPED_AFTER_CACHED_EVENTS',
        },
      ],
    ]);
    // EventBridge delivers at least once: the duplicate finds no token.
    expect(await handleDmsTaskStateChange(event, deps(callbacks))).toMatchObject({
      action: 'ignored',
      migrationId: 'shop',
    });
    // A failure event arriving late (out of order) changes nothing either.
    expect(await handleDmsTaskStateChange(fixture('dms-task-failed.json'), deps(callbacks))).toMatchObject({
      action: 'ignored',
    });
    expect(calls).toHaveLength(1);
    expect(lines).toHaveLength(2);
    expect(lines[0]).toContain('no step of migration shop waits on task');
  });

  it('fails the bulk load on a failed task, with the reason', async () => {
    task = {
      status: 'failed',
      lastFailureMessage: 'Last Error  ODBC general error. Stop Reason RECOVERABLE_ERROR Error Level RECOVERABLE',
    };
    const { callbacks, calls } = recordingCallbacks();
    expect(await handleDmsTaskStateChange(fixture('dms-task-failed.json'), deps(callbacks))).toMatchObject({
      action: 'failed',
    });
    expect(calls).toEqual([
      [
        'fail',
        'token-1',
        'DmsTaskFailed',
        'DMS task failed: Last Error  ODBC general error. Stop Reason RECOVERABLE_ERROR Error Level RECOVERABLE',
      ],
    ]);
  });

  it('fails the bulk load when the task is stopped before its full load finished', async () => {
    task = { status: 'stopped', stopReason: 'NORMAL' };
    const { callbacks, calls } = recordingCallbacks();
    await handleDmsTaskStateChange(fixture('dms-task-stopped-by-user.json'), deps(callbacks));
    expect(calls).toEqual([
      [
        'fail',
        'token-1',
        'DmsTaskStopped',
        'DMS task stopped before its full load finished (NORMAL): Stop Reason NORMAL',
      ],
    ]);
  });

  it('ignores a start, and the tasks that are not pgferry’s, with a log line', async () => {
    const { callbacks, calls } = recordingCallbacks();
    expect(await handleDmsTaskStateChange(fixture('dms-task-started.json'), deps(callbacks))).toMatchObject({
      action: 'ignored',
    });
    const other = {
      ...fixture('dms-task-stopped-full-load-finished.json'),
      resources: ['arn:aws:dms:eu-west-1:123456789012:task:OTHER'],
    };
    expect(await handleDmsTaskStateChange(other, deps(callbacks))).toMatchObject({ action: 'ignored' });
    expect(calls).toEqual([]);
    expect(store.tokens.get('shop#awaitDmsFullLoad')).toBe('token-1');
    expect(lines).toEqual([
      'DMS event 0d6b1f52-4a0e-4c47-9a3d-6f3b1d2c7e10 ignored: REPLICATION_TASK_STARTED does not end a step',
      `DMS event 6f1d9a3e-2b7c-4e58-8d0a-1c9e4b7f2a61 ignored: task arn:aws:dms:eu-west-1:123456789012:task:OTHER is not one of pgferry's`,
    ]);
  });

  it('fails nothing on a failure event delivered late, once the migration was resumed and the task runs again under a new token', async () => {
    // Run 1 failed and its token was failed; the migration was resumed (the task runs again, token-2
    // waits); then EventBridge redelivers run 1's failure event.
    await store.takeTaskToken('shop', 'awaitDmsFullLoad');
    await store.putTaskToken('shop', 'awaitDmsFullLoad', 'token-2');
    task = { status: 'running' };
    const { callbacks, calls } = recordingCallbacks();
    expect(await handleDmsTaskStateChange(fixture('dms-task-failed.json'), deps(callbacks))).toMatchObject({
      action: 'ignored',
      migrationId: 'shop',
    });
    // (Read from the event alone, it failed token-2: the new run, whose task was running.)
    expect(calls).toEqual([]);
    expect(store.tokens.get('shop#awaitDmsFullLoad')).toBe('token-2');
    expect(lines[0]).toMatch(/the event says the task failed, but the task is running now: nothing ends yet/);
  });

  it('fails the invocation, taking nothing, when the task still says stopping: the retried event completes the step', async () => {
    const { callbacks, calls } = recordingCallbacks();
    const event = fixture('dms-task-stopped-full-load-finished.json');
    task = { status: 'stopping' };
    // (Read as "nothing ends yet", the event was dropped and the step waited out its timeout.)
    await expect(handleDmsTaskStateChange(event, deps(callbacks))).rejects.toThrow(
      /still says stopping: the event is retried/,
    );
    expect(store.tokens.get('shop#awaitDmsFullLoad')).toBe('token-1');
    task = { status: 'stopped', stopReason: 'STOPPED_AFTER_CACHED_EVENTS' };
    expect(await handleDmsTaskStateChange(event, deps(callbacks))).toMatchObject({ action: 'succeeded' });
    expect(calls).toHaveLength(1);
  });

  it('puts the token back when the callback could not be delivered, so the retried event completes it', async () => {
    const event = fixture('dms-task-stopped-full-load-finished.json');
    await expect(handleDmsTaskStateChange(event, deps(recordingCallbacks(true).callbacks))).rejects.toThrow(
      'Step Functions unreachable',
    );
    expect(store.tokens.get('shop#awaitDmsFullLoad')).toBe('token-1');
    const { callbacks, calls } = recordingCallbacks();
    await handleDmsTaskStateChange(event, deps(callbacks));
    expect(calls).toHaveLength(1);
  });

  it('reads the event id under either name the documentation gives it', () => {
    expect(classifyDmsTaskEvent({ eventName: 'DMS-EVENT-0078', detailMessage: 'x' })).toEqual({
      kind: 'failed',
      message: 'x',
    });
    expect(
      classifyDmsTaskEvent({ eventId: 'DMS-EVENT-0079', detailMessage: 'Stop Reason FULL_LOAD_ONLY_FINISHED' }),
    ).toEqual({
      kind: 'full-load-finished',
      stopReason: 'FULL_LOAD_ONLY_FINISHED',
    });
  });
});

describe('dmsDrained', () => {
  const freezeAt = '2026-11-02T13:57:20Z';
  it('is true only for a 0 over a whole minute begun after the freeze', () => {
    expect(dmsDrained({ targetSeconds: 0, at: '2026-11-02T13:59:00.000Z' }, freezeAt)).toBe(true);
    // That minute began before the freeze: it may not have seen the last writes.
    expect(dmsDrained({ targetSeconds: 0, at: '2026-11-02T13:58:00.000Z' }, freezeAt)).toBe(false);
    expect(dmsDrained({ targetSeconds: 2, at: '2026-11-02T13:59:00.000Z' }, freezeAt)).toBe(false);
    expect(dmsDrained({}, freezeAt)).toBe(false);
  });
});

describe('dmsCdcLatency', () => {
  const cw = mockClient(CloudWatchClient);
  afterEach(() => cw.reset());
  const ids = { replicationInstanceIdentifier: 'pgferry-shop', taskArn: TASK_ARN };
  const now = new Date('2026-11-02T14:00:00Z');

  it("finds the instance identifier the metrics are named by from the plan's instance ARN", async () => {
    const dms = mockClient(DatabaseMigrationServiceClient);
    dms
      .on(DescribeReplicationInstancesCommand)
      .resolves({ ReplicationInstances: [{ ReplicationInstanceIdentifier: 'pgferry-shop' }] });
    const arn = 'arn:aws:dms:eu-west-1:123456789012:rep:ABCDEFGHIJKLMNOP';
    expect(await dmsInstanceIdentifier(new DatabaseMigrationServiceClient({}), arn)).toBe('pgferry-shop');
    expect(dms.commandCalls(DescribeReplicationInstancesCommand)[0]!.args[0].input).toEqual({
      Filters: [{ Name: 'replication-instance-arn', Values: [arn] }],
    });
  });

  it("reads the task's CDCLatencyTarget and CDCLatencySource, newest minute first", async () => {
    cw.on(GetMetricDataCommand).resolves({
      MetricDataResults: [
        {
          Id: 'target',
          Values: [3, 7],
          Timestamps: [new Date('2026-11-02T13:58:00Z'), new Date('2026-11-02T13:57:00Z')],
        },
        { Id: 'source', Values: [1], Timestamps: [new Date('2026-11-02T13:58:00Z')] },
      ],
    });
    expect(await dmsCdcLatency(new CloudWatchClient({}), ids, { now })).toEqual({
      targetSeconds: 3,
      sourceSeconds: 1,
      at: '2026-11-02T13:59:00.000Z',
    });
    const dims = [
      { Name: 'ReplicationInstanceIdentifier', Value: 'pgferry-shop' },
      { Name: 'ReplicationTaskIdentifier', Value: 'QXAJ6QWKZ5TPBHX7SOPGLY4F2Y' },
    ];
    expect(cw.commandCalls(GetMetricDataCommand)[0]!.args[0].input).toEqual({
      StartTime: new Date('2026-11-02T13:50:00Z'),
      EndTime: now,
      ScanBy: 'TimestampDescending',
      MetricDataQueries: [
        {
          Id: 'target',
          MetricStat: {
            Metric: { Namespace: 'AWS/DMS', MetricName: 'CDCLatencyTarget', Dimensions: dims },
            Period: 60,
            Stat: 'Maximum',
          },
          ReturnData: true,
        },
        {
          Id: 'source',
          MetricStat: {
            Metric: { Namespace: 'AWS/DMS', MetricName: 'CDCLatencySource', Dimensions: dims },
            Period: 60,
            Stat: 'Maximum',
          },
          ReturnData: true,
        },
      ],
    });
  });

  it('says nothing rather than 0 when there is no datapoint', async () => {
    cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [{ Id: 'target', Values: [], Timestamps: [] }] });
    expect(await dmsCdcLatency(new CloudWatchClient({}), ids, { now })).toEqual({});
  });
});

/** The port with recorded callbacks, polling without waiting, its clock at 14:10. */
function portUnderTest() {
  const store = new MemoryMigrationStore();
  const recorded = recordingCallbacks();
  const port = new AwsDmsReplication(
    new DatabaseMigrationServiceClient({}),
    new CloudWatchClient({}),
    store,
    recorded.callbacks,
    { pollMs: 1, sleep: async () => {}, now: () => new Date('2026-11-02T14:10:00Z') },
  );
  return { store, calls: recorded.calls, port };
}

/** awaitFullLoad keeps the token while DMS still loads, and completes it itself once DMS says the full load finished. */
async function expectFullLoadLook(
  { store, calls, port }: ReturnType<typeof portUnderTest>,
  ref: Parameters<AwsDmsReplication['awaitFullLoad']>[1],
  loading: () => void,
  finished: () => void,
) {
  loading();
  await port.awaitFullLoad('shop', ref, 'token-9');
  expect(store.tokens.get('shop#awaitDmsFullLoad')).toBe('token-9');
  expect(calls).toEqual([]);
  finished();
  await port.awaitFullLoad('shop', ref, 'token-10');
  expect(calls).toEqual([
    [
      'succeed',
      'token-10',
      {
        summary: 'DMS full load finished (STOPPED_AFTER_CACHED_EVENTS)',
        taskArn: ref.arn,
        stopReason: 'STOPPED_AFTER_CACHED_EVENTS',
      },
    ],
  ]);
  expect(store.tokens.has('shop#awaitDmsFullLoad')).toBe(false);
}

describe('AwsDmsReplication (the DmsReplication port in AWS)', () => {
  const dms = mockClient(DatabaseMigrationServiceClient);
  const cw = mockClient(CloudWatchClient);
  const ref = {
    arn: TASK_ARN,
    kind: 'instance' as const,
    replicationInstanceArn: plan.compute.kind === 'instance' ? plan.compute.replicationInstanceArn : '',
  };
  let t: ReturnType<typeof portUnderTest>;
  let port: AwsDmsReplication;
  let store: MemoryMigrationStore;
  beforeEach(async () => {
    dms.reset();
    cw.reset();
    t = portUnderTest();
    ({ port, store } = t);
  });
  /** DescribeReplicationTasks answers with these statuses in turn (the last one repeated). */
  const statuses = (...list: (string | undefined)[]) => {
    let i = 0;
    dms.on(DescribeReplicationTasksCommand).callsFake(() => {
      const s = list[Math.min(i++, list.length - 1)];
      if (s === undefined) throw new ResourceNotFoundFault({ message: 'No Tasks found', $metadata: {} });
      return { ReplicationTasks: [{ ReplicationTaskArn: TASK_ARN, Status: s }] };
    });
  };

  it('creates the endpoints and the task, waits until it is ready, starts it (start-replication) and correlates it', async () => {
    dms.on(DescribeEndpointsCommand).rejects(new ResourceNotFoundFault({ message: 'none', $metadata: {} }));
    dms.on(CreateEndpointCommand).callsFake((i) => ({ Endpoint: { EndpointArn: `arn:endpoint:${i.EndpointType}` } }));
    dms.on(CreateReplicationTaskCommand).resolves({ ReplicationTask: { ReplicationTaskArn: TASK_ARN } });
    statuses(undefined, 'creating', 'ready', 'ready');
    dms.on(StartReplicationTaskCommand).resolves({});
    expect(await port.start(plan, mappings)).toEqual({ ...ref, started: true });
    expect(dms.commandCalls(CreateEndpointCommand)).toHaveLength(2);
    expect(dms.commandCalls(CreateReplicationTaskCommand)[0]!.args[0].input).toMatchObject({
      ReplicationTaskIdentifier: dmsNames('shop').task,
      SourceEndpointArn: 'arn:endpoint:source',
      TargetEndpointArn: 'arn:endpoint:target',
      MigrationType: 'full-load-and-cdc',
    });
    expect(dms.commandCalls(StartReplicationTaskCommand).map((c) => c.args[0].input)).toEqual([
      { ReplicationTaskArn: TASK_ARN, StartReplicationTaskType: 'start-replication' },
    ]);
    expect(await store.findCorrelation(`DMS#${TASK_ARN}`)).toBe('shop');
  });

  it('resumes (never reloads) a task a retried start finds stopped part way', async () => {
    dms.on(DescribeEndpointsCommand).resolves({ Endpoints: [{ EndpointArn: 'arn:endpoint:x' }] });
    statuses('stopped');
    dms.on(StartReplicationTaskCommand).resolves({});
    await port.start(plan, mappings);
    expect(dms.commandCalls(CreateReplicationTaskCommand)).toHaveLength(0);
    expect(dms.commandCalls(StartReplicationTaskCommand)[0]!.args[0].input).toEqual({
      ReplicationTaskArn: TASK_ARN,
      StartReplicationTaskType: 'resume-processing',
    });
  });

  it('keeps the full-load token, and completes it itself when the task already stopped after its full load', async () => {
    await expectFullLoadLook(
      t,
      ref,
      () => statuses('running'),
      () =>
        dms.on(DescribeReplicationTasksCommand).resolves({
          ReplicationTasks: [
            { ReplicationTaskArn: TASK_ARN, Status: 'stopped', StopReason: 'Stop Reason STOPPED_AFTER_CACHED_EVENTS' },
          ],
        }),
    );
  });

  it('is drained only by a 0 over a whole minute that began after the freeze (CloudWatch GetMetricData)', async () => {
    dms
      .on(DescribeReplicationInstancesCommand)
      .resolves({ ReplicationInstances: [{ ReplicationInstanceIdentifier: 'pgferry-shop' }] });
    cw.on(GetMetricDataCommand).resolves({
      MetricDataResults: [{ Id: 'target', Values: [0], Timestamps: [new Date('2026-11-02T14:08:00Z')] }],
    });
    expect(await port.drained(ref, '2026-11-02T14:07:30Z')).toBe(true);
    expect(await port.drained(ref, '2026-11-02T14:08:30Z')).toBe(false);
    const input = cw.commandCalls(GetMetricDataCommand)[0]!.args[0].input;
    expect(input.EndTime).toEqual(new Date('2026-11-02T14:10:00Z'));
    expect(input.MetricDataQueries?.[0]?.MetricStat?.Metric?.MetricName).toBe('CDCLatencyTarget');
    // The instance identifier is looked up once.
    expect(dms.commandCalls(DescribeReplicationInstancesCommand)).toHaveLength(1);
    cw.reset();
    cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [{ Id: 'target', Values: [], Timestamps: [] }] });
    expect(await port.cdcLatency(ref)).toEqual({});
  });

  it('stops a running task (StopReplicationTask) and leaves a stopped one alone', async () => {
    statuses('running');
    dms.on(StopReplicationTaskCommand).resolves({});
    await port.stop(ref);
    statuses('stopped');
    await port.stop(ref);
    expect(dms.commandCalls(StopReplicationTaskCommand).map((c) => c.args[0].input)).toEqual([
      { ReplicationTaskArn: TASK_ARN },
    ]);
  });

  it('cleans up: stops the task, waits until it stopped, deletes it, waits until it is gone, then deletes both endpoints', async () => {
    const names = dmsNames('shop');
    // By name (found), by ARN for the stop (running), stopping, stopped, deleting, gone.
    statuses('running', 'running', 'stopping', 'stopped', 'deleting', undefined);
    dms.on(StopReplicationTaskCommand).resolves({});
    dms.on(DeleteReplicationTaskCommand).resolves({});
    dms
      .on(DescribeEndpointsCommand)
      .callsFake((i) => ({ Endpoints: [{ EndpointArn: `arn:endpoint:${i.Filters[0].Values[0]}` }] }));
    dms.on(DeleteEndpointCommand).resolves({});
    expect(await port.cleanup(plan, ref)).toEqual([names.task, names.sourceEndpoint, names.targetEndpoint]);
    const order = dms.calls().map((c) => (c.args[0] as { constructor: { name: string } }).constructor.name);
    const acting = order.filter((n) => !n.startsWith('Describe'));
    expect(acting).toEqual([
      'StopReplicationTaskCommand',
      'DeleteReplicationTaskCommand',
      'DeleteEndpointCommand',
      'DeleteEndpointCommand',
    ]);
    // The endpoints go only after the task is gone (looked for again after its deletion).
    expect(order.lastIndexOf('DescribeReplicationTasksCommand')).toBeGreaterThan(
      order.indexOf('DeleteReplicationTaskCommand'),
    );
    expect(order.lastIndexOf('DescribeReplicationTasksCommand')).toBeLessThan(order.indexOf('DeleteEndpointCommand'));
    expect(dms.commandCalls(DeleteReplicationTaskCommand)[0]!.args[0].input).toEqual({ ReplicationTaskArn: TASK_ARN });
    expect(dms.commandCalls(DeleteEndpointCommand).map((c) => c.args[0].input)).toEqual([
      { EndpointArn: `arn:endpoint:${names.sourceEndpoint}` },
      { EndpointArn: `arn:endpoint:${names.targetEndpoint}` },
    ]);
  });

  it('cleans up nothing when nothing was created, and says so', async () => {
    statuses(undefined);
    dms.on(DescribeEndpointsCommand).rejects(new ResourceNotFoundFault({ message: 'none', $metadata: {} }));
    expect(await port.cleanup(plan)).toEqual([]);
    expect(
      dms
        .calls()
        .filter((c) => !(c.args[0] as { constructor: { name: string } }).constructor.name.startsWith('Describe')),
    ).toHaveLength(0);
  });
});

const CONFIG_ARN = 'arn:aws:dms:eu-west-1:123456789012:replication-config:K7QZ2M4XWN5RBT3HDYFJ6VCEPA';
const serverlessPlan: DmsPlan = {
  ...plan,
  compute: { kind: 'serverless', maxCapacityUnits: 16, replicationSubnetGroupId: 'pgferry-subnets' },
};

describe('AwsDmsReplication on DMS Serverless', () => {
  const dms = mockClient(DatabaseMigrationServiceClient);
  const cw = mockClient(CloudWatchClient);
  const ref = {
    arn: CONFIG_ARN,
    kind: 'serverless' as const,
    replicationConfigIdentifier: dmsNames('shop').replicationConfig,
  };
  let t: ReturnType<typeof portUnderTest>;
  let port: AwsDmsReplication;
  let store: MemoryMigrationStore;
  beforeEach(async () => {
    dms.reset();
    cw.reset();
    t = portUnderTest();
    ({ port, store } = t);
  });
  /** DescribeReplications answers with these replications in turn (the last one repeated); undefined: none. */
  const replications = (
    ...list: ({ Status: string; StopReason?: string; FailureMessages?: string[] } | undefined)[]
  ) => {
    let i = 0;
    dms.on(DescribeReplicationsCommand).callsFake(() => {
      const r = list[Math.min(i++, list.length - 1)];
      if (r === undefined) throw new ResourceNotFoundFault({ message: 'No replications found', $metadata: {} });
      return { Replications: [{ ReplicationConfigArn: CONFIG_ARN, ...r }] };
    });
  };
  const acting = () =>
    dms
      .calls()
      .map((c) => (c.args[0] as { constructor: { name: string } }).constructor.name)
      .filter((n) => !n.startsWith('Describe'));

  it('creates the config, starts it once (start-replication) and correlates it; a retried start leaves a running one alone and resumes a stopped one', async () => {
    dms.on(DescribeEndpointsCommand).resolves({ Endpoints: [{ EndpointArn: 'arn:endpoint:x' }] });
    dms.on(DescribeReplicationConfigsCommand).rejects(new ResourceNotFoundFault({ message: 'none', $metadata: {} }));
    dms.on(CreateReplicationConfigCommand).resolves({ ReplicationConfig: { ReplicationConfigArn: CONFIG_ARN } });
    dms.on(StartReplicationCommand).resolves({});
    replications(undefined);
    expect(await port.start(serverlessPlan, mappings)).toEqual({ ...ref, started: true });
    expect(dms.commandCalls(DescribeReplicationsCommand)[0]!.args[0].input).toEqual({
      Filters: [{ Name: 'replication-config-arn', Values: [CONFIG_ARN] }],
    });
    expect(dms.commandCalls(StartReplicationCommand).map((c) => c.args[0].input)).toEqual([
      { ReplicationConfigArn: CONFIG_ARN, StartReplicationType: 'start-replication' },
    ]);
    expect(await store.findCorrelation(`DMS#${CONFIG_ARN}`)).toBe('shop');

    dms.on(DescribeReplicationConfigsCommand).resolves({ ReplicationConfigs: [{ ReplicationConfigArn: CONFIG_ARN }] });
    replications({ Status: 'provisioning_capacity' });
    expect(await port.start(serverlessPlan, mappings)).toEqual({ ...ref, started: false });
    replications({ Status: 'failed', FailureMessages: ['lost the source'] });
    expect(await port.start(serverlessPlan, mappings)).toEqual({ ...ref, started: true });
    expect(dms.commandCalls(CreateReplicationConfigCommand)).toHaveLength(1);
    expect(dms.commandCalls(StartReplicationCommand).map((c) => c.args[0].input.StartReplicationType)).toEqual([
      'start-replication',
      'resume-processing',
    ]);
  });

  it('keeps the full-load token, and completes it itself when DescribeReplications says the full load finished', async () => {
    await expectFullLoadLook(
      t,
      ref,
      () => replications({ Status: 'running' }),
      () => replications({ Status: 'stopped', StopReason: 'Stop Reason STOPPED_AFTER_CACHED_EVENTS' }),
    );
  });

  it('resumes only a stopped replication and stops only a running one (StartReplication / StopReplication)', async () => {
    dms.on(StartReplicationCommand).resolves({});
    dms.on(StopReplicationCommand).resolves({});
    replications({ Status: 'running' });
    await port.resume(ref);
    await port.stop(ref);
    replications({ Status: 'stopped', StopReason: 'Stop Reason NORMAL' });
    await port.stop(ref);
    await port.resume(ref);
    expect(acting()).toEqual(['StopReplicationCommand', 'StartReplicationCommand']);
    // A cutover undone right after its stop: the replication is still stopping, and is resumed once stopped.
    replications(
      { Status: 'stopping' },
      { Status: 'stopping' },
      { Status: 'stopped', StopReason: 'Stop Reason NORMAL' },
    );
    await port.resume(ref);
    expect(acting()).toEqual(['StopReplicationCommand', 'StartReplicationCommand', 'StartReplicationCommand']);
    expect(dms.commandCalls(StopReplicationCommand)[0]!.args[0].input).toEqual({ ReplicationConfigArn: CONFIG_ARN });
    expect(dms.commandCalls(StartReplicationCommand)[0]!.args[0].input).toEqual({
      ReplicationConfigArn: CONFIG_ARN,
      StartReplicationType: 'resume-processing',
    });
  });

  it('reads CDC latency from the AWS/DMS series ListMetrics files under this replication, never from another, and no series is no figure', async () => {
    const mine = [{ Name: 'ReplicationConfigIdentifier', Value: 'K7QZ2M4XWN5RBT3HDYFJ6VCEPA' }];
    // Nothing published yet: no figure, and nothing asked of GetMetricData.
    cw.on(ListMetricsCommand).resolves({ Metrics: [] });
    expect(await port.cdcLatency(ref)).toEqual({});
    expect(cw.commandCalls(GetMetricDataCommand)).toHaveLength(0);
    expect(cw.commandCalls(ListMetricsCommand)[0]!.args[0].input).toEqual({
      Namespace: 'AWS/DMS',
      MetricName: 'CDCLatencyTarget',
    });
    cw.reset();
    cw.on(ListMetricsCommand)
      .resolvesOnce({
        Metrics: [
          // A replication instance's task, and another replication: not this one's.
          {
            Namespace: 'AWS/DMS',
            MetricName: 'CDCLatencyTarget',
            Dimensions: [
              { Name: 'ReplicationInstanceIdentifier', Value: 'pgferry-shop' },
              { Name: 'ReplicationTaskIdentifier', Value: 'QXAJ6QWKZ5TPBHX7SOPGLY4F2Y' },
            ],
          },
          {
            Namespace: 'AWS/DMS',
            MetricName: 'CDCLatencyTarget',
            Dimensions: [{ Name: 'ReplicationConfigIdentifier', Value: 'OTHERCONFIG' }],
          },
        ],
        NextToken: 'page-2',
      })
      .resolves({ Metrics: [{ Namespace: 'AWS/DMS', MetricName: 'CDCLatencyTarget', Dimensions: mine }] });
    cw.on(GetMetricDataCommand).resolves({
      MetricDataResults: [
        {
          Id: 'target0',
          Values: [0, 4],
          Timestamps: [new Date('2026-11-02T14:08:00Z'), new Date('2026-11-02T14:07:00Z')],
        },
        { Id: 'source0', Values: [0], Timestamps: [new Date('2026-11-02T14:08:00Z')] },
      ],
    });
    expect(await port.cdcLatency(ref)).toEqual({ targetSeconds: 0, sourceSeconds: 0, at: '2026-11-02T14:09:00.000Z' });
    expect(cw.commandCalls(ListMetricsCommand)[1]!.args[0].input).toEqual({
      Namespace: 'AWS/DMS',
      MetricName: 'CDCLatencyTarget',
      NextToken: 'page-2',
    });
    expect(cw.commandCalls(GetMetricDataCommand)[0]!.args[0].input).toEqual({
      StartTime: new Date('2026-11-02T14:00:00Z'),
      EndTime: new Date('2026-11-02T14:10:00Z'),
      ScanBy: 'TimestampDescending',
      MetricDataQueries: ['CDCLatencyTarget', 'CDCLatencySource'].map((metric) => ({
        Id: metric === 'CDCLatencyTarget' ? 'target0' : 'source0',
        MetricStat: {
          Metric: { Namespace: 'AWS/DMS', MetricName: metric, Dimensions: mine },
          Period: 60,
          Stat: 'Maximum',
        },
        ReturnData: true,
      })),
    });
    // Drained only by a 0 over a whole minute begun after the freeze; the series is not looked for again.
    expect(await port.drained(ref, '2026-11-02T14:07:30Z')).toBe(true);
    expect(await port.drained(ref, '2026-11-02T14:08:30Z')).toBe(false);
    expect(cw.commandCalls(ListMetricsCommand)).toHaveLength(2);
    cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [{ Id: 'target0', Values: [], Timestamps: [] }] });
    expect(await port.cdcLatency(ref)).toEqual({});
  });

  it('cleans up: stops a running replication, waits until it stopped, deletes the config, waits until it is gone, then deletes both endpoints', async () => {
    const names = dmsNames('shop');
    let configs = 0;
    // Found by name; after its deletion, found once more (deleting), then gone.
    dms.on(DescribeReplicationConfigsCommand).callsFake(() => {
      configs++;
      if (configs <= 2) return { ReplicationConfigs: [{ ReplicationConfigArn: CONFIG_ARN }] };
      throw new ResourceNotFoundFault({ message: 'none', $metadata: {} });
    });
    replications(
      { Status: 'running' },
      { Status: 'stopping' },
      { Status: 'stopped', StopReason: 'Stop Reason NORMAL' },
    );
    dms.on(StopReplicationCommand).resolves({});
    dms.on(DeleteReplicationConfigCommand).resolves({});
    dms
      .on(DescribeEndpointsCommand)
      .callsFake((i) => ({ Endpoints: [{ EndpointArn: `arn:endpoint:${i.Filters[0].Values[0]}` }] }));
    dms.on(DeleteEndpointCommand).resolves({});
    expect(await port.cleanup(serverlessPlan, ref)).toEqual([
      names.replicationConfig,
      names.sourceEndpoint,
      names.targetEndpoint,
    ]);
    expect(acting()).toEqual([
      'StopReplicationCommand',
      'DeleteReplicationConfigCommand',
      'DeleteEndpointCommand',
      'DeleteEndpointCommand',
    ]);
    const order = dms.calls().map((c) => (c.args[0] as { constructor: { name: string } }).constructor.name);
    // Deleted only once stopped (running, stopping, stopped read before), the endpoints only once the config is gone.
    const beforeDelete = order.slice(0, order.indexOf('DeleteReplicationConfigCommand'));
    expect(beforeDelete.filter((n) => n === 'DescribeReplicationsCommand')).toHaveLength(3);
    expect(order.lastIndexOf('DescribeReplicationConfigsCommand')).toBeLessThan(order.indexOf('DeleteEndpointCommand'));
    expect(configs).toBe(3);
    expect(dms.commandCalls(DeleteReplicationConfigCommand)[0]!.args[0].input).toEqual({
      ReplicationConfigArn: CONFIG_ARN,
    });
    expect(dms.commandCalls(DescribeReplicationConfigsCommand)[0]!.args[0].input).toEqual({
      Filters: [{ Name: 'replication-config-id', Values: [names.replicationConfig] }],
    });
  });
});

describe('handleDmsReplicationStateChange (DMS Serverless)', () => {
  const event = () =>
    fixture('dms-replication-state-change-envelope-only.json') as unknown as DmsReplicationStateChangeEvent;
  let store: MemoryMigrationStore;
  let lines: string[];
  let described: string[];
  let replication: Parameters<typeof classifyDmsReplication>[0];
  beforeEach(async () => {
    store = new MemoryMigrationStore();
    lines = [];
    described = [];
    await store.correlate(`DMS#${CONFIG_ARN}`, 'shop');
    await store.putTaskToken('shop', 'awaitDmsFullLoad', 'token-1');
  });
  const deps = (callbacks: TaskCallbacks) => ({
    store,
    callbacks,
    log: (l: string) => lines.push(l),
    describeReplication: async (arn: string) => {
      described.push(arn);
      return replication;
    },
  });

  it('takes the event as a prompt: DescribeReplications decides, the token is completed once; duplicate, late and out-of-order events are ignored', async () => {
    const { callbacks, calls } = recordingCallbacks();
    replication = { status: 'running' };
    expect(await handleDmsReplicationStateChange(event(), deps(callbacks))).toMatchObject({
      action: 'ignored',
      migrationId: 'shop',
    });
    expect(store.tokens.get('shop#awaitDmsFullLoad')).toBe('token-1');
    replication = { status: 'stopped', stopReason: 'Stop Reason STOPPED_AFTER_CACHED_EVENTS' };
    expect(await handleDmsReplicationStateChange(event(), deps(callbacks))).toEqual({
      action: 'succeeded',
      migrationId: 'shop',
      taskArn: CONFIG_ARN,
      summary: 'DMS full load finished (STOPPED_AFTER_CACHED_EVENTS)',
    });
    // The same event again, and an older one read after the replication resumed: nothing more.
    expect(await handleDmsReplicationStateChange(event(), deps(callbacks))).toMatchObject({ action: 'ignored' });
    replication = { status: 'running' };
    expect(await handleDmsReplicationStateChange(event(), deps(callbacks))).toMatchObject({ action: 'ignored' });
    expect(calls.map((c) => c[0])).toEqual(['succeed']);
    expect(described).toEqual([CONFIG_ARN, CONFIG_ARN, CONFIG_ARN, CONFIG_ARN]);
    expect(lines.join('\n')).toContain('a duplicate or late event');
  });

  it('fails the bulk load on a failed replication with its failure messages, and on a stop before the full load finished', async () => {
    const { callbacks, calls } = recordingCallbacks();
    replication = { status: 'FAILED', failureMessages: ['Test connection failed for endpoint source.'] };
    expect(await handleDmsReplicationStateChange(event(), deps(callbacks))).toMatchObject({ action: 'failed' });
    await store.putTaskToken('shop', 'awaitDmsFullLoad', 'token-2');
    replication = { status: 'stopped', stopReason: 'Stop Reason NORMAL' };
    expect(await handleDmsReplicationStateChange(event(), deps(callbacks))).toMatchObject({ action: 'failed' });
    expect(calls).toEqual([
      [
        'fail',
        'token-1',
        'DmsTaskFailed',
        'DMS Serverless replication failed: Test connection failed for endpoint source.',
      ],
      [
        'fail',
        'token-2',
        'DmsTaskStopped',
        'DMS Serverless replication stopped before its full load finished (NORMAL): the DMS Serverless replication stopped',
      ],
    ]);
  });

  it("ignores, without reading DMS, an event that names no config of pgferry's, and one of another detail-type", async () => {
    const { callbacks, calls } = recordingCallbacks();
    replication = { status: 'stopped', stopReason: 'Stop Reason STOPPED_AFTER_CACHED_EVENTS' };
    const other = { ...event(), resources: ['arn:aws:dms:eu-west-1:123456789012:replication-config:OTHER'] };
    expect(await handleDmsReplicationStateChange(other, deps(callbacks))).toMatchObject({ action: 'ignored' });
    const none = { ...event(), resources: [] };
    expect(await handleDmsReplicationStateChange(none, deps(callbacks))).toMatchObject({ action: 'ignored' });
    const task = { ...event(), 'detail-type': 'DMS Replication Task State Change' };
    expect(await handleDmsReplicationStateChange(task, deps(callbacks))).toMatchObject({ action: 'ignored' });
    expect(described).toEqual([]);
    expect(calls).toEqual([]);
    expect(lines).toHaveLength(3);
  });

  it('puts the token back when the callback could not be delivered, so the retried event completes it', async () => {
    replication = { status: 'stopped', stopReason: 'Stop Reason STOPPED_AFTER_CACHED_EVENTS' };
    await expect(handleDmsReplicationStateChange(event(), deps(recordingCallbacks(true).callbacks))).rejects.toThrow(
      'Step Functions unreachable',
    );
    expect(store.tokens.get('shop#awaitDmsFullLoad')).toBe('token-1');
  });
});

describe('classifyDmsReplication', () => {
  it('reads only Status, StopReason and FailureMessages, in either case the documentation writes the states', () => {
    expect(classifyDmsReplication(undefined)).toMatchObject({ kind: 'ignored' });
    expect(classifyDmsReplication({ status: 'STOPPED', stopReason: 'Stop Reason FULL_LOAD_ONLY_FINISHED' })).toEqual({
      kind: 'full-load-finished',
      stopReason: 'FULL_LOAD_ONLY_FINISHED',
    });
    expect(classifyDmsReplication({ status: 'stopped', stopReason: 'STOPPED_AFTER_CACHED_EVENTS' })).toMatchObject({
      kind: 'full-load-finished',
    });
    expect(classifyDmsReplication({ status: 'stopped', stopReason: 'Stop Reason RECOVERABLE_ERROR' })).toMatchObject({
      kind: 'stopped',
      stopReason: 'RECOVERABLE_ERROR',
    });
    expect(classifyDmsReplication({ status: 'failed' })).toEqual({
      kind: 'failed',
      message: 'the DMS Serverless replication failed',
    });
    for (const status of ['initializing', 'Provisioning Capacity', 'running', 'stopping'])
      expect(classifyDmsReplication({ status })).toMatchObject({ kind: 'ignored' });
  });
});
