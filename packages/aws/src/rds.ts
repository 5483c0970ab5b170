/**
 * The RDS target: `Provision target` creates (or adopts) the instance the migration loads into, and
 * the handler of `RDS DB Instance Event` completes the step's task token once the instance is
 * available, or fails it when the instance cannot become so.
 *
 * RDS emits events "on a best effort basis ... they might be out of sequence or missing" (RDS User
 * Guide, Monitoring Amazon RDS events). So an event is only a trigger: what decides is the
 * instance's status read when it arrives (DescribeDBInstances), and the token, taken atomically from
 * the store, is completed at most once.
 */
import {
  CreateDBInstanceCommand,
  CreateDBParameterGroupCommand,
  type DBInstance,
  DescribeDBInstancesCommand,
  DescribeDBParameterGroupsCommand,
  DescribeDBParametersCommand,
  ModifyDBParameterGroupCommand,
  type Parameter,
  type RDSClient,
} from '@aws-sdk/client-rds';
import {
  InvalidInputError,
  type MigrationConfig,
  type MigrationStore,
  PgferryError,
  type PlanTarget,
  secretRefUrl,
  type TaskCallbacks,
  type TaskInput,
  type TaskOutput,
  updateMigration,
  type WORKFLOW_TASKS,
} from '@pgferry/core';
import { z } from 'zod';
import { deliverTakenToken } from './callbacks';
import type { DatabaseSecretRef } from './secrets';

/** The workflow step whose token the RDS events complete. */
export const PROVISION_STEP = 'provisionTarget' satisfies keyof typeof WORKFLOW_TASKS;

/** The tag naming the migration an instance or parameter group belongs to. */
export const MIGRATION_TAG = 'pgferry:migration-id';

/**
 * What the target needs for pgferry's replication: as the subscriber it keeps one replication origin
 * per subscription (bounded by max_replication_slots), and after the cutover it is the publisher of
 * the reverse replication (a slot and a WAL sender). Room is left for retries and a second attempt.
 */
export const TARGET_REPLICATION_SETTINGS = {
  maxReplicationSlots: 10,
  maxWalSenders: 10,
  /** Apply workers, at least this many and one more than the load's parallel jobs. */
  minLogicalReplicationWorkers: 4,
  /** Background workers over the logical replication workers (parallel query, autovacuum launcher...). */
  extraWorkerProcesses: 8,
} as const;

/** Identifiers of RDS instances and parameter groups: a letter, then letters, digits, single hyphens. */
const RDS_NAME = /^[a-zA-Z](?:-?[a-zA-Z0-9])*$/;

/** `pgferry-<id>`, the migration id's underscores as hyphens (RDS names allow no underscore). */
export function rdsName(migrationId: string): string {
  return `pgferry-${migrationId.replace(/_+/g, '-').replace(/-+$/, '')}`;
}

const instanceIdentifier = z
  .string()
  .max(63, 'an RDS instance identifier is at most 63 characters')
  .regex(RDS_NAME, 'an RDS instance identifier is letters, digits and single hyphens, starting with a letter');

export const rdsTargetPlanSchema = z.discriminatedUnion(
  'mode',
  [
    z
      .object({
        mode: z.literal('create'),
        /** Default: pgferry-<migration id>. */
        instanceIdentifier: instanceIdentifier.optional(),
        engineVersion: z.string().regex(/^\d{2}(\.\d+)?$/, 'engineVersion is a PostgreSQL version such as "17.4"'),
        instanceClass: z
          .string()
          .regex(/^db\.[a-z0-9-]+\.[a-z0-9]+$/, 'instanceClass is an RDS class such as "db.r7g.large"'),
        allocatedStorageGiB: z.number().int().min(20, 'allocatedStorageGiB must be at least 20').max(65536),
        storageType: z.enum(['gp3', 'gp2', 'io1', 'io2']).default('gp3'),
        /** Provisioned IOPS: required by io1 / io2, optional for gp3 (RDS's baseline otherwise). */
        iops: z.number().int().min(1000, 'iops must be at least 1000').optional(),
        dbSubnetGroupName: z
          .string()
          .min(1, 'dbSubnetGroupName names the DB subnet group of the VPC to create the instance in'),
        vpcSecurityGroupIds: z
          .array(z.string().regex(/^sg-[0-9a-f]+$/, 'a security group id is sg-<hex>'))
          .min(1, 'vpcSecurityGroupIds needs at least one security group'),
        /** The KMS key for storage encryption; RDS's default key (aws/rds) when not given. */
        kmsKeyId: z.string().min(1).optional(),
        masterUsername: z
          .string()
          .regex(/^[A-Za-z][A-Za-z0-9_]{0,62}$/, 'masterUsername is a letter, then letters, digits or _')
          .default('pgferry_admin'),
        /** The database created with the instance (the one the migration loads into). */
        dbName: z
          .string()
          .regex(/^[A-Za-z][A-Za-z0-9_]{0,62}$/, 'dbName is a letter, then letters, digits or _')
          .optional(),
        backupRetentionDays: z.number().int().min(1).max(35).default(7),
        deletionProtection: z.boolean().default(true),
        /** A standby in another Availability Zone (the plan's target.multiAz). */
        multiAz: z.boolean().default(true),
        /**
         * The plan's own DB parameter group (target.parameterGroupName), used as it is: it must be of
         * the engine's family and have logical replication on. Without it pgferry creates one.
         */
        parameterGroupName: z
          .string()
          .max(255)
          .regex(RDS_NAME, 'parameterGroupName is letters, digits and single hyphens, starting with a letter')
          .optional(),
      })
      .strict()
      .refine((p) => p.iops !== undefined || (p.storageType !== 'io1' && p.storageType !== 'io2'), {
        path: ['iops'],
        message: 'storageType io1 and io2 need iops (provisioned IOPS)',
      }),
    z.object({ mode: z.literal('adopt'), instanceIdentifier }).strict(),
  ],
  { error: 'target.mode must be "create" (a new instance) or "adopt" (an existing one, named by instanceIdentifier)' },
);
export type RdsTargetPlan = z.output<typeof rdsTargetPlanSchema>;
export type RdsTargetPlanInput = z.input<typeof rdsTargetPlanSchema>;

