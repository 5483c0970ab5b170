/**
 * The `DmsReplication` port in AWS: what the workflow's DMS path asks of DMS and CloudWatch, made of
 * the adapter's calls in dms.ts, for a replication instance's task and for DMS Serverless alike. On
 * Serverless every step reads the replication's state first (DescribeReplications), so a retried step
 * starts, resumes or stops nothing twice; its CDC latency is read as dmsServerlessCdcLatency says.
 */
import type { CloudWatchClient, Dimension } from '@aws-sdk/client-cloudwatch';
import {
  type DatabaseMigrationServiceClient,
  DeleteEndpointCommand,
  DeleteReplicationConfigCommand,
  DeleteReplicationTaskCommand,
  DescribeEndpointsCommand,
  DescribeReplicationConfigsCommand,
  DescribeReplicationTasksCommand,
  StartReplicationCommand,
  StopReplicationCommand,
} from '@aws-sdk/client-database-migration-service';
import {
  classifyDmsReplication,
  type DmsLatencyReading,
  type DmsMappingInput,
  type DmsPlan,
  type DmsRef,
  type DmsReplication,
  type DmsTaskOutcome,
  dmsDrained,
  dmsNames,
  dmsReplicationAtRest,
  type MigrationStore,
  type TaskCallbacks,
} from '@pgferry/core';
import {
  call,
  classifyDmsTaskStatus,
  completeDmsFullLoad,
  DMS_CALLBACK_STEP,
  DmsError,
  describeOrNone,
  dmsCdcLatency,
  dmsInstanceIdentifier,
  dmsReplicationStatus,
  dmsServerlessCdcLatency,
  dmsServerlessMetricDimensions,
  dmsTaskStatus,
  ensureDmsEndpoints,
  ensureDmsReplication,
  startDmsTask,
  stopDmsTask,
} from './dms';

export interface AwsDmsReplicationOptions {
  /** Between two looks at a task that is being created, stopped or deleted. */
  pollMs?: number;
  /** How long those waits may take (a Lambda has 15 minutes). */
  maxWaitMs?: number;
  sleep?: (ms: number) => Promise<void>;
  now?: () => Date;
}

/** Task states that need no stop before a delete. */
const AT_REST = ['stopped', 'ready', 'failed'];

