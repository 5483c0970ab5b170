import {
  CreateDBInstanceCommand,
  CreateDBParameterGroupCommand,
  DBInstanceAlreadyExistsFault,
  DBInstanceNotFoundFault,
  DBParameterGroupAlreadyExistsFault,
  DescribeDBInstancesCommand,
  DescribeDBParameterGroupsCommand,
  DescribeDBParametersCommand,
  ModifyDBParameterGroupCommand,
  RDSClient,
} from '@aws-sdk/client-rds';
import { SendTaskSuccessCommand, SFNClient } from '@aws-sdk/client-sfn';
import { mockClient } from 'aws-sdk-client-mock';
import { beforeEach, describe, expect, it } from 'vitest';
import {
  type ProvisionTargetInput,
  type RdsTargetPlanInput,
  RdsTargetProvisioner,
  RdsTargetUnusableError,
  rdsName,
  rdsTargetFromPlan,
  SfnTaskCallbacks,
  targetSecretRef,
} from '../packages/aws/src/index';
import { InvalidInputError, parseMigrationConfig } from '../packages/core/src/index';
import { TEST_CLIENT_CONFIG } from './harness/aws-clients';
import { MemoryMigrationStore } from './harness/memory-store';
import { availableInstance, groupParameters, rdsInstance } from './harness/rds';

const rdsClient = new RDSClient(TEST_CLIENT_CONFIG);
const rds = mockClient(rdsClient);
const sfnClient = new SFNClient(TEST_CLIENT_CONFIG);
const sfn = mockClient(sfnClient);
const meta = { $metadata: {} };
const notFound = () => new DBInstanceNotFoundFault({ message: 'DBInstance pgferry-shop not found.', ...meta });

let store: MemoryMigrationStore;
let logged: string[];
let provisioner: RdsTargetProvisioner;

beforeEach(() => {
  rds.reset();
  sfn.reset();
  sfn.on(SendTaskSuccessCommand).resolves({});
  store = new MemoryMigrationStore();
  logged = [];
  provisioner = new RdsTargetProvisioner(rdsClient, store, new SfnTaskCallbacks(sfnClient), (m) => logged.push(m));
});

const CREATE_TARGET = {
  mode: 'create',
  engineVersion: '17.4',
  instanceClass: 'db.r7g.large',
  allocatedStorageGiB: 200,
  dbSubnetGroupName: 'pgferry-private',
  vpcSecurityGroupIds: ['sg-0123abcd'],
  dbName: 'shop',
} as const satisfies RdsTargetPlanInput;

const CREATE: ProvisionTargetInput = {
  migrationId: 'shop',
  taskToken: 'token-1',
  sourceMajor: 15,
  jobs: 6,
  target: CREATE_TARGET,
};

/** The CreateDBInstance request of CREATE_TARGET, exactly. */
const CREATE_REQUEST = {
  DBInstanceIdentifier: 'pgferry-shop',
  Engine: 'postgres',
  EngineVersion: '17.4',
  DBInstanceClass: 'db.r7g.large',
  AllocatedStorage: 200,
  StorageType: 'gp3',
  StorageEncrypted: true,
  MultiAZ: true,
  MasterUsername: 'pgferry_admin',
  ManageMasterUserPassword: true,
  DBParameterGroupName: 'pgferry-shop',
  DBSubnetGroupName: 'pgferry-private',
  VpcSecurityGroupIds: ['sg-0123abcd'],
  PubliclyAccessible: false,
  DBName: 'shop',
  BackupRetentionPeriod: 7,
  DeletionProtection: true,
  CopyTagsToSnapshot: true,
  Tags: [{ Key: 'pgferry:migration-id', Value: 'shop' }],
};

const LOGICAL_ON = groupParameters({
  'rds.logical_replication': '1',
  max_replication_slots: '10',
  max_wal_senders: '10',
});

