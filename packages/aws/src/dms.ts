/**
 * The DMS path's AWS side: endpoints from Secrets Manager, the full-load-and-CDC task (or a DMS
 * Serverless replication config), the `DMS Replication Task State Change` events that end the bulk
 * load, and the task's CDC latency as the lag. The inputs are built by pure functions in core (dms.ts).
 */
import {
  type CloudWatchClient,
  type Dimension,
  GetMetricDataCommand,
  ListMetricsCommand,
} from '@aws-sdk/client-cloudwatch';
import {
  CreateEndpointCommand,
  CreateReplicationConfigCommand,
  CreateReplicationTaskCommand,
  type DatabaseMigrationServiceClient,
  DescribeEndpointsCommand,
  DescribeReplicationConfigsCommand,
  DescribeReplicationInstancesCommand,
  DescribeReplicationsCommand,
  DescribeReplicationTasksCommand,
  StartReplicationTaskCommand,
  StopReplicationTaskCommand,
} from '@aws-sdk/client-database-migration-service';
import {
  classifyDmsReplication,
  classifyDmsTaskEvent,
  type DmsMappingInput,
  type DmsPlan,
  type DmsReplicationState,
  type DmsTaskEventDetail,
  type DmsTaskOutcome,
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
import { deliverTakenToken } from './callbacks';

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
            ComputeConfig: { ...input.ComputeConfig },
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

/**
 * A DMS Serverless replication as DescribeReplications reports it (filter `replication-config-arn`:
 * DMS_DOCS.describeReplications; fields: DMS_DOCS.replication), or undefined when DMS has none for the
 * config (never started). FailureMessages are redacted: they may quote a connection string.
 */
export async function dmsReplicationStatus(
  dms: DatabaseMigrationServiceClient,
  configArn: string,
): Promise<(DmsReplicationState & { fullLoadProgressPercent?: number; fullLoadFinishDate?: string }) | undefined> {
  const out = await describeOrNone(`DMS Serverless replication ${configArn}`, 'dms:DescribeReplications', () =>
    dms.send(new DescribeReplicationsCommand({ Filters: [{ Name: 'replication-config-arn', Values: [configArn] }] })),
  );
  const r = out?.Replications?.[0];
  if (!r) return undefined;
  const stats = r.ReplicationStats;
  return {
    status: r.Status ?? 'unknown',
    ...(r.StopReason ? { stopReason: r.StopReason } : {}),
    ...(r.FailureMessages?.length ? { failureMessages: r.FailureMessages.map((m) => redactText(m)) } : {}),
    ...(stats?.FullLoadProgressPercent !== undefined ? { fullLoadProgressPercent: stats.FullLoadProgressPercent } : {}),
    ...(stats?.FullLoadFinishDate ? { fullLoadFinishDate: stats.FullLoadFinishDate.toISOString() } : {}),
  };
}

/** ListMetrics pages read at most while looking for a Serverless replication's metric (500 metrics a page). */
const LIST_METRICS_PAGES = 20;

/**
 * The dimensions CloudWatch files a DMS Serverless replication's CDCLatencyTarget under. The DMS User
 * Guide lists the metric for Serverless replications, "grouped by each serverless replication"
 * (DMS_DOCS.serverless, "AWS DMS serverless replication metrics"), but names no dimension (nor its
 * namespace: AWS/DMS is where DMS publishes its metrics, as for a task). So no dimension is guessed:
 * ListMetrics (namespace AWS/DMS) lists the metric's series, and the series taken are those
 * whose every dimension value names this replication (its config ARN, the ARN's resource id, or its
 * identifier). None is an empty list: no figure. ListMetrics (DMS_DOCS.listMetrics) lists a series only
 * once it has data, up to 15 minutes after its first datapoint, so a replication that has just begun
 * publishing reads as no figure for that long (the gate waits; it never takes that for 0).
 */
export async function dmsServerlessMetricDimensions(
  cloudwatch: CloudWatchClient,
  ref: { arn: string; replicationConfigIdentifier?: string },
): Promise<Dimension[][]> {
  const names = new Set([
    ref.arn,
    ref.arn.split(':').pop()!,
    ...(ref.replicationConfigIdentifier ? [ref.replicationConfigIdentifier] : []),
  ]);
  const found = new Map<string, Dimension[]>();
  let token: string | undefined;
  for (let page = 0; page < LIST_METRICS_PAGES; page++) {
    const out = await call(`DMS Serverless replication ${ref.arn}`, 'cloudwatch:ListMetrics', () =>
      cloudwatch.send(
        new ListMetricsCommand({
          Namespace: 'AWS/DMS',
          MetricName: 'CDCLatencyTarget',
          ...(token ? { NextToken: token } : {}),
        }),
      ),
    );
    for (const m of out.Metrics ?? []) {
      const dims = m.Dimensions ?? [];
      if (dims.length > 0 && dims.every((d) => d.Value !== undefined && names.has(d.Value)))
        found.set(JSON.stringify(dims), dims);
    }
    token = out.NextToken;
    if (!token) break;
  }
  return [...found.values()];
}

/**
 * A DMS Serverless replication's CDC latency: CDCLatencyTarget and CDCLatencySource (AWS/DMS, the
 * metrics DMS_DOCS.serverless lists for Serverless replications) under the dimensions
 * dmsServerlessMetricDimensions found. Where several series name the replication, the newest minute
 * of any of them counts, and its highest value. No series, or no datapoint, is no figure, never 0.
 */
export async function dmsServerlessCdcLatency(
  cloudwatch: CloudWatchClient,
  ref: { arn: string },
  dimensions: Dimension[][],
  options: { now?: Date; windowSeconds?: number } = {},
): Promise<DmsLatency> {
  if (dimensions.length === 0) return {};
  const now = options.now ?? new Date();
  const start = new Date(now.getTime() - (options.windowSeconds ?? 600) * 1000);
  const queries = dimensions.flatMap((dims, i) =>
    (['CDCLatencyTarget', 'CDCLatencySource'] as const).map((metric) => ({
      Id: `${metric === 'CDCLatencyTarget' ? 'target' : 'source'}${i}`,
      MetricStat: {
        Metric: { Namespace: 'AWS/DMS', MetricName: metric, Dimensions: dims },
        Period: 60,
        Stat: 'Maximum',
      },
      ReturnData: true,
    })),
  );
  const out = await call(`DMS Serverless replication ${ref.arn}`, 'cloudwatch:GetMetricData', () =>
    cloudwatch.send(
      new GetMetricDataCommand({
        StartTime: start,
        EndTime: now,
        ScanBy: 'TimestampDescending',
        MetricDataQueries: queries,
      }),
    ),
  );
  const newest = (prefix: string) => {
    const points = (out.MetricDataResults ?? [])
      .filter((r) => r.Id?.startsWith(prefix))
      .flatMap((r) => (r.Values ?? []).map((v, i) => ({ v, t: r.Timestamps?.[i] })))
      .filter((p): p is { v: number; t: Date } => p.t !== undefined);
    if (points.length === 0) return undefined;
    const latest = Math.max(...points.map((p) => p.t.getTime()));
    return { v: Math.max(...points.filter((p) => p.t.getTime() === latest).map((p) => p.v)), t: new Date(latest) };
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

/**
 * A `DMS Replication State Change` (DMS Serverless). EventBridge lists the detail-type
 * (DMS_DOCS.eventBridgeDms) but DMS documents no sample of it: only the envelope every AWS event has
 * is read (source, detail-type, id, resources: DMS_DOCS.eventStructure), never `detail`.
 */
export interface DmsReplicationStateChangeEvent {
  source: string;
  'detail-type': string;
  id?: string;
  time?: string;
  resources?: string[];
  detail?: unknown;
}

export interface DmsEventDeps {
  store: Required<Pick<MigrationStore, 'findCorrelation' | 'takeTaskToken' | 'putTaskToken'>>;
  callbacks: TaskCallbacks;
  log: (line: string) => void;
}

/**
 * What a replication instance's task's state now (DescribeReplicationTasks: dmsTaskStatus) means for
 * "Wait for the DMS full load": read as the event of that state would be (classifyDmsTaskEvent); a
 * task that is neither stopped nor failed ends nothing.
 */
export function classifyDmsTaskStatus(t: DmsTaskStatus): DmsTaskOutcome {
  if (t.status !== 'stopped' && t.status !== 'failed')
    return { kind: 'ignored', reason: `the task is ${t.status} now: nothing ends yet` };
  return classifyDmsTaskEvent({
    eventType: t.status === 'failed' ? 'REPLICATION_TASK_FAILED' : 'REPLICATION_TASK_STOPPED',
    detailMessage:
      t.status === 'failed'
        ? (t.lastFailureMessage ?? 'the DMS task failed')
        : `Stop Reason ${(t.stopReason ?? '').replace(/^Stop Reason\s+/i, '')}`,
  });
}

export type DmsEventResult =
  | { action: 'succeeded' | 'failed'; migrationId: string; taskArn: string; summary: string }
  | { action: 'ignored'; reason: string; migrationId?: string };

/**
 * Complete the bulk load's token with what ended the full load (an event, or the step's own look),
 * once: no token (taken already: a duplicate, late or out-of-order event) is undefined. A token taken
 * but not delivered is put back, so a retry (the event's, or a person's) can deliver it.
 */
export async function completeDmsFullLoad(
  deps: Omit<DmsEventDeps, 'store'> & { store: Required<Pick<MigrationStore, 'takeTaskToken' | 'putTaskToken'>> },
  migrationId: string,
  arn: string,
  outcome: Exclude<DmsTaskOutcome, { kind: 'ignored' }>,
  what: 'DMS task' | 'DMS Serverless replication',
): Promise<DmsEventResult | undefined> {
  const token = await deps.store.takeTaskToken(migrationId, DMS_CALLBACK_STEP);
  if (!token) return undefined;
  return deliverTakenToken(deps.store, migrationId, DMS_CALLBACK_STEP, token, async () => {
    if (outcome.kind === 'full-load-finished') {
      const summary = `DMS full load finished (${outcome.stopReason})`;
      const done = await deps.callbacks.succeed(token, { summary, taskArn: arn, stopReason: outcome.stopReason });
      if (!done) deps.log(`the ${DMS_CALLBACK_STEP} token of ${migrationId} was already complete`);
      return { action: 'succeeded', migrationId, taskArn: arn, summary };
    }
    const summary =
      outcome.kind === 'failed'
        ? `${what} failed: ${redactText(outcome.message)}`
        : `${what} stopped before its full load finished (${outcome.stopReason}): ${redactText(outcome.message)}`;
    await deps.callbacks.fail(token, outcome.kind === 'failed' ? 'DmsTaskFailed' : 'DmsTaskStopped', summary);
    return { action: 'failed', migrationId, taskArn: arn, summary } as const;
  });
}

/**
 * An EventBridge `DMS Replication Task State Change`: the full load finished (the task stopped after
 * applying its cached changes) completes the bulk load's token; a failure or another stop fails it.
 * An event that could end the step is a prompt: the task's state now (DescribeReplicationTasks)
 * decides, so that a failure event delivered late, after the migration was resumed and the task runs
 * again under a new token, or one DMS recovered from, fails nothing. Unknown tasks, events that end
 * nothing, and duplicate, late or out-of-order events (the token is taken already) are logged and ignored.
 */
export async function handleDmsTaskStateChange(
  event: DmsTaskStateChangeEvent,
  deps: DmsEventDeps & { describeTask: (taskArn: string) => Promise<DmsTaskStatus> },
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
  const task = await deps.describeTask(taskArn);
  // The event may come before DescribeReplicationTasks shows the state it announces: the invocation
  // fails (nothing taken), and Lambda's retry of the event reads it again once the task has stopped.
  if (task.status === 'stopping')
    throw new DmsError(
      `the event says task ${taskArn} ${outcome.kind === 'failed' ? 'failed' : 'stopped'}, but DescribeReplicationTasks still says stopping: the event is retried`,
      { migrationId, field: taskArn },
    );
  const now = classifyDmsTaskStatus(task);
  if (now.kind === 'ignored')
    return ignore(
      `the event says the task ${outcome.kind === 'failed' ? 'failed' : 'stopped'}, but ${now.reason}: a late or duplicate event, or one DMS recovered from`,
      migrationId,
    );
  const done = await completeDmsFullLoad(deps, migrationId, taskArn, now, 'DMS task');
  return (
    done ??
    ignore(
      `no step of migration ${migrationId} waits on task ${taskArn} (${now.kind}): a duplicate or late event, or the step ended already`,
      migrationId,
    )
  );
}

/**
 * An EventBridge `DMS Replication State Change` (DMS Serverless), taken as a prompt: its detail is not
 * documented, so it is not read. The event's resources name the replication config (an ARN correlated
 * with a migration by ensureDmsReplication); DescribeReplications then says what is true now
 * (classifyDmsReplication): a finished full load completes the bulk load's token, a failure or another
 * stop fails it, anything else ends nothing. So a duplicate, late or out-of-order event reads the same
 * truth: the token is completed once, and every other event is logged and ignored.
 */
export async function handleDmsReplicationStateChange(
  event: DmsReplicationStateChangeEvent,
  deps: DmsEventDeps & { describeReplication: (configArn: string) => Promise<DmsReplicationState | undefined> },
): Promise<DmsEventResult> {
  const ignore = (reason: string, migrationId?: string): DmsEventResult => {
    deps.log(`DMS event ${event.id ?? ''} ignored: ${reason}`);
    return { action: 'ignored', reason, ...(migrationId ? { migrationId } : {}) };
  };
  if (event.source !== 'aws.dms' || event['detail-type'] !== 'DMS Replication State Change')
    return ignore(`not a DMS Replication State Change (${event.source} / ${event['detail-type']})`);
  let found: { arn: string; migrationId: string } | undefined;
  for (const arn of event.resources ?? []) {
    const migrationId = await deps.store.findCorrelation(dmsCorrelationKey(arn));
    if (migrationId) {
      found = { arn, migrationId };
      break;
    }
  }
  if (!found)
    return ignore(
      `it names no replication config of pgferry's (${(event.resources ?? []).join(', ') || 'no resources'})`,
    );
  const { arn, migrationId } = found;
  const outcome = classifyDmsReplication(await deps.describeReplication(arn));
  if (outcome.kind === 'ignored') return ignore(`${arn}: ${outcome.reason}`, migrationId);
  const done = await completeDmsFullLoad(deps, migrationId, arn, outcome, 'DMS Serverless replication');
  return (
    done ??
    ignore(
      `no step of migration ${migrationId} waits on ${arn} (${outcome.kind}): a duplicate or late event, or the step ended already`,
      migrationId,
    )
  );
}
