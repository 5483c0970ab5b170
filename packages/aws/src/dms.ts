/**
 * The DMS path's AWS side: endpoints from Secrets Manager, the full-load-and-CDC task (or a DMS
 * Serverless replication config), the `DMS Replication Task State Change` events that end the bulk
 * load, and the task's CDC latency as the lag. The inputs are built by pure functions in core (dms.ts).
 */
import { type CloudWatchClient, GetMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import {
  CreateEndpointCommand,
  CreateReplicationConfigCommand,
  CreateReplicationTaskCommand,
  type DatabaseMigrationServiceClient,
  DescribeEndpointsCommand,
  DescribeReplicationConfigsCommand,
  DescribeReplicationInstancesCommand,
  DescribeReplicationTasksCommand,
  StartReplicationTaskCommand,
  StopReplicationTaskCommand,
} from '@aws-sdk/client-database-migration-service';
import {
  classifyDmsTaskEvent,
  type DmsMappingInput,
  type DmsPlan,
  type DmsTaskEventDetail,
  dmsEndpointInput,
  dmsNames,
  dmsReplicationConfigInput,
  dmsTaskInput,
  errorMessage,
  type MigrationStore,
  PgferryError,
  redactText,
  type TaskCallbacks,
  type TaskName,
} from '@pgferry/core';

/** The DMS path's failures; `resource` names the endpoint, task or config. */
export class DmsError extends PgferryError {
  override name = 'DmsError';
}

function dmsError(err: unknown, what: string, action: string): DmsError {
  const name = err instanceof Error ? err.name : '';
  const hint =
    name === 'AccessDeniedFault' || name === 'AccessDeniedException'
      ? `grant ${action} to the role pgferry runs as`
      : name === 'ResourceNotFoundFault'
        ? `check that ${what} exists in this account and region`
        : undefined;
  return new DmsError(`${action} for ${what} failed: ${redactText(errorMessage(err))}`, {
    cause: err,
    field: what,
    ...(hint ? { hint } : {}),
  });
}

export async function call<T>(what: string, action: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw dmsError(err, what, action);
  }
}

/** DMS answers a Describe… that matches nothing with ResourceNotFoundFault. */
export async function describeOrNone<T>(what: string, action: string, fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof Error && err.name === 'ResourceNotFoundFault') return undefined;
    throw dmsError(err, what, action);
  }
}

/** The source and target endpoints, created once: a re-run finds them by their names. */
export async function ensureDmsEndpoints(
  dms: DatabaseMigrationServiceClient,
  plan: DmsPlan,
): Promise<{ sourceArn: string; targetArn: string }> {
  const arn = async (side: 'source' | 'target') => {
    const input = dmsEndpointInput(plan, side);
    const id = input.EndpointIdentifier;
    const found = await describeOrNone(`DMS endpoint ${id}`, 'dms:DescribeEndpoints', () =>
      dms.send(new DescribeEndpointsCommand({ Filters: [{ Name: 'endpoint-id', Values: [id] }] })),
    );
    const existing = found?.Endpoints?.[0]?.EndpointArn;
    if (existing) return existing;
    const created = await call(`DMS endpoint ${id}`, 'dms:CreateEndpoint', () =>
      dms.send(
        new CreateEndpointCommand({
          ...input,
          Tags: [...input.Tags],
          PostgreSQLSettings: { ...input.PostgreSQLSettings },
        }),
      ),
    );
    return created.Endpoint!.EndpointArn!;
  };
  return { sourceArn: await arn('source'), targetArn: await arn('target') };
}

/**
 * The full-load-and-CDC task (instance) or replication config (Serverless), created once, and its
 * correlation item, so that its events find the migration. Returns its ARN.
 */