describe('Provision target: a new RDS instance', () => {
  it('creates a parameter group with logical replication and an encrypted Multi-AZ instance with a managed password, and waits', async () => {
    rds.on(DescribeDBInstancesCommand).rejects(notFound());
    rds.on(CreateDBParameterGroupCommand).resolves({});
    rds.on(ModifyDBParameterGroupCommand).resolves({ DBParameterGroupName: 'pgferry-shop' });
    rds.on(CreateDBInstanceCommand).resolves({ DBInstance: rdsInstance({ migrationId: 'shop' }) });

    const out = await provisioner.provision(CREATE);

    expect(rds.commandCalls(CreateDBParameterGroupCommand).map((c) => c.args[0].input)).toEqual([
      {
        DBParameterGroupName: 'pgferry-shop',
        DBParameterGroupFamily: 'postgres17',
        Description: 'pgferry migration shop: logical replication for the target',
        Tags: [{ Key: 'pgferry:migration-id', Value: 'shop' }],
      },
    ]);
    const reboot = 'pending-reboot';
    expect(rds.commandCalls(ModifyDBParameterGroupCommand).map((c) => c.args[0].input)).toEqual([
      {
        DBParameterGroupName: 'pgferry-shop',
        Parameters: [
          { ParameterName: 'rds.logical_replication', ParameterValue: '1', ApplyMethod: reboot },
          { ParameterName: 'max_replication_slots', ParameterValue: '10', ApplyMethod: reboot },
          { ParameterName: 'max_wal_senders', ParameterValue: '10', ApplyMethod: reboot },
          // One apply worker more than the load's jobs, and room for the other background workers.
          { ParameterName: 'max_logical_replication_workers', ParameterValue: '7', ApplyMethod: reboot },
          { ParameterName: 'max_worker_processes', ParameterValue: '15', ApplyMethod: reboot },
        ],
      },
    ]);
    expect(rds.commandCalls(CreateDBInstanceCommand).map((c) => c.args[0].input)).toEqual([CREATE_REQUEST]);
    // The step waits: its token and the correlation item an RDS event finds it by are stored.
    expect(out).toMatchObject({ instance: 'pgferry-shop', created: true, waiting: true, status: 'creating' });
    expect(out.summary).toBe('RDS instance pgferry-shop is creating; waiting for it to be available');
    expect(store.correlations.get('RDS#pgferry-shop')).toBe('shop');
    expect(store.tokens.get('shop#provisionTarget')).toBe('token-1');
    expect(sfn.calls()).toHaveLength(0);
  });

  it("creates the plan's Single-AZ instance with the plan's own parameter group, checked and left as it is", async () => {
    rds.on(DescribeDBInstancesCommand).rejects(notFound());
    rds.on(DescribeDBParameterGroupsCommand).resolves({
      DBParameterGroups: [{ DBParameterGroupName: 'shop-pg17', DBParameterGroupFamily: 'postgres17' }],
    });
    rds.on(DescribeDBParametersCommand).resolves({ Parameters: LOGICAL_ON });
    rds.on(CreateDBInstanceCommand).resolves({ DBInstance: rdsInstance({ migrationId: 'shop' }) });
    // As the plan's target reaches the provisioner (rdsTargetFromPlan, from the migration's config).
    const target = rdsTargetFromPlan(
      parseMigrationConfig({
        id: 'shop',
        sourceUrl: 'postgres://u:p@old-db/shop',
        targetUrl: 'postgres://u:p@new-db/shop',
        target: {
          kind: 'new',
          instanceClass: 'db.r7g.large',
          engineVersion: '17.4',
          allocatedStorageGiB: 200,
          dbSubnetGroupName: 'pgferry-private',
          vpcSecurityGroupIds: ['sg-0123abcd'],
          multiAz: false,
          parameterGroupName: 'shop-pg17',
          dbName: 'shop',
        },
      }).target,
    )!;
    await provisioner.provision({ ...CREATE, target });
    expect(rds.commandCalls(CreateDBInstanceCommand).map((c) => c.args[0].input)).toEqual([
      { ...CREATE_REQUEST, MultiAZ: false, DBParameterGroupName: 'shop-pg17' },
    ]);
    // The user's group may serve other instances: read, never created or changed.
    expect(rds.commandCalls(CreateDBParameterGroupCommand)).toHaveLength(0);
    expect(rds.commandCalls(ModifyDBParameterGroupCommand)).toHaveLength(0);
    expect(rds.commandCalls(DescribeDBParametersCommand)[0]!.args[0].input).toMatchObject({
      DBParameterGroupName: 'shop-pg17',
    });
  });

  it("refuses the plan's parameter group when it is missing, of another family, or has logical replication off", async () => {
    rds.on(DescribeDBInstancesCommand).rejects(notFound());
    const withGroup = { ...CREATE, target: { ...CREATE_TARGET, parameterGroupName: 'shop-pg' } };
    rds.on(DescribeDBParameterGroupsCommand).resolves({ DBParameterGroups: [] });
    await expect(provisioner.provision(withGroup)).rejects.toMatchObject({
      field: 'target.parameterGroupName',
      message: 'target.parameterGroupName: no DB parameter group named shop-pg here',
    });
    rds.on(DescribeDBParameterGroupsCommand).resolves({
      DBParameterGroups: [{ DBParameterGroupName: 'shop-pg', DBParameterGroupFamily: 'postgres16' }],
    });
    await expect(provisioner.provision(withGroup)).rejects.toMatchObject({
      field: 'target.parameterGroupName',
      message:
        'target.parameterGroupName: parameter group shop-pg is of family postgres16, not postgres17 (target.engineVersion)',
    });
    rds.on(DescribeDBParameterGroupsCommand).resolves({
      DBParameterGroups: [{ DBParameterGroupName: 'shop-pg', DBParameterGroupFamily: 'postgres17' }],
    });
    rds.on(DescribeDBParametersCommand).resolves({ Parameters: groupParameters({ 'rds.logical_replication': '0' }) });
    await expect(provisioner.provision(withGroup)).rejects.toMatchObject({
      field: 'target.parameterGroupName',
      message:
        'target.parameterGroupName: parameter group shop-pg has logical replication off (rds.logical_replication = 0)',
    });
    expect(rds.commandCalls(CreateDBInstanceCommand)).toHaveLength(0);
    expect(store.tokens.size).toBe(0);
  });

  it('adopts, on a retry, the instance and parameter group an earlier attempt created, and waits with the new token', async () => {
    rds
      .on(DescribeDBInstancesCommand)
      .resolves({ DBInstances: [rdsInstance({ migrationId: 'shop', DBInstanceStatus: 'backing-up' })] });
    rds.on(DescribeDBParametersCommand).resolves({ Parameters: LOGICAL_ON });
    const out = await provisioner.provision({ ...CREATE, taskToken: 'token-2' });
    expect(out).toMatchObject({ instance: 'pgferry-shop', created: true, waiting: true, status: 'backing-up' });
    expect(rds.commandCalls(CreateDBInstanceCommand)).toHaveLength(0);
    expect(rds.commandCalls(DescribeDBParametersCommand).map((c) => c.args[0].input)).toEqual([
      { DBParameterGroupName: 'pgferry-shop' },
    ]);
    expect(store.tokens.get('shop#provisionTarget')).toBe('token-2');
    expect(logged).toEqual([expect.stringMatching(/exists with this migration's tag: adopting it/)]);
  });

  it('sets the parameters again when the parameter group exists already, and adopts an instance created meanwhile', async () => {
    rds
      .on(DescribeDBInstancesCommand)
      .rejectsOnce(notFound())
      .resolves({ DBInstances: [rdsInstance({ migrationId: 'shop' })] });
    rds
      .on(CreateDBParameterGroupCommand)
      .rejects(new DBParameterGroupAlreadyExistsFault({ message: 'exists', ...meta }));
    rds.on(ModifyDBParameterGroupCommand).resolves({});
    rds.on(CreateDBInstanceCommand).rejects(new DBInstanceAlreadyExistsFault({ message: 'exists', ...meta }));
    rds.on(DescribeDBParametersCommand).resolves({ Parameters: LOGICAL_ON });
    const out = await provisioner.provision(CREATE);
    expect(rds.commandCalls(ModifyDBParameterGroupCommand)).toHaveLength(1);
    expect(out).toMatchObject({ instance: 'pgferry-shop', waiting: true });
  });

  it('asks for provisioned IOPS on io1 / io2 storage', async () => {
    rds.on(DescribeDBInstancesCommand).rejects(notFound());
    rds.on(CreateDBParameterGroupCommand).resolves({}).on(ModifyDBParameterGroupCommand).resolves({});
    rds.on(CreateDBInstanceCommand).resolves({ DBInstance: rdsInstance({ migrationId: 'shop' }) });
    await provisioner.provision({ ...CREATE, target: { ...CREATE_TARGET, storageType: 'io2', iops: 12000 } });
    expect(rds.commandCalls(CreateDBInstanceCommand)[0]!.args[0].input).toMatchObject({
      StorageType: 'io2',
      Iops: 12000,
    });
  });

  it("refuses an instance with its name that is not this migration's, and leaves no token behind", async () => {
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [rdsInstance({ migrationId: 'other' })] });
    const err = await provisioner.provision(CREATE).catch((e) => e);
    expect(err).toBeInstanceOf(RdsTargetUnusableError);
    expect(err.message).toBe(
      "an RDS instance named pgferry-shop exists and is not this migration's (tag pgferry:migration-id = other)",
    );
    expect(err.field).toBe('target.instanceIdentifier');
    // Nothing of ours points at it: the other migration's events still find their own migration.
    expect(store.tokens.size).toBe(0);
    expect(store.correlations.size).toBe(0);
    expect(rds.commandCalls(CreateDBInstanceCommand)).toHaveLength(0);
  });

  it('completes the token at once when the instance it finds is available already', async () => {
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [availableInstance({ migrationId: 'shop' })] });
    rds.on(DescribeDBParametersCommand).resolves({ Parameters: LOGICAL_ON });
    const out = await provisioner.provision(CREATE);
    expect(out).toMatchObject({ waiting: false, status: 'available' });
    expect(sfn.commandCalls(SendTaskSuccessCommand).map((c) => c.args[0].input)).toEqual([
      { taskToken: 'token-1', output: JSON.stringify(out) },
    ]);
    expect(store.tokens.size).toBe(0);
  });

  it("points the target's credentials at the master secret RDS manages, on the endpoint it reports", async () => {
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [availableInstance({ migrationId: 'shop' })] });
    rds.on(DescribeDBParametersCommand).resolves({ Parameters: LOGICAL_ON });
    const out = await provisioner.provision(CREATE);
    expect(targetSecretRef(out, 'shop')).toEqual({
      secretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-0a1b2c3d-AbCdEf',
      host: 'pgferry-shop.c1a2b3c4d5e6.eu-west-1.rds.amazonaws.com',
      port: 5432,
      dbname: 'shop',
    });
    const unmanaged = { ...out, masterUserSecretArn: undefined };
    expect(() => targetSecretRef(unmanaged, 'shop')).toThrow(/has no master secret managed by RDS/);
  });

  it('refuses bad plans naming the field, before creating anything', async () => {
    const bad = (target: Record<string, unknown>) =>
      provisioner.provision({ ...CREATE, target: { ...CREATE.target, ...target } as ProvisionTargetInput['target'] });
    const noSg = await bad({ vpcSecurityGroupIds: [] }).catch((e) => e);
    expect(noSg).toBeInstanceOf(InvalidInputError);
    expect(noSg.field).toBe('target.vpcSecurityGroupIds');
    expect(noSg.message).toMatch(/needs at least one security group/);
    const small = await bad({ allocatedStorageGiB: 5 }).catch((e) => e);
    expect(small.message).toMatch(/allocatedStorageGiB must be at least 20/);
    const noIops = await bad({ storageType: 'io2' }).catch((e) => e);
    expect(noIops.field).toBe('target.iops');
    expect(noIops.message).toMatch(/io1 and io2 need iops/);
    const mode = await provisioner.provision({ ...CREATE, target: { mode: 'clone' } as never }).catch((e) => e);
    expect(mode.message).toMatch(/target.mode must be "create".*or "adopt"/);
    rds.on(DescribeDBInstancesCommand).rejects(notFound());
    const older = await bad({ engineVersion: '14.9' }).catch((e) => e);
    expect(older.field).toBe('target.engineVersion');
    expect(older.message).toBe('target.engineVersion 14.9 is older than the source (PostgreSQL 15)');
    expect(rds.commandCalls(CreateDBInstanceCommand)).toHaveLength(0);
    expect(rds.commandCalls(CreateDBParameterGroupCommand)).toHaveLength(0);
  });

  it('runs as the workflow task: token from the input, source version and jobs from the state', async () => {
    await store.create(
      {
        id: 'shop',
        version: 1,
        createdAt: '2026-11-02T10:00:00.000Z',
        updatedAt: '2026-11-02T10:00:00.000Z',
        status: 'running',
        phase: 'assess',
        sourceVersion: 16,
        config: parseMigrationConfig({
          id: 'shop',
          sourceUrl: 'postgres://a@old/shop',
          targetUrl: 'postgres://a@new/shop',
          jobs: 2,
        }),
        phases: {},
        events: [],
      },
      { sourceUrl: 'postgres://a@old/shop', targetUrl: 'postgres://a@new/shop' },
    );
    rds.on(DescribeDBInstancesCommand).rejects(notFound());
    const older = await provisioner
      .run({ migrationId: 'shop', taskToken: 'token-3', target: { ...CREATE.target, engineVersion: '15.8' } })
      .catch((e) => e);
    expect(older.message).toBe('target.engineVersion 15.8 is older than the source (PostgreSQL 16)');
    rds.on(CreateDBParameterGroupCommand).resolves({}).on(ModifyDBParameterGroupCommand).resolves({});
    rds.on(CreateDBInstanceCommand).resolves({ DBInstance: rdsInstance({ migrationId: 'shop' }) });
    expect(await provisioner.run({ migrationId: 'shop', taskToken: 'token-3', target: CREATE.target })).toMatchObject({
      waiting: true,
    });
    const workers = rds.commandCalls(ModifyDBParameterGroupCommand)[0]!.args[0].input.Parameters!;
    expect(workers.find((p) => p.ParameterName === 'max_logical_replication_workers')?.ParameterValue).toBe('4');
    expect(store.tokens.get('shop#provisionTarget')).toBe('token-3');
    const noToken = await provisioner.run({ migrationId: 'shop', target: CREATE.target }).catch((e) => e);
    expect(noToken.message).toMatch(/no task token: its state must call it with .waitForTaskToken/);
    const noPlan = await provisioner.run({ migrationId: 'shop', taskToken: 't' }).catch((e) => e);
    expect(noPlan.field).toBe('target');
  });

  it('names instances after the migration id, as RDS allows (no underscores)', () => {
    expect(rdsName('shop')).toBe('pgferry-shop');
    expect(rdsName('m2611021014_ab1c')).toBe('pgferry-m2611021014-ab1c');
    expect(rdsName('a__b_')).toBe('pgferry-a-b');
  });
});