export class AwsDmsReplication implements DmsReplication {
  private readonly instanceIds = new Map<string, string>();
  /** Serverless: the metric dimensions found for a config ARN (once found, they do not change). */
  private readonly serverlessDimensions = new Map<string, Dimension[][]>();
  private readonly pollMs: number;
  private readonly maxWaitMs: number;
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(
    private readonly dms: DatabaseMigrationServiceClient,
    private readonly cloudwatch: CloudWatchClient,
    private readonly store: Pick<MigrationStore, 'correlate' | 'putTaskToken' | 'takeTaskToken'>,
    private readonly callbacks: TaskCallbacks,
    private readonly options: AwsDmsReplicationOptions = {},
  ) {
    this.pollMs = options.pollMs ?? 5000;
    this.maxWaitMs = options.maxWaitMs ?? 10 * 60_000;
    this.sleep = options.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  /** Poll `status` until `done` says so, bounded by maxWaitMs. */
  private async until(what: string, status: () => Promise<string>, done: (s: string) => boolean): Promise<string> {
    const deadline = Date.now() + this.maxWaitMs;
    for (;;) {
      const s = await status();
      if (done(s)) return s;
      if (Date.now() >= deadline)
        throw new DmsError(`${what} is still ${s} after ${Math.round(this.maxWaitMs / 1000)} s`, {
          field: what,
          hint: 'look at it in the DMS console; the step can be run again',
        });
      await this.sleep(this.pollMs);
    }
  }

  async start(plan: DmsPlan, mappings: DmsMappingInput): Promise<DmsRef & { started: boolean }> {
    const endpoints = await ensureDmsEndpoints(this.dms, plan);
    const { arn } = await ensureDmsReplication(this.dms, plan, endpoints, mappings, this.store);
    if (plan.compute.kind === 'serverless') {
      // Never run (no replication yet, or `created`): start. Stopped or failed part way (a retried
      // step): resume, so that tables already loaded are not loaded again. Anything else is running
      // or on its way (initializing, provisioning, …): left alone.
      const r = await dmsReplicationStatus(this.dms, arn);
      const status = r?.status.toLowerCase() ?? 'created';
      const type =
        status === 'created' ? 'start-replication' : dmsReplicationAtRest(r) ? 'resume-processing' : undefined;
      if (type) await this.startServerless(arn, type);
      return {
        arn,
        kind: 'serverless',
        replicationConfigIdentifier: dmsNames(plan.migrationId).replicationConfig,
        started: type !== undefined,
      };
    }
    const ref: DmsRef = { arn, kind: 'instance', replicationInstanceArn: plan.compute.replicationInstanceArn };
    // A task just created is `creating` for a while and cannot be started until it is `ready`.
    const status = await this.until(
      `DMS task ${arn}`,
      async () => (await dmsTaskStatus(this.dms, arn)).status,
      (s) => s !== 'creating',
    );
    // Never run before: start. Stopped or failed part way (a retried step): resume, so that the tables
    // loaded already are not loaded again into a target DMS does not empty (TargetTablePrepMode DO_NOTHING).
    const { started } = await startDmsTask(
      this.dms,
      arn,
      status === 'ready' ? 'start-replication' : 'resume-processing',
    );
    return { ...ref, started };
  }

  private startServerless(arn: string, type: 'start-replication' | 'resume-processing') {
    return call(`DMS Serverless replication ${arn}`, 'dms:StartReplication', () =>
      this.dms.send(new StartReplicationCommand({ ReplicationConfigArn: arn, StartReplicationType: type })),
    );
  }

  async awaitFullLoad(migrationId: string, ref: DmsRef, token: string): Promise<void> {
    await this.store.putTaskToken!(migrationId, DMS_CALLBACK_STEP, token);
    // The event may have come before the token was kept (it was then ignored): look at DMS itself.
    let outcome: DmsTaskOutcome;
    if (ref.kind === 'serverless') outcome = classifyDmsReplication(await dmsReplicationStatus(this.dms, ref.arn));
    else outcome = classifyDmsTaskStatus(await dmsTaskStatus(this.dms, ref.arn));
    if (outcome.kind === 'ignored') return;
    await completeDmsFullLoad(
      {
        store: this.store as Required<Pick<MigrationStore, 'takeTaskToken' | 'putTaskToken'>>,
        callbacks: this.callbacks,
        log: () => {},
      },
      migrationId,
      ref.arn,
      outcome,
      ref.kind === 'serverless' ? 'DMS Serverless replication' : 'DMS task',
    );
  }

  async resume(ref: DmsRef): Promise<void> {
    if (ref.kind === 'serverless') {
      // Only a stopped (or failed) replication resumes; one running already is left alone. One still
      // stopping (a cutover undone just after its StopReplication) is waited for, then resumed.
      let r = await dmsReplicationStatus(this.dms, ref.arn);
      if (r?.status.toLowerCase() === 'stopping') {
        await this.until(
          `DMS Serverless replication ${ref.arn}`,
          async () => {
            r = await dmsReplicationStatus(this.dms, ref.arn);
            return r?.status.toLowerCase() ?? 'created';
          },
          (s) => s !== 'stopping',
        );
      }
      if (r && dmsReplicationAtRest(r) && r.status.toLowerCase() !== 'created')
        await this.startServerless(ref.arn, 'resume-processing');
      return;
    }
    await startDmsTask(this.dms, ref.arn, 'resume-processing');
  }

  async cdcLatency(ref: DmsRef): Promise<DmsLatencyReading> {
    const now = this.options.now?.();
    if (ref.kind === 'serverless') {
      let dimensions = this.serverlessDimensions.get(ref.arn);
      if (!dimensions?.length) {
        dimensions = await dmsServerlessMetricDimensions(this.cloudwatch, ref);
        this.serverlessDimensions.set(ref.arn, dimensions);
      }
      return dmsServerlessCdcLatency(this.cloudwatch, ref, dimensions, now ? { now } : {});
    }
    if (!ref.replicationInstanceArn)
      throw new DmsError(`DMS task ${ref.arn} has no replication instance recorded`, {
        field: 'dms.replicationInstanceArn',
        hint: 'the DMS task is recorded by "Start the DMS task"; start a new execution for this migration',
      });
    let id = this.instanceIds.get(ref.replicationInstanceArn);
    if (!id) {
      id = await dmsInstanceIdentifier(this.dms, ref.replicationInstanceArn);
      this.instanceIds.set(ref.replicationInstanceArn, id);
    }
    return dmsCdcLatency(this.cloudwatch, { replicationInstanceIdentifier: id, taskArn: ref.arn }, now ? { now } : {});
  }

  async drained(ref: DmsRef, freezeAt: string): Promise<boolean> {
    return dmsDrained(await this.cdcLatency(ref), freezeAt);
  }

  async stop(ref: DmsRef): Promise<void> {
    if (ref.kind === 'serverless') {
      const r = await dmsReplicationStatus(this.dms, ref.arn);
      if (!dmsReplicationAtRest(r) && r!.status.toLowerCase() !== 'stopping')
        await call(`DMS Serverless replication ${ref.arn}`, 'dms:StopReplication', () =>
          this.dms.send(new StopReplicationCommand({ ReplicationConfigArn: ref.arn })),
        );
      return;
    }
    await stopDmsTask(this.dms, ref.arn);
  }

  async cleanup(plan: DmsPlan, ref?: DmsRef): Promise<string[]> {
    const names = dmsNames(plan.migrationId);
    const deleted: string[] = [];
    if (plan.compute.kind === 'instance') {
      const found = await describeOrNone(`DMS task ${names.task}`, 'dms:DescribeReplicationTasks', () =>
        this.dms.send(
          new DescribeReplicationTasksCommand({
            Filters: [{ Name: 'replication-task-id', Values: [names.task] }],
            WithoutSettings: true,
          }),
        ),
      );
      const arn = found?.ReplicationTasks?.[0]?.ReplicationTaskArn ?? ref?.arn;
      if (found?.ReplicationTasks?.[0] && arn) {
        const what = `DMS task ${arn}`;
        await stopDmsTask(this.dms, arn);
        await this.until(
          what,
          async () => (await dmsTaskStatus(this.dms, arn)).status,
          (s) => AT_REST.includes(s),
        );
        await call(what, 'dms:DeleteReplicationTask', () =>
          this.dms.send(new DeleteReplicationTaskCommand({ ReplicationTaskArn: arn })),
        );
        // Its endpoints cannot go while the task is being deleted.
        await this.until(
          what,
          async () => {
            const t = await describeOrNone(what, 'dms:DescribeReplicationTasks', () =>
              this.dms.send(
                new DescribeReplicationTasksCommand({
                  Filters: [{ Name: 'replication-task-arn', Values: [arn] }],
                  WithoutSettings: true,
                }),
              ),
            );
            return t?.ReplicationTasks?.[0]?.Status ?? 'deleted';
          },
          (s) => s === 'deleted',
        );
        deleted.push(names.task);
      }
    } else {
      const describeConfig = () =>
        describeOrNone(`DMS replication config ${names.replicationConfig}`, 'dms:DescribeReplicationConfigs', () =>
          this.dms.send(
            new DescribeReplicationConfigsCommand({
              Filters: [{ Name: 'replication-config-id', Values: [names.replicationConfig] }],
            }),
          ),
        );
      const arn = (await describeConfig())?.ReplicationConfigs?.[0]?.ReplicationConfigArn;
      if (arn) {
        const what = `DMS Serverless replication ${arn}`;
        // A replication that runs (or is on its way) is stopped, and waited for: a config is deleted at rest.
        await this.stop({ arn, kind: 'serverless' });
        await this.until(
          what,
          async () => {
            const r = await dmsReplicationStatus(this.dms, arn);
            return dmsReplicationAtRest(r) ? 'at rest' : r!.status;
          },
          (s) => s === 'at rest',
        );
        await call(what, 'dms:DeleteReplicationConfig', () =>
          this.dms.send(new DeleteReplicationConfigCommand({ ReplicationConfigArn: arn })),
        );
        // Its endpoints cannot go while the config that names them is being deleted.
        await this.until(
          what,
          async () => ((await describeConfig())?.ReplicationConfigs?.[0] ? 'deleting' : 'deleted'),
          (s) => s === 'deleted',
        );
        deleted.push(names.replicationConfig);
      }
    }
    for (const id of [names.sourceEndpoint, names.targetEndpoint]) {
      const found = await describeOrNone(`DMS endpoint ${id}`, 'dms:DescribeEndpoints', () =>
        this.dms.send(new DescribeEndpointsCommand({ Filters: [{ Name: 'endpoint-id', Values: [id] }] })),
      );
      const arn = found?.Endpoints?.[0]?.EndpointArn;
      if (!arn) continue;
      await call(`DMS endpoint ${id}`, 'dms:DeleteEndpoint', () =>
        this.dms.send(new DeleteEndpointCommand({ EndpointArn: arn })),
      );
      deleted.push(id);
    }
    return deleted;
  }
}