export function parseRdsTargetPlan(input: unknown): RdsTargetPlan {
  const result = rdsTargetPlanSchema.safeParse(input);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const field = ['target', ...issue.path].join('.');
  throw new InvalidInputError(`${field}: ${result.error.issues.map((i) => i.message).join('; ')}`, { field });
}

/** A target older than the source cannot take its dump or its replication: refused before anything is made. */
function checkNotOlder(what: string, targetMajor: number, sourceMajor: number | undefined, field: string) {
  if (sourceMajor === undefined || !(targetMajor < sourceMajor)) return;
  throw new InvalidInputError(`${what} is older than the source (PostgreSQL ${sourceMajor})`, {
    field,
    hint: `choose PostgreSQL ${sourceMajor} or later for the target`,
  });
}

/** The target instance cannot be used as it is: what to change is in the message and the hint. */
export class RdsTargetUnusableError extends PgferryError {
  override name = 'RdsTargetUnusableError';
}

/** The instance failed to become available (a failure event, or a status it will not leave by itself). */
export class RdsTargetFailedError extends PgferryError {
  override name = 'RdsTargetFailedError';
}

export type Log = (message: string) => void;

/** The store methods the RDS adapter needs (optional in MigrationStore, required here). */
type CallbackStore = Required<Pick<MigrationStore, 'correlate' | 'findCorrelation' | 'putTaskToken' | 'takeTaskToken'>>;

function callbackStore(store: MigrationStore): CallbackStore {
  const { correlate, findCorrelation, putTaskToken, takeTaskToken } = store;
  if (!correlate || !findCorrelation || !putTaskToken || !takeTaskToken)
    throw new PgferryError(
      'this migration store keeps no correlation items or task tokens, which the RDS target needs',
      {
        hint: 'use the DynamoDB store (or a store implementing correlate, findCorrelation, putTaskToken, takeTaskToken)',
      },
    );
  return {
    correlate: correlate.bind(store),
    findCorrelation: findCorrelation.bind(store),
    putTaskToken: putTaskToken.bind(store),
    takeTaskToken: takeTaskToken.bind(store),
  };
}

type TargetRef = NonNullable<NonNullable<MigrationConfig['secrets']>['target']>;

/** A plan's target (core's PlanTarget, kept in the migration's config) as the provisioner takes it. */
export function rdsTargetFromPlan(target: PlanTarget | undefined): RdsTargetPlanInput | undefined {
  if (!target) return undefined;
  if (target.kind === 'existing') return { mode: 'adopt', instanceIdentifier: target.instanceIdentifier };
  return {
    mode: 'create',
    engineVersion: target.engineVersion,
    instanceClass: target.instanceClass,
    allocatedStorageGiB: target.allocatedStorageGiB,
    storageType: target.storageType,
    dbSubnetGroupName: target.dbSubnetGroupName,
    vpcSecurityGroupIds: target.vpcSecurityGroupIds,
    multiAz: target.multiAz,
    ...(target.parameterGroupName ? { parameterGroupName: target.parameterGroupName } : {}),
    ...(target.dbName ? { dbName: target.dbName } : {}),
  };
}

/**
 * The available instance's endpoint (and, for an instance pgferry created, its RDS-managed master
 * secret) into the migration's `secrets.target`, so that the tasks after "Provision target" connect to
 * it. Only for a migration started from a plan (its config names the target); idempotent.
 */
