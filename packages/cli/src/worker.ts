/**
 * `pgferry worker`: the Fargate container's entry point. The state machine starts it with
 * `ecs:runTask.waitForTaskToken` and passes, in the container's environment, the task to run, the
 * migration and the task token. The worker runs that one task, sends a heartbeat every few seconds
 * while it runs, and completes the token: SendTaskSuccess with a short summary, or SendTaskFailure
 * with the error's name and message (never a secret).
 */
import { hostname } from 'node:os';
import {
  DEPLOYMENT_ENV,
  deploymentEnv,
  errorMessage,
  InvalidInputError,
  type MigrationStore,
  PgferryError,
  type Phase,
  redactText,
  SST_APP_NAME,
  type TaskCallbacks,
  type TaskName,
  type TaskOutput,
  taskInputFromEnvironment,
  WORKER_ENV,
  WORKFLOW_TASKS,
  withTaskLease,
} from '@pgferry/core';
import {
  bulkLoad,
  copyShare,
  type DumpStore,
  keepErrorHint,
  type PhaseContext,
  runWorkflowTask,
} from '@pgferry/postgres';
import { openSession, type Runtime, runPhase } from './runner';

/** What the state machine puts in the container's environment (ContainerOverrides). */
export interface WorkerTask {
  task: TaskName;
  migrationId: string;
  taskToken: string;
  /** Bulk load and its shares: the attempt the coordinator's plan belongs to. */
  loadId?: string;
  /** copyShare: which share of the plan (0-based). */
  share?: number;
  /** The task's other inputs (`PGFERRY_INPUT_<KEY>`, JSON): verify's rounds, for one. */
  input?: Record<string, unknown>;
}

/** The tasks a worker runs: those the task table places on the worker. */
export const WORKER_TASKS = (Object.keys(WORKFLOW_TASKS) as TaskName[]).filter(
  (t) => WORKFLOW_TASKS[t].runtime === 'worker',
);

function required(env: NodeJS.ProcessEnv, name: string, what: string): string {
  const value = env[name]?.trim();
  if (!value)
    throw new InvalidInputError(`${name} is not set: the worker needs ${what}`, {
      field: name,
      hint: 'the state machine sets it in the task’s ContainerOverrides; to run a worker by hand, export it',
    });
  return value;
}

/** The task to run, from the environment; a missing or wrong variable is named with what to do. */
export function workerTaskFromEnv(env: NodeJS.ProcessEnv): WorkerTask {
  const task = required(env, WORKER_ENV.task, 'the task to run') as TaskName;
  if (!WORKER_TASKS.includes(task))
    throw new InvalidInputError(`${WORKER_ENV.task}=${task} is not a worker task`, {
      field: WORKER_ENV.task,
      hint: `one of ${WORKER_TASKS.join(', ')}`,
    });
  const spec: WorkerTask = {
    task,
    migrationId: required(env, WORKER_ENV.migrationId, 'the migration to act on'),
    taskToken: required(env, WORKER_ENV.taskToken, 'the task token to complete'),
  };
  // "Hold snapshot" of a scaled-out load names its attempt; a load by one worker ("Bulk load") does not.
  if (task === 'copyShare') spec.loadId = required(env, WORKER_ENV.loadId, 'the bulk load attempt its plan belongs to');
  else if (task === 'bulkLoad' && env[WORKER_ENV.loadId]?.trim()) spec.loadId = env[WORKER_ENV.loadId]?.trim();
  const { migrationId: _id, taskToken: _token, ...input } = taskInputFromEnvironment(env).input;
  if (Object.keys(input).length) spec.input = input;
  if (task === 'copyShare') {
    const raw = required(env, WORKER_ENV.share, 'the share of the copy plan to copy');
    const share = Number(raw);
    if (!Number.isInteger(share) || share < 0)
      throw new InvalidInputError(`${WORKER_ENV.share}=${raw} is not a share number`, {
        field: WORKER_ENV.share,
        hint: 'a whole number from 0 (the index into the copy plan’s shares)',
      });
    spec.share = share;
  }
  return spec;
}