describe('Provision target: adopting an instance named in the plan', () => {
  const ADOPT: ProvisionTargetInput = {
    migrationId: 'shop',
    taskToken: 'token-a',
    target: { mode: 'adopt', instanceIdentifier: 'orders-prod' },
  };

  it('checks engine and logical replication, then completes at once when it is available', async () => {
    rds.on(DescribeDBInstancesCommand, { DBInstanceIdentifier: 'orders-prod' }).resolves({
      DBInstances: [
        availableInstance({
          DBInstanceIdentifier: 'orders-prod',
          DBParameterGroups: [{ DBParameterGroupName: 'orders-pg17', ParameterApplyStatus: 'in-sync' }],
        }),
      ],
    });
    // Parameters come in pages: the one that matters is on the second.
    rds
      .on(DescribeDBParametersCommand)
      .resolvesOnce({ Parameters: groupParameters({ max_wal_senders: '20' }), Marker: 'm1' })
      .resolves({ Parameters: groupParameters({ 'rds.logical_replication': '1', max_replication_slots: '20' }) });
    const out = await provisioner.provision(ADOPT);
    expect(out).toMatchObject({
      instance: 'orders-prod',
      created: false,
      waiting: false,
      parameterGroup: 'orders-pg17',
    });
    expect(rds.commandCalls(DescribeDBParametersCommand).map((c) => c.args[0].input)).toEqual([
      { DBParameterGroupName: 'orders-pg17' },
      { DBParameterGroupName: 'orders-pg17', Marker: 'm1' },
    ]);
    expect(store.correlations.get('RDS#orders-prod')).toBe('shop');
    expect(sfn.commandCalls(SendTaskSuccessCommand)[0]!.args[0].input.taskToken).toBe('token-a');
    expect(rds.commandCalls(CreateDBInstanceCommand)).toHaveLength(0);
    expect(rds.commandCalls(ModifyDBParameterGroupCommand)).toHaveLength(0);
  });

  it('says what to change when logical replication is off, waiting for a reboot, or the engine is not postgres', async () => {
    const adoptWith = async (instance: ReturnType<typeof availableInstance>, params = groupParameters({})) => {
      rds.reset();
      rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [instance] });
      rds.on(DescribeDBParametersCommand).resolves({ Parameters: params });
      const err = await provisioner.provision(ADOPT).catch((e) => e);
      expect(err).toBeInstanceOf(RdsTargetUnusableError);
      expect(err.field).toBe('target.instanceIdentifier');
      expect(store.tokens.size).toBe(0);
      expect(store.correlations.size).toBe(0);
      expect(sfn.calls()).toHaveLength(0);
      return err;
    };
    const base = { DBInstanceIdentifier: 'orders-prod' };
    const defaultGroup = await adoptWith(
      availableInstance({
        ...base,
        DBParameterGroups: [{ DBParameterGroupName: 'default.postgres17', ParameterApplyStatus: 'in-sync' }],
      }),
      groupParameters({ 'rds.logical_replication': '0' }),
    );
    expect(defaultGroup.message).toBe(
      'RDS instance orders-prod has logical replication off (rds.logical_replication = 0)',
    );
    expect(defaultGroup.hint).toMatch(
      /default.postgres17, a default group, which cannot be changed: create a DB parameter group with rds.logical_replication = 1, attach it to orders-prod and reboot/,
    );
    const ownGroup = await adoptWith(
      availableInstance({
        ...base,
        DBParameterGroups: [{ DBParameterGroupName: 'orders', ParameterApplyStatus: 'in-sync' }],
      }),
    );
    expect(ownGroup.hint).toBe('set rds.logical_replication = 1 in parameter group orders and reboot orders-prod');
    const pending = await adoptWith(
      availableInstance({
        ...base,
        DBParameterGroups: [{ DBParameterGroupName: 'orders', ParameterApplyStatus: 'pending-reboot' }],
      }),
    );
    expect(pending.hint).toMatch(/reboot orders-prod so that rds.logical_replication takes effect/);
    const mysql = await adoptWith(availableInstance({ ...base, Engine: 'mysql' }));
    expect(mysql.message).toBe('RDS instance orders-prod runs mysql, not postgres');
    const fewSlots = await adoptWith(
      availableInstance(base),
      groupParameters({ 'rds.logical_replication': '1', max_replication_slots: '1' }),
    );
    expect(fewSlots.hint).toMatch(/set max_replication_slots to at least 10/);
  });

  it('refuses an instance older than the source', async () => {
    rds.on(DescribeDBInstancesCommand).resolves({
      DBInstances: [availableInstance({ DBInstanceIdentifier: 'orders-prod', EngineVersion: '14.12' })],
    });
    const err = await provisioner.provision({ ...ADOPT, sourceMajor: 15 }).catch((e) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect(err.message).toBe('RDS instance orders-prod (PostgreSQL 14.12) is older than the source (PostgreSQL 15)');
    expect(rds.commandCalls(DescribeDBParametersCommand)).toHaveLength(0);
  });

  it('refuses a name with no instance, naming the field', async () => {
    rds.on(DescribeDBInstancesCommand).rejects(notFound());
    const err = await provisioner.provision(ADOPT).catch((e) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect(err.field).toBe('target.instanceIdentifier');
    expect(err.message).toBe('target.instanceIdentifier: no RDS instance named orders-prod here');
  });
});