export async function recordTargetEndpoint(store: MigrationStore, migrationId: string, instance: DBInstance) {
  // Gone: nothing connects for it any more, and its token (if any) completes harmlessly.
  await updateMigration(
    store,
    migrationId,
    (state) => {
      const target = state.config.target;
      const endpoint = instance.Endpoint?.Address;
      if (!target || !state.config.secrets || !endpoint) return false;
      const before = state.config.secrets.target;
      const secretArn = target.kind === 'existing' ? target.secretArn : instance.MasterUserSecret?.SecretArn;
      if (!secretArn)
        throw new RdsTargetUnusableError(
          `RDS instance ${instance.DBInstanceIdentifier} has no master secret managed by RDS`,
          {
            field: 'secrets.target.secretArn',
            migrationId,
            hint: 'create the instance with ManageMasterUserPassword, or name it as an existing target with its secret in the plan',
          },
        );
      const ref: TargetRef = {
        ...(before ?? {}),
        sslmode: before?.sslmode ?? 'verify-full',
        secretArn,
        host: endpoint,
        ...(instance.Endpoint?.Port ? { port: instance.Endpoint.Port } : {}),
        ...(target.kind === 'new' ? { dbname: target.dbName ?? 'postgres' } : {}),
      };
      if (JSON.stringify(ref) === JSON.stringify(before)) return false;
      state.config = {
        ...state.config,
        secrets: { ...state.config.secrets, target: ref },
        targetUrl: secretRefUrl(ref),
      };
      state.events = [
        ...state.events,
        { at: new Date().toISOString(), message: `target ${instance.DBInstanceIdentifier} available at ${endpoint}` },
      ];
    },
    { attempts: 3, ifGone: 'skip' },
  );
}

/** The correlation key through which an RDS event finds its migration. */
export function rdsCorrelationKey(instance: string): string {
  return `RDS#${instance}`;
}

export interface ProvisionTargetInput {
  migrationId: string;
  taskToken: string;
  target: RdsTargetPlanInput;
  /** The source's major version (from the assessment): the target may not be older. */
  sourceMajor?: number;
  /** The load's parallel jobs: the target gets an apply worker more than that. */
  jobs?: number;
}

export interface RdsTargetOutput extends TaskOutput {
  instance: string;
  status: string;
  /** True when the instance was created by this step (or a retry of it), false when adopted. */
  created: boolean;
  /** The step waits for an RDS event; false when the instance was available already and the token is complete. */
  waiting: boolean;
  parameterGroup?: string;
  endpoint?: string;
  port?: number;
  engineVersion?: string;
  /** The RDS-managed master secret's ARN (an ARN, not a secret): the target's credentials at run time. */
  masterUserSecretArn?: string;
}

/**
 * Where the target's credentials are, from Provision target's output: the master secret RDS manages
 * (it holds username and password only), the instance's endpoint, and the database to load into.
 */
export function targetSecretRef(output: RdsTargetOutput, dbname: string): DatabaseSecretRef {
  if (!output.masterUserSecretArn || !output.endpoint)
    throw new InvalidInputError(
      `RDS instance ${output.instance} has ${output.endpoint ? 'no master secret managed by RDS' : 'no endpoint yet'}`,
      {
        field: 'secrets.target.secretArn',
        hint: 'give the ARN of a secret holding the target credentials as secrets.target.secretArn',
      },
    );
  return {
    secretArn: output.masterUserSecretArn,
    host: output.endpoint,
    ...(output.port ? { port: output.port } : {}),
    dbname,
  };
}

const FAILED_STATUSES: Record<string, string> = {
  failed: 'the instance failed (an incompatible configuration or a storage issue)',
  'incompatible-parameters':
    'a parameter of its parameter group is incompatible with the instance (memory settings too high for the class?)',
  'incompatible-network': 'its subnets or network are invalid (check the DB subnet group)',
  'incompatible-option-group': 'its option group is incompatible',
  'incompatible-restore': 'it could not be restored',
  'storage-full': 'its storage is full',
  'inaccessible-encryption-credentials': 'its KMS key cannot be used (disabled or no grant)',
  'inaccessible-encryption-credentials-recoverable': 'its KMS key cannot be used (disabled or no grant)',
  deleting: 'it is being deleted',
  stopping: 'it is being stopped',
  stopped: 'it is stopped',
};

function isFault(err: unknown, name: string): boolean {
  return err instanceof Error && err.name === name;
}

/** The instance named `instanceId`, or undefined when there is none. */
async function describeInstance(rds: RDSClient, instanceId: string): Promise<DBInstance | undefined> {
  try {
    const out = await rds.send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: instanceId }));
    return out.DBInstances?.[0];
  } catch (err) {
    if (isFault(err, 'DBInstanceNotFoundFault')) return undefined;
    throw err;
  }
}

function tagsOf(instance: DBInstance): Record<string, string> {
  return Object.fromEntries((instance.TagList ?? []).map((t) => [t.Key ?? '', t.Value ?? '']));
}