export interface WorkerOptions {
  rt: Runtime;
  callbacks: TaskCallbacks;
  /** Between two heartbeats; well under the state's HeartbeatSeconds. */
  heartbeatMs?: number;
  /** Between two reads of the shares' reports (the coordinator of a scaled-out load). */
  pollMs?: number;
  /**
   * Hold the migration's lease while the task runs (withTaskLease): `pgferry worker`, started by the
   * state machine (not a worker run in this process, whose caller holds the migration).
   */
  lease?: boolean;
  /**
   * Once the work is told to stop (its execution gone), how long it has to stop by itself before
   * `exit` ends the process: a load's COPY, a verify or a pg_restore checks no signal, and must not run
   * on beside the rollback that follows (ending the process ends its sessions). None: it runs on.
   */
  stopWithinMs?: number;
  /** What ends the process (`pgferry worker`: process.exit with the failure's code). */
  exit?: () => void;
}

export interface WorkerOutcome {
  ok: boolean;
  /** What the token was completed with. */
  output?: TaskOutput;
  error?: { name: string; message: string };
}

/**
 * A phase with its start and end recorded, unless it has ended already: then the phase itself says so
 * (runPhase would clear its end first). A re-run task converges instead of doing its work again.
 */
function phase(rt: Runtime, ctx: PhaseContext, name: Phase, fn: (c: PhaseContext) => Promise<string>) {
  return ctx.state.phases[name]?.endedAt ? fn(ctx) : runPhase(rt, ctx, name, fn);
}

/** Runs one task of the workflow as the state machine asked, on the session's connections. */
async function dispatch(task: WorkerTask, rt: Runtime, ctx: PhaseContext, stopped: AbortSignal): Promise<TaskOutput> {
  switch (task.task) {
    case 'bulkLoad': {
      if (!task.loadId) break; // one worker copies everything: the workflow's own task below
      const summary = await phase(rt, ctx, 'bulk-load', (c) =>
        bulkLoad(c, {
          loadId: task.loadId,
          shares: { read: () => rt.store.get(task.migrationId), signal: stopped },
        }),
      );
      const s = ctx.state;
      return { summary, rows: s.rowsCopied, bytes: s.bytesCopied, slotLsn: s.slotLsn };
    }
    case 'copyShare': {
      const r = await copyShare(ctx, { loadId: task.loadId ?? '', share: task.share ?? 0 }, stopped);
      return { summary: r.summary, share: r.share, rows: r.rows, bytes: r.bytes };
    }
  }
  // Every other worker task as the Lambda tasks run theirs (done-checks, verify rounds), on this
  // session; the worker completes the token itself.
  return runWorkflowTask(
    task.task,
    { ...task.input, migrationId: task.migrationId },
    {
      store: rt.store,
      log: (m) => rt.events.log(m),
      phase: (p, e, summary) => rt.events.phase(p, e, summary),
      session: async () => ({ ctx, close: async () => {} }),
      // "Finish the load on the target" stops its work when its execution is gone.
      signal: stopped,
    },
  );
}

/**
 * Runs the task and completes its token. Heartbeats go out every `heartbeatMs` while it runs; a
 * heartbeat refused (the execution stopped, failed or timed out: the token is dead) stops a
 * coordinator's wait, so that its slot is dropped instead of holding WAL for nobody, and a share's
 * copy between two items.
 */
/** Heartbeats failing in a row (not a dead token) before the work stops: with 30 s between two, well inside HeartbeatSeconds (300). */
export const HEARTBEAT_FAILURES_TO_STOP = 5;