export async function ensureDmsReplication(
  dms: DatabaseMigrationServiceClient,
  plan: DmsPlan,
  endpoints: { sourceArn: string; targetArn: string },
  mappings: DmsMappingInput,
  store?: Pick<MigrationStore, 'correlate'>,
): Promise<{ arn: string; created: boolean }> {
  const names = dmsNames(plan.migrationId);
  let result: { arn: string; created: boolean };
  if (plan.compute.kind === 'instance') {
    const input = dmsTaskInput(plan, endpoints, mappings);
    const what = `DMS task ${names.task}`;
    const found = await describeOrNone(what, 'dms:DescribeReplicationTasks', () =>
      dms.send(
        new DescribeReplicationTasksCommand({
          Filters: [{ Name: 'replication-task-id', Values: [names.task] }],
          WithoutSettings: true,
        }),
      ),
    );
    const existing = found?.ReplicationTasks?.[0]?.ReplicationTaskArn;
    if (existing) result = { arn: existing, created: false };
    else {
      const out = await call(what, 'dms:CreateReplicationTask', () =>
        dms.send(new CreateReplicationTaskCommand({ ...input, Tags: [...input.Tags] })),
      );
      result = { arn: out.ReplicationTask!.ReplicationTaskArn!, created: true };
    }
  } else {
    const input = dmsReplicationConfigInput(plan, endpoints, mappings);
    const what = `DMS replication config ${names.replicationConfig}`;
    const found = await describeOrNone(what, 'dms:DescribeReplicationConfigs', () =>
      dms.send(
        new DescribeReplicationConfigsCommand({
          Filters: [{ Name: 'replication-config-id', Values: [names.replicationConfig] }],
        }),
      ),
    );
    const existing = found?.ReplicationConfigs?.[0]?.ReplicationConfigArn;
    if (existing) result = { arn: existing, created: false };
    else {
      const out = await call(what, 'dms:CreateReplicationConfig', () =>
        dms.send(
          new CreateReplicationConfigCommand({
            ...input,
            ComputeConfig: {
              ...input.ComputeConfig,
              VpcSecurityGroupIds: [...input.ComputeConfig.VpcSecurityGroupIds],
            },
            Tags: [...input.Tags],
          }),
        ),
      );
      result = { arn: out.ReplicationConfig!.ReplicationConfigArn!, created: true };
    }
  }
  await store?.correlate?.(dmsCorrelationKey(result.arn), plan.migrationId);
  return result;
}

export interface DmsTaskStatus {
  status: string;
  stopReason?: string;
  lastFailureMessage?: string;
  fullLoadProgressPercent?: number;
  tablesErrored?: number;
}

export async function dmsTaskStatus(dms: DatabaseMigrationServiceClient, taskArn: string): Promise<DmsTaskStatus> {
  const out = await call(`DMS task ${taskArn}`, 'dms:DescribeReplicationTasks', () =>
    dms.send(
      new DescribeReplicationTasksCommand({
        Filters: [{ Name: 'replication-task-arn', Values: [taskArn] }],
        WithoutSettings: true,
      }),
    ),
  );
  const t = out.ReplicationTasks?.[0];
  if (!t) throw new DmsError(`DMS task ${taskArn} was not found`, { field: taskArn });
  return {
    status: t.Status ?? 'unknown',
    ...(t.StopReason ? { stopReason: t.StopReason } : {}),
    ...(t.LastFailureMessage ? { lastFailureMessage: redactText(t.LastFailureMessage) } : {}),
    ...(t.ReplicationTaskStats?.FullLoadProgressPercent !== undefined
      ? { fullLoadProgressPercent: t.ReplicationTaskStats.FullLoadProgressPercent }
      : {}),
    ...(t.ReplicationTaskStats?.TablesErrored !== undefined
      ? { tablesErrored: t.ReplicationTaskStats.TablesErrored }
      : {}),
  };
}

/**
 * Start the task: `start-replication` the first time, `resume-processing` after the stop that ends
 * the full load (change capture goes on from where it stopped). A task already starting or running
 * is left alone, so a retried step changes nothing.
 */
export async function startDmsTask(
  dms: DatabaseMigrationServiceClient,
  taskArn: string,
  type: 'start-replication' | 'resume-processing',
): Promise<{ started: boolean; status: string }> {
  const { status } = await dmsTaskStatus(dms, taskArn);
  if (status === 'running' || status === 'starting') return { started: false, status };
  await call(`DMS task ${taskArn}`, 'dms:StartReplicationTask', () =>
    dms.send(new StartReplicationTaskCommand({ ReplicationTaskArn: taskArn, StartReplicationTaskType: type })),
  );
  return { started: true, status: 'starting' };
}