function outputOf(instance: DBInstance, created: boolean, waiting: boolean, parameterGroup?: string): RdsTargetOutput {
  const id = instance.DBInstanceIdentifier ?? '';
  const status = instance.DBInstanceStatus ?? 'unknown';
  const endpoint = instance.Endpoint?.Address;
  const port = instance.Endpoint?.Port;
  const where = endpoint ? ` at ${endpoint}:${port ?? 5432}` : '';
  const summary =
    status === 'available'
      ? `RDS instance ${id} is available${where} (PostgreSQL ${instance.EngineVersion ?? '?'}${instance.MultiAZ ? ', Multi-AZ' : ''})`
      : `RDS instance ${id} is ${status}; waiting for it to be available`;
  return {
    summary,
    instance: id,
    status,
    created,
    waiting,
    ...(parameterGroup ? { parameterGroup } : {}),
    ...(endpoint ? { endpoint } : {}),
    ...(port ? { port } : {}),
    ...(instance.EngineVersion ? { engineVersion: instance.EngineVersion } : {}),
    ...(instance.MasterUserSecret?.SecretArn ? { masterUserSecretArn: instance.MasterUserSecret.SecretArn } : {}),
  };
}

export class RdsTargetProvisioner {
  constructor(
    private readonly rds: RDSClient,
    private readonly store: MigrationStore,
    private readonly callbacks: TaskCallbacks,
    private readonly log: Log = () => {},
  ) {}

  /**
   * `Provision target` as the workflow calls it: the token from `.waitForTaskToken`, the plan's
   * `target` from the execution input, the source's major version and the load's jobs from the state.
   */
  async run(input: TaskInput): Promise<RdsTargetOutput> {
    if (!input.taskToken)
      throw new PgferryError('Provision target has no task token: its state must call it with .waitForTaskToken', {
        migrationId: input.migrationId,
      });
    const state = await this.store.get(input.migrationId);
    // The migration's plan, recorded in its config when it was started (startFromPlan); a target in
    // the payload (a hand-started execution) wins.
    const target = input.target ?? rdsTargetFromPlan(state.config.target);
    if (target === undefined)
      throw new InvalidInputError(`target: migration ${input.migrationId} names no RDS target to create or adopt`, {
        field: 'target',
        migrationId: input.migrationId,
        hint: 'start it from a plan whose target is {kind: "new", ...} or {kind: "existing", instanceIdentifier, secretArn} (`pgferry start PLAN`)',
      });
    return this.provision({
      migrationId: input.migrationId,
      taskToken: input.taskToken,
      target: target as RdsTargetPlanInput,
      ...(state.sourceVersion ? { sourceMajor: state.sourceVersion } : {}),
      jobs: state.config.jobs,
    });
  }

  /**
   * Create or adopt the target, record the token and the correlation item, and return: the state
   * machine waits on the token. Re-run after a crash or a retry, it converges: an instance with our
   * name and our tag is adopted, a parameter group that exists is set again.
   */
  async provision(input: ProvisionTargetInput): Promise<RdsTargetOutput> {
    const plan = parseRdsTargetPlan(input.target);
    const store = callbackStore(this.store);
    const id = input.migrationId;
    const instanceId = plan.instanceIdentifier ?? rdsName(id);
    let waiting = false;
    // The token and the correlation item are stored once the instance is known to be usable (never
    // over another migration's correlation), and before it is created: an event that comes before
    // this returns finds them.
    const wait = async () => {
      await store.correlate(rdsCorrelationKey(instanceId), id);
      await store.putTaskToken(id, PROVISION_STEP, input.taskToken);
      waiting = true;
    };
    try {
      const result =
        plan.mode === 'adopt'
          ? await this.adopt(plan, instanceId, input.sourceMajor, wait)
          : await this.create(plan, instanceId, input, wait);
      return await this.completeIfSettled(id, result.instance, result.created, result.parameterGroup);
    } catch (err) {
      // The Lambda's error fails the step; no event should complete a token of a step that failed.
      if (waiting) await store.takeTaskToken(id, PROVISION_STEP).catch(() => undefined);
      throw err;
    }
  }