export async function runWorker(task: WorkerTask, options: WorkerOptions): Promise<WorkerOutcome> {
  const { rt, callbacks } = options;
  const stop = new AbortController();
  // A token Step Functions no longer waits on stops the work at once; any other failure (throttling,
  // the network) only after HEARTBEAT_FAILURES_TO_STOP in a row: a moment's outage must not end hours
  // of work for an execution that is alive.
  let failures = 0;
  // Its execution gone, or its lease lost to another holder: the work stops, and ends the process if
  // it does not stop by itself in time.
  const stopWork = (why: string) => {
    if (stop.signal.aborted) return;
    rt.events.log(`${why}: stopping ${task.task}`);
    stop.abort();
    if (options.stopWithinMs !== undefined && options.exit) {
      const exit = options.exit;
      setTimeout(() => {
        rt.events.log(`${task.task} did not stop within ${options.stopWithinMs} ms: ending the process`);
        exit();
      }, options.stopWithinMs).unref();
    }
  };
  const beat = setInterval(() => {
    callbacks.heartbeat(task.taskToken).then(
      () => {
        failures = 0;
      },
      (err) => {
        if (stop.signal.aborted) return;
        failures++;
        const why = redactText(errorMessage(err));
        if ((err as Error)?.name !== 'TaskTokenGoneError' && failures < HEARTBEAT_FAILURES_TO_STOP) {
          rt.events.log(
            `heartbeat failed (${why}), ${failures} of ${HEARTBEAT_FAILURES_TO_STOP} in a row: ${task.task} goes on`,
          );
          return;
        }
        stopWork(`heartbeat refused (${why})`);
      },
    );
  }, options.heartbeatMs ?? 30_000);
  try {
    let output: TaskOutput;
    try {
      // Through the store withTaskLease gives it: it refuses every write once the lease is lost.
      const work = async (store: Runtime['store'] = rt.store) => {
        const taskRt = { ...rt, store };
        const session = await openSession(taskRt, task.migrationId);
        try {
          return await dispatch(task, taskRt, session.ctx, stop.signal);
        } finally {
          await session.close();
        }
      };
      // Released before the token is completed: the next state finds the lease free.
      const holder = `"${WORKFLOW_TASKS[task.task].state}" on the pgferry worker ${hostname()} (pid ${process.pid})`;
      const input = { ...task.input, migrationId: task.migrationId };
      // Given up as soon as its execution is gone: that execution's rollback ends what this still runs.
      const lease = {
        log: (m: string) => rt.events.log(m),
        signal: stop.signal,
        onLost: (m: string) => stopWork(m),
      };
      output = options.lease ? await withTaskLease(rt.store, task.task, input, holder, work, lease) : await work();
    } catch (err) {
      // A share's copy and the coordinator's load do not go through runWorkflowTask, which keeps a
      // typed error's hint with the migration for "Record failure" (only name and message travel).
      if ((task.task === 'copyShare' || task.loadId) && err instanceof PgferryError)
        await keepErrorHint(rt.store, task.migrationId, err);
      const error = {
        name: (err as Error)?.name || 'Error',
        // The cause Step Functions shows (and keeps in the execution history): never a password.
        message: redactText(errorMessage(err)),
      };
      await callbacks.fail(task.taskToken, error.name, error.message);
      return { ok: false, error };
    }
    const summary = redactText(output.summary);
    const result: TaskOutput = { ...output, summary };
    await callbacks.succeed(task.taskToken, result);
    return { ok: true, output: result };
  } finally {
    clearInterval(beat);
  }
}

/**
 * The Step Functions callbacks (SendTaskSuccess / Failure / Heartbeat) of packages/aws, loaded only by
 * the worker command: the CLI's other commands never need the AWS SDK.
 */
export async function awsTaskCallbacks(): Promise<TaskCallbacks> {
  const aws = await loadAwsAdapters();
  const Callbacks = aws.SfnTaskCallbacks as (new () => TaskCallbacks) | undefined;
  if (typeof Callbacks !== 'function')
    throw new PgferryError('this build of pgferry has no Step Functions task callbacks (SfnTaskCallbacks)', {
      hint: 'build the worker image from a revision whose packages/aws exports SfnTaskCallbacks',
    });
  return new Callbacks();
}

/**
 * The AWS SDK warns on stderr, once per process, that its releases after January 2027 need Node 22,
 * on every command that makes a client under Node 20 (which pgferry supports). Its documented switch
 * (aws-sdk-js-v3 issue 7983), read by @aws-sdk/core when a client is made, silences that warning only;
 * a value the user set is kept. The CLI only: Lambda and the worker image run Node 22.
 */
export const AWS_SDK_NODE_WARNING_SWITCH = 'AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED';