/** Stop the task (the cutover, once latency is 0 past the freeze). Already stopping or stopped: nothing to do. */
export async function stopDmsTask(dms: DatabaseMigrationServiceClient, taskArn: string): Promise<{ stopped: boolean }> {
  const { status } = await dmsTaskStatus(dms, taskArn);
  if (status === 'stopped' || status === 'stopping' || status === 'ready' || status === 'failed') {
    return { stopped: false };
  }
  await call(`DMS task ${taskArn}`, 'dms:StopReplicationTask', () =>
    dms.send(new StopReplicationTaskCommand({ ReplicationTaskArn: taskArn })),
  );
  return { stopped: true };
}

/** The identifier CloudWatch's AWS/DMS metrics name a replication instance by (the plan holds its ARN). */
export async function dmsInstanceIdentifier(dms: DatabaseMigrationServiceClient, instanceArn: string): Promise<string> {
  const out = await call(`DMS replication instance ${instanceArn}`, 'dms:DescribeReplicationInstances', () =>
    dms.send(
      new DescribeReplicationInstancesCommand({
        Filters: [{ Name: 'replication-instance-arn', Values: [instanceArn] }],
      }),
    ),
  );
  const id = out.ReplicationInstances?.[0]?.ReplicationInstanceIdentifier;
  if (!id) throw new DmsError(`DMS replication instance ${instanceArn} was not found`, { field: instanceArn });
  return id;
}

export interface DmsLatency {
  /** CDCLatencyTarget: seconds from a source commit to its apply on the target (it includes the source side). */
  targetSeconds?: number;
  /** CDCLatencySource: seconds from a source commit to DMS reading it. */
  sourceSeconds?: number;
  /** End of the minute the newest target datapoint covers: only a datapoint after the freeze says anything about it. */
  at?: string;
}

/**
 * The task's CDC latency from CloudWatch (AWS/DMS, one datapoint a minute). No datapoint in the
 * window is `undefined`, never 0: "no figure" is not "caught up".
 */
export async function dmsCdcLatency(
  cloudwatch: CloudWatchClient,
  ids: { replicationInstanceIdentifier: string; taskArn: string },
  options: { now?: Date; windowSeconds?: number } = {},
): Promise<DmsLatency> {
  const now = options.now ?? new Date();
  const start = new Date(now.getTime() - (options.windowSeconds ?? 600) * 1000);
  // The metric's task dimension is the task's resource id, the last part of its ARN.
  const taskResourceId = ids.taskArn.split(':').pop()!;
  const query = (id: string, metric: string) => ({
    Id: id,
    MetricStat: {
      Metric: {
        Namespace: 'AWS/DMS',
        MetricName: metric,
        Dimensions: [
          { Name: 'ReplicationInstanceIdentifier', Value: ids.replicationInstanceIdentifier },
          { Name: 'ReplicationTaskIdentifier', Value: taskResourceId },
        ],
      },
      Period: 60,
      Stat: 'Maximum',
    },
    ReturnData: true,
  });
  const out = await call(`DMS task ${ids.taskArn}`, 'cloudwatch:GetMetricData', () =>
    cloudwatch.send(
      new GetMetricDataCommand({
        StartTime: start,
        EndTime: now,
        ScanBy: 'TimestampDescending',
        MetricDataQueries: [query('target', 'CDCLatencyTarget'), query('source', 'CDCLatencySource')],
      }),
    ),
  );
  const newest = (id: string) => {
    const r = out.MetricDataResults?.find((m) => m.Id === id);
    if (!r?.Values?.length || !r.Timestamps?.length) return undefined;
    // Newest first as asked; sorted again so a reordered answer cannot pass an old figure off as new.
    const points = r.Values.map((v, i) => ({ v, t: r.Timestamps![i]! })).sort((a, b) => b.t.getTime() - a.t.getTime());
    return points[0];
  };
  const target = newest('target');
  const source = newest('source');
  return {
    ...(target ? { targetSeconds: target.v, at: new Date(target.t.getTime() + 60_000).toISOString() } : {}),
    ...(source ? { sourceSeconds: source.v } : {}),
  };
}