  private async create(
    plan: Extract<RdsTargetPlan, { mode: 'create' }>,
    instanceId: string,
    input: ProvisionTargetInput,
    wait: () => Promise<void>,
  ): Promise<{ instance: DBInstance; created: boolean; parameterGroup: string }> {
    const id = input.migrationId;
    const major = Number.parseInt(plan.engineVersion, 10);
    checkNotOlder(`target.engineVersion ${plan.engineVersion}`, major, input.sourceMajor, 'target.engineVersion');
    const parameterGroup = plan.parameterGroupName ?? rdsName(id);
    const existing = await this.describe(instanceId);
    if (existing) {
      this.checkOurs(existing, id);
      await this.checkInstance(existing, 'target.instanceIdentifier');
      await wait();
      this.log(`instance ${instanceId} exists with this migration's tag: adopting it (a retry of Provision target)`);
      return { instance: existing, created: true, parameterGroup };
    }
    // The plan's group is the user's (other instances may use it): checked, never changed.
    if (plan.parameterGroupName) await this.checkParameterGroup(plan.parameterGroupName, `postgres${major}`);
    else await this.ensureParameterGroup(parameterGroup, `postgres${major}`, id, input.jobs ?? 1);
    await wait();
    const tags = [{ Key: MIGRATION_TAG, Value: id }];
    try {
      const created = await this.rds.send(
        new CreateDBInstanceCommand({
          DBInstanceIdentifier: instanceId,
          Engine: 'postgres',
          EngineVersion: plan.engineVersion,
          DBInstanceClass: plan.instanceClass,
          AllocatedStorage: plan.allocatedStorageGiB,
          StorageType: plan.storageType,
          ...(plan.iops ? { Iops: plan.iops } : {}),
          StorageEncrypted: true,
          ...(plan.kmsKeyId ? { KmsKeyId: plan.kmsKeyId } : {}),
          MultiAZ: plan.multiAz,
          MasterUsername: plan.masterUsername,
          // RDS keeps the master password in Secrets Manager: pgferry never sees or stores it.
          ManageMasterUserPassword: true,
          DBParameterGroupName: parameterGroup,
          DBSubnetGroupName: plan.dbSubnetGroupName,
          VpcSecurityGroupIds: plan.vpcSecurityGroupIds,
          PubliclyAccessible: false,
          ...(plan.dbName ? { DBName: plan.dbName } : {}),
          BackupRetentionPeriod: plan.backupRetentionDays,
          DeletionProtection: plan.deletionProtection,
          CopyTagsToSnapshot: true,
          Tags: tags,
        }),
      );
      this.log(
        `creating RDS instance ${instanceId} (PostgreSQL ${plan.engineVersion}, ${plan.instanceClass}${plan.multiAz ? ', Multi-AZ' : ', Single-AZ'}, parameter group ${parameterGroup})`,
      );
      return { instance: created.DBInstance ?? { DBInstanceIdentifier: instanceId }, created: true, parameterGroup };
    } catch (err) {
      if (!isFault(err, 'DBInstanceAlreadyExistsFault')) throw err;
      // Created meanwhile by a concurrent attempt of this step: adopt it if it is ours. (Were it another
      // migration's, racing for the same name, our correlation item now shadows its own: its step times out.)
      const raced = await this.describe(instanceId);
      if (!raced) throw err;
      this.checkOurs(raced, id);
      await this.checkInstance(raced, 'target.instanceIdentifier');
      return { instance: raced, created: true, parameterGroup };
    }
  }

  private async adopt(
    plan: Extract<RdsTargetPlan, { mode: 'adopt' }>,
    instanceId: string,
    sourceMajor: number | undefined,
    wait: () => Promise<void>,
  ): Promise<{ instance: DBInstance; created: boolean; parameterGroup?: string }> {
    const instance = await this.describe(instanceId);
    if (!instance)
      throw new InvalidInputError(`target.instanceIdentifier: no RDS instance named ${plan.instanceIdentifier} here`, {
        field: 'target.instanceIdentifier',
        hint: 'check the name and the region, or use mode "create"',
      });
    const version = instance.EngineVersion ?? '';
    checkNotOlder(
      `RDS instance ${instanceId} (PostgreSQL ${version})`,
      Number.parseInt(version, 10),
      sourceMajor,
      'target.instanceIdentifier',
    );
    const parameterGroup = await this.checkInstance(instance, 'target.instanceIdentifier');
    await wait();
    return { instance, created: false, parameterGroup };
  }

  /** Complete the token now when the instance needs no event: available already, or failed already. */
  private async completeIfSettled(
    migrationId: string,
    instance: DBInstance,
    created: boolean,
    parameterGroup?: string,
  ): Promise<RdsTargetOutput> {
    const status = instance.DBInstanceStatus ?? 'creating';
    const failure = FAILED_STATUSES[status];
    if (failure)
      throw new RdsTargetFailedError(`RDS instance ${instance.DBInstanceIdentifier} is ${status}: ${failure}`, {
        migrationId,
        phase: 'provision-target',
      });
    if (status !== 'available') return outputOf(instance, created, true, parameterGroup);
    const output = outputOf(instance, created, false, parameterGroup);
    await recordTargetEndpoint(this.store, migrationId, instance);
    const token = await callbackStore(this.store).takeTaskToken(migrationId, PROVISION_STEP);
    // No token: an event completed it meanwhile.
    if (token) await this.callbacks.succeed(token, output);
    return output;
  }

  private describe(instanceId: string): Promise<DBInstance | undefined> {
    return describeInstance(this.rds, instanceId);
  }