/** packages/aws, which only the worker loads: the CLI's own bundle leaves the AWS SDK out. */
export async function loadAwsAdapters(): Promise<typeof import('@pgferry/aws')> {
  process.env[AWS_SDK_NODE_WARNING_SWITCH] ??= 'true';
  try {
    // A checkout's bundle leaves them out, as TypeScript sources: those load through tsx (a dev
    // dependency), registered first. The worker image bundles them (Dockerfile).
    if (resolvesTo('@pgferry/aws')?.endsWith('.ts')) {
      // Not a literal: the CLI's bundle must not try to include tsx.
      const api = 'tsx/esm/api';
      const tsx = (await import(api).catch(() => undefined)) as typeof import('tsx/esm/api') | undefined;
      tsx?.register();
    }
    return await import('@pgferry/aws');
  } catch (err) {
    throw new PgferryError(`the AWS adapters are not in this build of pgferry: ${errorMessage(err)}`, {
      cause: err,
      hint: 'pgferry worker runs in the worker image built from the Dockerfile; in a checkout, run `npm ci` first',
    });
  }
}

function resolvesTo(specifier: string): string | undefined {
  try {
    return import.meta.resolve(specifier);
  } catch {
    return undefined;
  }
}

/**
 * The store a deployed worker acts on: the stack's DynamoDB table (named in its environment), with
 * credentials from Secrets Manager, as the Lambda functions use it. Undefined outside a deployment
 * (no table named): the local file store then stands.
 */
export async function deployedWorkerStore(env: NodeJS.ProcessEnv): Promise<MigrationStore | undefined> {
  if (!env[DEPLOYMENT_ENV.tableName]) return undefined;
  return deployedTableStore(deploymentEnv(env).tableName);
}

/** DynamoDB's rule for a table name. */
const TABLE_NAME = /^[A-Za-z0-9_.-]{3,255}$/;
/** An AWS region's shape (us-east-1, eu-central-2, us-gov-west-1). */
const REGION = /^[a-z]{2}(-[a-z]+)+-\d+$/;

/**
 * The deployed stack's table `tableName` as a migration store (the worker, `pgferry status --table`):
 * credentials from Secrets Manager, as the Lambda functions read them. `region` defaults to the
 * environment's (AWS_REGION, the profile), as the AWS SDK resolves it.
 */
export async function deployedTableStore(
  tableName: string,
  region?: string,
  fields: { table: string; region: string } = { table: 'table', region: 'region' },
): Promise<MigrationStore> {
  if (!TABLE_NAME.test(tableName))
    throw new InvalidInputError(
      `${fields.table} "${tableName.slice(0, 80)}" is not a DynamoDB table name: 3-255 letters, digits, _ . or -`,
      { field: fields.table, hint: "the stack's migration table (its PGFERRY_TABLE_NAME)" },
    );
  if (region !== undefined && !REGION.test(region))
    throw new InvalidInputError(`${fields.region} "${region.slice(0, 40)}" is not an AWS region (such as eu-west-1)`, {
      field: fields.region,
    });
  const aws = await loadAwsAdapters();
  const [{ DynamoDBClient }, { SecretsManagerClient }] = await Promise.all([
    import('@aws-sdk/client-dynamodb'),
    import('@aws-sdk/client-secrets-manager'),
  ]);
  const config = region ? { region } : {};
  const dynamo = new DynamoDBClient(config);
  const store = aws.deployedStore({ dynamo, secrets: new SecretsManagerClient(config) }, tableName);
  return namingMissingTable(store, async (cause) => {
    const where = await Promise.resolve(dynamo.config.region())
      .then((r) => `region ${r}`)
      .catch(() => 'the default region');
    const stage = new RegExp(`^(.+)-${SST_APP_NAME}-Migrations$`).exec(tableName)?.[1];
    return new InvalidInputError(
      `DynamoDB table ${tableName} does not exist in ${where}${stage ? ` (the table \`npx sst deploy --stage ${stage}\` makes)` : ''}`,
      {
        cause,
        field: stage ? '--stage' : fields.table,
        hint: stage
          ? `deploy the stage first (npx sst deploy --stage ${stage}), or check --stage and --region (the region the stage was deployed to; default: the AWS environment's); --table NAME reads any other table`
          : `check the table's name (the stack's migrations table, its PGFERRY_TABLE_NAME) and ${fields.region} (default: the AWS environment's region)`,
      },
    );
  });
}