export function dmsCorrelationKey(arn: string): string {
  return `DMS#${arn}`;
}

/** The step a DMS task's events complete: the bulk load ends when the full load and its cached changes are applied. */
export const DMS_CALLBACK_STEP: TaskName = 'awaitDmsFullLoad';

export interface DmsTaskStateChangeEvent {
  source: string;
  'detail-type': string;
  id?: string;
  time?: string;
  resources?: string[];
  detail: DmsTaskEventDetail;
}

export interface DmsEventDeps {
  store: Required<Pick<MigrationStore, 'findCorrelation' | 'takeTaskToken' | 'putTaskToken'>>;
  callbacks: TaskCallbacks;
  log: (line: string) => void;
}

export type DmsEventResult =
  | { action: 'succeeded' | 'failed'; migrationId: string; taskArn: string; summary: string }
  | { action: 'ignored'; reason: string; migrationId?: string };

/**
 * An EventBridge `DMS Replication Task State Change`: the full load finished (the task stopped after
 * applying its cached changes) completes the bulk load's token; a failure or another stop fails it.
 * Unknown tasks, events that end nothing, and duplicate, late or out-of-order events (the token is
 * taken already) are logged and ignored.
 */
export async function handleDmsTaskStateChange(
  event: DmsTaskStateChangeEvent,
  deps: DmsEventDeps,
): Promise<DmsEventResult> {
  const ignore = (reason: string, migrationId?: string): DmsEventResult => {
    deps.log(`DMS event ${event.id ?? ''} ignored: ${reason}`);
    return { action: 'ignored', reason, ...(migrationId ? { migrationId } : {}) };
  };
  if (event.source !== 'aws.dms' || event['detail-type'] !== 'DMS Replication Task State Change') {
    return ignore(`not a DMS Replication Task State Change (${event.source} / ${event['detail-type']})`);
  }
  const taskArn = event.resources?.[0];
  if (!taskArn) return ignore('the event names no task');
  const outcome = classifyDmsTaskEvent(event.detail ?? {});
  if (outcome.kind === 'ignored') return ignore(outcome.reason);
  const migrationId = await deps.store.findCorrelation(dmsCorrelationKey(taskArn));
  if (!migrationId) return ignore(`task ${taskArn} is not one of pgferry's`);
  const token = await deps.store.takeTaskToken(migrationId, DMS_CALLBACK_STEP);
  if (!token) {
    return ignore(
      `no step of migration ${migrationId} waits on task ${taskArn} (${outcome.kind}): a duplicate or late event, or the step ended already`,
      migrationId,
    );
  }
  let summary: string;
  try {
    if (outcome.kind === 'full-load-finished') {
      summary = `DMS full load finished (${outcome.stopReason})`;
      const done = await deps.callbacks.succeed(token, { summary, taskArn, stopReason: outcome.stopReason });
      if (!done)
        deps.log(`DMS event ${event.id ?? ''}: the ${DMS_CALLBACK_STEP} token of ${migrationId} was already complete`);
      return { action: 'succeeded', migrationId, taskArn, summary };
    }
    const reason = outcome.kind === 'failed' ? outcome.message : outcome.message;
    summary =
      outcome.kind === 'failed'
        ? `DMS task failed: ${redactText(reason)}`
        : `DMS task stopped before its full load finished (${outcome.stopReason}): ${redactText(reason)}`;
    await deps.callbacks.fail(token, outcome.kind === 'failed' ? 'DmsTaskFailed' : 'DmsTaskStopped', summary);
    return { action: 'failed', migrationId, taskArn, summary };
  } catch (err) {
    // The token was taken but not delivered: put it back, so the event's retry (or a person) can.
    await deps.store.putTaskToken(migrationId, DMS_CALLBACK_STEP, token);
    throw err;
  }
}