  /** An instance with our name is adopted on a retry only when it carries this migration's tag. */
  private checkOurs(instance: DBInstance, migrationId: string) {
    const owner = tagsOf(instance)[MIGRATION_TAG];
    if (owner === migrationId) return;
    throw new RdsTargetUnusableError(
      `an RDS instance named ${instance.DBInstanceIdentifier} exists and is not this migration's (${
        owner ? `tag ${MIGRATION_TAG} = ${owner}` : `no ${MIGRATION_TAG} tag`
      })`,
      {
        field: 'target.instanceIdentifier',
        hint: 'name another instance in target.instanceIdentifier, or adopt this one with mode "adopt"',
      },
    );
  }

  /** The instance is PostgreSQL and its parameter group has logical replication on (and in effect). */
  private async checkInstance(instance: DBInstance, field: string): Promise<string | undefined> {
    const name = instance.DBInstanceIdentifier;
    if (instance.Engine !== 'postgres')
      throw new RdsTargetUnusableError(`RDS instance ${name} runs ${instance.Engine}, not postgres`, {
        field,
        hint: 'name an RDS for PostgreSQL instance (Aurora is not a supported target)',
      });
    const group = instance.DBParameterGroups?.[0];
    const groupName = group?.DBParameterGroupName;
    if (!groupName) throw new RdsTargetUnusableError(`RDS instance ${name} reports no DB parameter group`, { field });
    // A new instance is created with its group: nothing pending there. An adopted one must have it in effect.
    if (group.ParameterApplyStatus === 'pending-reboot')
      throw new RdsTargetUnusableError(
        `RDS instance ${name} has changes to parameter group ${groupName} waiting for a reboot`,
        { field, hint: `reboot ${name} so that rds.logical_replication takes effect, then run again` },
      );
    const values = await this.parameters(groupName, [
      'rds.logical_replication',
      'max_replication_slots',
      'max_wal_senders',
    ]);
    const howTo = groupName.startsWith('default.')
      ? `its group is ${groupName}, a default group, which cannot be changed: create a DB parameter group with rds.logical_replication = 1, attach it to ${name} and reboot`
      : `set rds.logical_replication = 1 in parameter group ${groupName} and reboot ${name}`;
    if (values.get('rds.logical_replication') !== '1')
      throw new RdsTargetUnusableError(
        `RDS instance ${name} has logical replication off (rds.logical_replication = ${values.get('rds.logical_replication') ?? '0'})`,
        {
          field,
          hint: howTo,
        },
      );
    const short = tooFewReplicationSlots(values);
    if (short)
      throw new RdsTargetUnusableError(`RDS instance ${name} has ${short.what}`, {
        field,
        hint: `set ${short.param} to at least ${short.min} in parameter group ${groupName} and reboot ${name}`,
      });
    return groupName;
  }

  private async parameters(group: string, names: string[]): Promise<Map<string, string>> {
    const found = new Map<string, string>();
    let marker: string | undefined;
    do {
      const out = await this.rds.send(
        new DescribeDBParametersCommand({ DBParameterGroupName: group, ...(marker ? { Marker: marker } : {}) }),
      );
      for (const p of out.Parameters ?? [])
        if (p.ParameterName && names.includes(p.ParameterName) && p.ParameterValue !== undefined)
          found.set(p.ParameterName, p.ParameterValue);
      marker = out.Marker;
    } while (marker && found.size < names.length);
    return found;
  }

  /**
   * The plan's own parameter group, before an instance is created with it: of the engine's family
   * (RDS refuses another), with logical replication on and room for replication both ways.
   */
  private async checkParameterGroup(name: string, family: string): Promise<void> {
    const field = 'target.parameterGroupName';
    let group: { DBParameterGroupFamily?: string } | undefined;
    try {
      group = (await this.rds.send(new DescribeDBParameterGroupsCommand({ DBParameterGroupName: name })))
        .DBParameterGroups?.[0];
    } catch (err) {
      if (!isFault(err, 'DBParameterGroupNotFoundFault')) throw err;
    }
    if (!group)
      throw new InvalidInputError(`${field}: no DB parameter group named ${name} here`, {
        field,
        hint: 'check the name and the region, or leave parameterGroupName out and pgferry creates one',
      });
    if (group.DBParameterGroupFamily !== family)
      throw new InvalidInputError(
        `${field}: parameter group ${name} is of family ${group.DBParameterGroupFamily ?? '?'}, not ${family} (target.engineVersion)`,
        { field, hint: `name a parameter group of family ${family}` },
      );
    const values = await this.parameters(name, ['rds.logical_replication', 'max_replication_slots', 'max_wal_senders']);
    if (values.get('rds.logical_replication') !== '1')
      throw new InvalidInputError(
        `${field}: parameter group ${name} has logical replication off (rds.logical_replication = ${values.get('rds.logical_replication') ?? '0'})`,
        {
          field,
          hint: `set rds.logical_replication = 1 in ${name}, or leave parameterGroupName out and pgferry creates one`,
        },
      );
    const short = tooFewReplicationSlots(values);
    if (short)
      throw new InvalidInputError(`${field}: parameter group ${name} has ${short.what}`, {
        field,
        hint: `set ${short.param} to at least ${short.min} in ${name}`,
      });
  }