/**
 * DynamoDB answers a table that is not there with "Cannot do operations on a non-existent table",
 * which names neither the table nor the region: every call of `store` that meets it throws `missing()`.
 */
function namingMissingTable<T extends object>(store: T, missing: (cause: unknown) => Promise<Error>): T {
  return new Proxy(store, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        const result = value.apply(target, args);
        if (!(result instanceof Promise)) return result;
        return result.catch(async (err: unknown) => {
          throw (err as Error)?.name === 'ResourceNotFoundException' ? await missing(err) : err;
        });
      };
    },
  });
}

/**
 * Deployed, the `dump` strategy streams its data through the stack's artifacts bucket (packages/aws
 * s3DumpStore) instead of the container's small disk. Undefined outside a deployment.
 */
export async function deployedWorkerDumpStore(env: NodeJS.ProcessEnv): Promise<DumpStore | undefined> {
  if (!env[DEPLOYMENT_ENV.tableName]) return undefined;
  const aws = await loadAwsAdapters();
  // The bucket sends its events to EventBridge (the stack): "Wait for the dump upload" waits for the dump's.
  return aws.s3DumpStore({ bucket: deploymentEnv(env).bucketName }, { announces: true });
}

/** The container's environment in an `ecs:runTask` request's ContainerOverrides (what the worker reads). */
export function containerEnvironment(runTask: unknown): NodeJS.ProcessEnv {
  const overrides = (runTask as { Overrides?: { ContainerOverrides?: { Environment?: unknown[] }[] } })?.Overrides;
  const env: NodeJS.ProcessEnv = {};
  for (const container of overrides?.ContainerOverrides ?? [])
    for (const e of container.Environment ?? []) {
      const { Name, Value } = e as { Name?: unknown; Value?: unknown };
      if (typeof Name === 'string' && Value !== undefined && Value !== null) env[Name] = String(Value);
    }
  return env;
}

/** A task token completed in this process: what it was completed with, once. */
export class InProcessTaskCallbacks implements TaskCallbacks {
  readonly completed = new Map<string, { output?: unknown; error?: string; cause?: string }>();
  heartbeats = 0;
  /** Set when the token's execution is gone: heartbeats are refused from then on, as Step Functions does. */
  gone = false;
  /** Tests: this many heartbeats fail as a throttled request would (the token still open). */
  failing = 0;

  async succeed(token: string, output: unknown): Promise<boolean> {
    if (this.completed.has(token)) return false;
    this.completed.set(token, { output });
    return true;
  }
  async fail(token: string, error: string, cause: string): Promise<boolean> {
    if (this.completed.has(token)) return false;
    this.completed.set(token, { error, cause });
    return true;
  }
  async heartbeat(token: string): Promise<void> {
    if (this.gone || this.completed.has(token))
      throw Object.assign(new Error(`TaskTimedOut: task token ${token} is no longer open`), {
        name: 'TaskTokenGoneError',
      });
    if (this.failing > 0) {
      this.failing--;
      throw Object.assign(new Error('ThrottlingException: Rate exceeded'), { name: 'ThrottlingException' });
    }
    this.heartbeats++;
  }
}

/**
 * Runs a worker task state in this process, as its container would: the `ecs:runTask` request's
 * environment read by `pgferry worker`'s own code, the token completed through `callbacks`. Resolves
 * with the success output; a failure throws an error of the worker's error name, for Retry and Catch.
 */
export async function runWorkerInProcess(
  runTask: unknown,
  options: WorkerOptions & { callbacks: InProcessTaskCallbacks },
): Promise<TaskOutput> {
  const task = workerTaskFromEnv(containerEnvironment(runTask));
  const outcome = await runWorker(task, options);
  if (outcome.ok && outcome.output) return outcome.output;
  const error = new Error(outcome.error?.message ?? 'the worker failed');
  error.name = outcome.error?.name ?? 'Error';
  throw error;
}