  private async ensureParameterGroup(name: string, family: string, migrationId: string, jobs: number) {
    try {
      await this.rds.send(
        new CreateDBParameterGroupCommand({
          DBParameterGroupName: name,
          DBParameterGroupFamily: family,
          Description: `pgferry migration ${migrationId}: logical replication for the target`,
          Tags: [{ Key: MIGRATION_TAG, Value: migrationId }],
        }),
      );
    } catch (err) {
      // Left by an earlier attempt of this step: set its parameters again (idempotent).
      if (!isFault(err, 'DBParameterGroupAlreadyExistsFault')) throw err;
    }
    await this.rds.send(
      new ModifyDBParameterGroupCommand({ DBParameterGroupName: name, Parameters: targetParameters(jobs) }),
    );
  }
}

/** A replication setting of a parameter group under what pgferry needs (replication both ways), if any. */
function tooFewReplicationSlots(values: Map<string, string>): { param: string; min: number; what: string } | undefined {
  for (const [param, min] of [
    ['max_replication_slots', TARGET_REPLICATION_SETTINGS.maxReplicationSlots],
    ['max_wal_senders', TARGET_REPLICATION_SETTINGS.maxWalSenders],
  ] as const) {
    const v = values.get(param);
    // RDS may give a formula ({DBInstanceClassMemory...}) instead of a number: only numbers are checked.
    if (v !== undefined && /^\d+$/.test(v) && Number(v) < min)
      return { param, min, what: `${param} = ${v}, under the ${min} pgferry needs for replication both ways` };
  }
  return undefined;
}

/** The target's parameters: all static, so they apply when the instance is created with the group. */
export function targetParameters(jobs: number): Parameter[] {
  const s = TARGET_REPLICATION_SETTINGS;
  const workers = Math.max(s.minLogicalReplicationWorkers, jobs + 1);
  const set = (ParameterName: string, value: number) => ({
    ParameterName,
    ParameterValue: String(value),
    ApplyMethod: 'pending-reboot' as const,
  });
  return [
    set('rds.logical_replication', 1),
    set('max_replication_slots', s.maxReplicationSlots),
    set('max_wal_senders', s.maxWalSenders),
    set('max_logical_replication_workers', workers),
    set('max_worker_processes', workers + s.extraWorkerProcesses),
  ];
}

// ---- The handler of `RDS DB Instance Event` --------------------------------------------------------

/** The part of an EventBridge `RDS DB Instance Event` the handler reads (RDS User Guide's sample shape). */
export const rdsInstanceEventSchema = z.object({
  'detail-type': z.literal('RDS DB Instance Event'),
  source: z.literal('aws.rds'),
  id: z.string().optional(),
  time: z.string().optional(),
  detail: z.object({
    SourceIdentifier: z.string().min(1),
    SourceType: z.string().optional(),
    EventID: z.string().optional(),
    Message: z.string().optional(),
    EventCategories: z.array(z.string()).optional(),
    Date: z.string().optional(),
  }),
});
export type RdsInstanceEvent = z.infer<typeof rdsInstanceEventSchema>;

export function parseRdsInstanceEvent(event: unknown): RdsInstanceEvent {
  const result = rdsInstanceEventSchema.safeParse(event);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  throw new InvalidInputError(`not an RDS DB Instance Event: ${issue.path.join('.') || 'event'}: ${issue.message}`, {
    field: issue.path.join('.') || 'event',
    hint: 'the rule should match source aws.rds and detail-type "RDS DB Instance Event" only',
  });
}

/**
 * The events that may end the wait (RDS User Guide, "Amazon RDS event categories and event
 * messages", DB instance events). Creation: 0005 "DB instance created"; with backups on, the first
 * backup follows and ends with 0002 "Finished DB Instance backup", when the instance is available.
 * The rest are failures that leave the instance unusable. Other events (backups started,
 * maintenance, notifications) are ignored.
 */
export const RDS_WAIT_EVENTS: Record<string, string> = {
  'RDS-EVENT-0005': 'DB instance created',
  'RDS-EVENT-0002': 'Finished DB Instance backup',
  'RDS-EVENT-0088': 'The DB instance has been started',
  'RDS-EVENT-0031': 'The DB instance has failed due to an incompatible configuration or an underlying storage issue',
  'RDS-EVENT-0035': 'The DB instance has invalid parameters',
  'RDS-EVENT-0036': 'The DB instance is in an incompatible network',
  'RDS-EVENT-0221': 'The DB instance has reached the storage-full threshold, and the database has been shut down',
  'RDS-EVENT-0007': 'The allocated storage for the DB instance has been consumed',
  'RDS-EVENT-0003': 'The DB instance has been deleted',
  'RDS-EVENT-0087': 'The DB instance has been stopped',
};

export type RdsEventOutcome =
  | { action: 'succeeded' | 'failed'; migrationId: string; instance: string; eventId?: string; status: string }
  | {
      action: 'ignored';
      reason: 'unknown-instance' | 'other-event' | 'not-available-yet' | 'no-waiting-step' | 'token-already-complete';
      instance: string;
      eventId?: string;
      migrationId?: string;
      status?: string;
    };

/**
 * Events after which RDS sends nothing more for this wait. On "DB instance created" with the first
 * backup still running, "Finished DB Instance backup" follows; after these, if the instance still
 * reports a passing status (the status can trail the event by a moment), it is read again a few times.
 */
const LAST_EVENTS = new Set(['RDS-EVENT-0002', 'RDS-EVENT-0088']);

/** How often, and how far apart, the status is read again after a last event (up to ~15 s of a Lambda's time). */
export const RDS_STATUS_RECHECK = { attempts: 3, intervalMs: 5000 } as const;

export interface RdsEventDeps {
  rds: RDSClient;
  store: MigrationStore;
  callbacks: TaskCallbacks;
  log: Log;
  /** Waits between status reads; injected so that tests do not sleep. */
  sleep?: (ms: number) => Promise<void>;
}

/** The instance's status when it settles (available, failed or gone), or as it is after the last read. */
async function settledStatus(deps: RdsEventDeps, instance: string, recheck: boolean) {
  const sleep = deps.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  for (let attempt = 0; ; attempt++) {
    const current = await describeInstance(deps.rds, instance);
    const status = current?.DBInstanceStatus ?? 'deleted';
    const failure = current ? FAILED_STATUSES[status] : 'it no longer exists';
    if (status === 'available' || failure || !recheck || attempt >= RDS_STATUS_RECHECK.attempts)
      return { current, status, failure };
    await sleep(RDS_STATUS_RECHECK.intervalMs);
  }
}

export async function handleRdsInstanceEvent(event: RdsInstanceEvent, deps: RdsEventDeps): Promise<RdsEventOutcome> {
  const { SourceIdentifier: instance, EventID: eventId, Message: message } = event.detail;
  const what = `${eventId ?? 'event without EventID'} (${message ?? 'no message'}) for RDS instance ${instance}`;
  const store = callbackStore(deps.store);
  const migrationId = await store.findCorrelation(rdsCorrelationKey(instance));
  if (!migrationId) {
    deps.log(`ignored ${what}: no migration waits for this instance`);
    return { action: 'ignored', reason: 'unknown-instance', instance, eventId };
  }
  if (!eventId || !RDS_WAIT_EVENTS[eventId]) {
    deps.log(`ignored ${what} of migration ${migrationId}: not an event that ends the wait`);
    return { action: 'ignored', reason: 'other-event', instance, eventId, migrationId };
  }
  // The status now, not the event, decides: a late failure event after the instance became available
  // (or a stale "created" of an instance deleted since) must not decide the step.
  const { current, status, failure } = await settledStatus(deps, instance, LAST_EVENTS.has(eventId));
  if (status !== 'available' && !failure) {
    deps.log(`ignored ${what} of migration ${migrationId}: the instance is ${status}, not available yet`);
    return { action: 'ignored', reason: 'not-available-yet', instance, eventId, migrationId, status };
  }
  // Before the step completes: the tasks after it connect to the target through these.
  if (!failure) await recordTargetEndpoint(deps.store, migrationId, current!);
  const token = await store.takeTaskToken(migrationId, PROVISION_STEP);
  if (!token) {
    deps.log(`ignored ${what} of migration ${migrationId}: no step waits on it (a duplicate or late event)`);
    return { action: 'ignored', reason: 'no-waiting-step', instance, eventId, migrationId, status };
  }
  const completed = await deliverTakenToken(store, migrationId, PROVISION_STEP, token, () =>
    failure
      ? deps.callbacks.fail(
          token,
          'RdsTargetFailedError',
          `RDS instance ${instance} is ${status}: ${failure}. Last event: ${eventId} ${message ?? ''}`.trim(),
        )
      : deps.callbacks.succeed(token, outputOf(current!, tagsOf(current!)[MIGRATION_TAG] === migrationId, false)),
  );
  if (!completed) {
    deps.log(
      `ignored ${what} of migration ${migrationId}: Step Functions no longer waits on its token (timed out or completed)`,
    );
    return { action: 'ignored', reason: 'token-already-complete', instance, eventId, migrationId, status };
  }
  deps.log(
    `${failure ? 'failed' : 'completed'} Provision target of migration ${migrationId} on ${what}: instance ${status}`,
  );
  return { action: failure ? 'failed' : 'succeeded', migrationId, instance, eventId, status };
}
