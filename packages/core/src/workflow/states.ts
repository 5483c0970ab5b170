/**
 * Builders for the state machine's Task states: one Lambda invocation or one worker (ECS RunTask) per
 * task of the table in tasks.ts, with the Retry and Catch every task gets. No I/O.
 */
import { APPROVAL_WINDOW_SECONDS } from '../approval-wait';
import { InvalidInputError } from '../errors';
import type { Phase } from '../model';
import { resumableErrors } from './failure';
import { functionArnKey, type TaskName, WORKFLOW_TASKS } from './tasks';

/** The phase whose failure policy applies to a task's errors. */
export const TASK_PHASE: Record<TaskName, Phase> = {
  assess: 'assess',
  // Nothing exists on the source yet: a target that cannot be provisioned leaves nothing to undo there.
  provisionTarget: 'assess',
  prepareSchema: 'prepare-schema',
  bulkLoad: 'bulk-load',
  copyShare: 'bulk-load',
  readCopyPlan: 'bulk-load',
  awaitDumpUpload: 'bulk-load',
  startDms: 'bulk-load',
  awaitDmsFullLoad: 'bulk-load',
  startReplication: 'start-replication',
  checkLag: 'catch-up',
  finishLoad: 'catch-up',
  verifyBeforeSwitch: 'catch-up',
  awaitApproval: 'catch-up',
  cutover: 'cutover',
  verify: 'verify',
  cleanup: 'cleanup',
  rollback: 'rollback',
  recordFailure: 'rollback',
};

/** The states every failure path goes through (their names are fixed: bulk-load.ts and the tests use them). */
export const RECORD_FAILURE = WORKFLOW_TASKS.recordFailure.state;
export const ROLL_BACK = WORKFLOW_TASKS.rollback.state;

/**
 * Execution-state paths a task reads besides the migration id: the gate's memory between lag samples,
 * the caught error, the verify rounds. Lambda tasks get them as Payload fields; the worker as
 * environment variables (see `workerEnvironment`).
 */
export const TASK_INPUTS: Partial<Record<TaskName, Record<string, string>>> = {
  // (With the cutover mode and the approval: a manual migration not approved yet stops once caught up.)
  checkLag: { gate: '$.gate', verify: '$.verify', cutover: '$.cutover', approved: '$.approved' },
  // Which execution runs the migration now (the n-th continuation of it, or its first).
  assess: { execution: '$$.Execution.Name', executionNumber: '$.execution' },
  // Each approval window samples the gate once more, and ends the wait past its deadline.
  awaitApproval: { gate: '$.gate', approvalWait: '$.approvalWait' },
  verifyBeforeSwitch: { verify: '$.verify' },
  // The drain-over-budget loop's count: the task says whether a failed drain goes back to catch-up.
  cutover: { attempt: '$.cutoverAttempt' },
  rollback: { error: '$.error' },
  recordFailure: { error: '$.error' },
};

/**
 * Where a task's output goes in the execution state, and which of its fields are kept (always
 * `summary`). A ResultSelector fails the state on a field that is missing, so every task's output
 * goes through `completeOutput`.
 */
export const TASK_RESULTS: Record<TaskName, { path: string; fields: string[] }> = {
  assess: { path: '$.results.assess', fields: ['resumeAt', 'strategy'] },
  provisionTarget: { path: '$.results.provisionTarget', fields: [] },
  prepareSchema: { path: '$.results.prepareSchema', fields: [] },
  bulkLoad: { path: '$.results.bulkLoad', fields: ['rows', 'bytes'] },
  copyShare: { path: '$.results.copyShare', fields: [] },
  readCopyPlan: { path: '$.results.copyPlan', fields: [] },
  awaitDumpUpload: { path: '$.dumpUpload', fields: [] },
  startDms: { path: '$.results.startDms', fields: [] },
  awaitDmsFullLoad: { path: '$.results.bulkLoad', fields: [] },
  startReplication: { path: '$.results.startReplication', fields: [] },
  checkLag: { path: '$.gate', fields: ['ready', 'streak', 'waitSeconds', 'memory', 'samples', 'finishLoad'] },
  finishLoad: { path: '$.results.finishLoad', fields: [] },
  verifyBeforeSwitch: { path: '$.verify', fields: ['done', 'rounds', 'outcome'] },
  awaitApproval: { path: '$.results.approval', fields: [] },
  cutover: { path: '$.results.cutover', fields: ['writeGapMs'] },
  verify: { path: '$.results.verify', fields: ['outcome'] },
  cleanup: { path: '$.results.cleanup', fields: [] },
  rollback: { path: '$.results.rollback', fields: ['action'] },
  recordFailure: { path: '$.failure', fields: ['action'] },
};

/** A task's output with every field its ResultSelector reads (null where the task had nothing to say). */
export function completeOutput<T extends { summary: string }>(task: TaskName, output: T): T {
  const out: Record<string, unknown> = { ...output };
  for (const f of TASK_RESULTS[task].fields) if (out[f] === undefined) out[f] = null;
  return out as T;
}

/** How long a task may run: a Lambda at most its 15 minutes; the worker's long tasks a day or two. */
export const TASK_TIMEOUT_SECONDS: Record<TaskName, number> = {
  assess: 900,
  // An RDS instance takes 10-40 minutes to become available.
  provisionTarget: 2 * 3600,
  prepareSchema: 6 * 3600,
  bulkLoad: 3 * 24 * 3600,
  copyShare: 3 * 24 * 3600,
  readCopyPlan: 900,
  // The upload ends with the dump, which takes as long as the load may.
  awaitDumpUpload: 3 * 24 * 3600,
  startDms: 900,
  // DMS copies a very large source for days; the task's failure or stop ends the wait sooner.
  awaitDmsFullLoad: 7 * 24 * 3600,
  startReplication: 900,
  checkLag: 900,
  // A VALIDATE CONSTRAINT reads the whole table (and looks up every row's key): as long as a load may take.
  finishLoad: 3 * 24 * 3600,
  verifyBeforeSwitch: 24 * 3600,
  // One window of the approval wait (APPROVAL_WINDOW_SECONDS, definition.ts); the week a person has to
  // decide is its deadline (APPROVAL_DEADLINE_SECONDS), after which the execution stops, resumable.
  awaitApproval: APPROVAL_WINDOW_SECONDS,
  cutover: 900,
  verify: 24 * 3600,
  cleanup: 900,
  rollback: 900,
  recordFailure: 900,
};

/** The worker sends a heartbeat at least this often; a worker that died is noticed after this. */
export const WORKER_HEARTBEAT_SECONDS = 300;

/** Errors of the Lambda and ECS services themselves, retried with backoff. Tasks are idempotent (each checks its own marker). */
const LAMBDA_TRANSIENT = [
  'Lambda.ServiceException',
  'Lambda.AWSLambdaException',
  'Lambda.SdkClientException',
  'Lambda.TooManyRequestsException',
];
const ECS_TRANSIENT = ['ECS.AmazonECSException', 'ECS.ServerException', 'ECS.ThrottlingException'];

/** The longest a task's Lambda function may run (Lambda's limit; the stack's longest timeout). */
export const LAMBDA_MAX_SECONDS = 900;

/**
 * A task that finds the migration's lease held (MigrationBusyError, lease.ts: a task of a stopped
 * execution still running, or a crashed one's lease not yet lapsed) is tried again, for longer than a
 * Lambda task may run plus a lease's lapse (busyWaitSeconds). A worker gives its lease up as soon as its
 * execution is gone (its heartbeat refused); one holding it for hours for a live execution (a second
 * execution begun beside a load) outlasts the wait: the task then fails having done nothing.
 */
export const BUSY_RETRY = {
  ErrorEquals: ['MigrationBusyError'],
  // Short at first: a callback task that completes its own token (an instance already available) may
  // still hold the lease for a moment as the next state begins.
  IntervalSeconds: 2,
  MaxAttempts: 14,
  BackoffRate: 2,
  MaxDelaySeconds: 120,
} as const;

/** How long BUSY_RETRY waits in all before the task's Catch takes the error. */
export function busyWaitSeconds(r: typeof BUSY_RETRY = BUSY_RETRY): number {
  let total = 0;
  for (let i = 0; i < r.MaxAttempts; i++) total += Math.min(r.IntervalSeconds * r.BackoffRate ** i, r.MaxDelaySeconds);
  return total;
}

function retry(errors: string[]) {
  return [
    { ErrorEquals: errors, IntervalSeconds: 2, MaxAttempts: 5, BackoffRate: 2, JitterStrategy: 'FULL' },
    BUSY_RETRY,
  ];
}

/**
 * The Catch list of a task: errors the failure policy never rolls back in its phase go to "Record
 * failure" (a resumable stop); everything else to `onError` ("Roll back", which applies the policy
 * again with the stored state). The failure handlers themselves are not given one here.
 */
export function catchFor(task: TaskName, onError: string): object[] {
  const resumable = resumableErrors(TASK_PHASE[task]);
  const all = { ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: onError };
  if (onError === RECORD_FAILURE || resumable.length === 0) return [all];
  return [{ ErrorEquals: resumable, ResultPath: '$.error', Next: RECORD_FAILURE }, all];
}

function selector(task: TaskName, from: string) {
  const out: Record<string, string> = { 'summary.$': `${from}.summary` };
  for (const f of TASK_RESULTS[task].fields) out[`${f}.$`] = `${from}.${f}`;
  return out;
}

export interface TaskStateOptions {
  next?: string;
  end?: boolean;
  /** Where failures go (see catchFor); none for the failure handlers' own Catch, given by the caller. */
  onError?: string;
  catch?: object[];
  /** Instead of TASK_TIMEOUT_SECONDS (the approval wait's window, which tests shorten). */
  timeoutSeconds?: number;
}

function flow(task: TaskName, o: TaskStateOptions) {
  const catches = o.catch ?? (o.onError ? catchFor(task, o.onError) : []);
  return {
    ...(o.end ? { End: true } : { Next: o.next }),
    ...(catches.length ? { Catch: catches } : {}),
  };
}

/** A Lambda task: `lambda:invoke` (callback steps `.waitForTaskToken`, passing the task token). */
export function lambdaTaskState(task: TaskName, o: TaskStateOptions): object {
  const spec = WORKFLOW_TASKS[task];
  if (spec.runtime !== 'lambda') throw new Error(`${task} runs on the worker`);
  const callback = 'callback' in spec && spec.callback;
  const payload: Record<string, string> = { 'migrationId.$': '$.migrationId', task };
  for (const [k, path] of Object.entries(TASK_INPUTS[task] ?? {})) payload[`${k}.$`] = path;
  if (callback) payload['taskToken.$'] = '$$.Task.Token';
  return {
    Type: 'Task',
    Comment: `${spec.state} (Lambda)`,
    Resource: callback ? 'arn:aws:states:::lambda:invoke.waitForTaskToken' : 'arn:aws:states:::lambda:invoke',
    Parameters: { FunctionName: substitution(functionArnKey(task)), Payload: payload },
    TimeoutSeconds: o.timeoutSeconds ?? TASK_TIMEOUT_SECONDS[task],
    // A plain invocation's result is the Lambda response, the task's output in its Payload; a callback's is what SendTaskSuccess sent.
    ResultSelector: selector(task, callback ? '$' : '$.Payload'),
    ResultPath: TASK_RESULTS[task].path,
    Retry: retry(LAMBDA_TRANSIENT),
    ...flow(task, o),
  };
}

/** A placeholder the stack's `definitionSubstitutions` fills (`${Key}`). */
export function substitution(key: string): string {
  return `\${${key}}`;
}

/**
 * Environment variable names the worker reads its task from: the one table the definition's worker
 * states and `pgferry worker` (packages/cli/src/worker.ts) both use. `taskInputFromEnvironment` parses them.
 */
export const WORKER_ENV = {
  task: 'PGFERRY_TASK',
  migrationId: 'PGFERRY_MIGRATION_ID',
  taskToken: 'PGFERRY_TASK_TOKEN',
  /** The scaled-out bulk load's attempt (its coordinator and shares). */
  loadId: 'PGFERRY_LOAD_ID',
  /** copyShare: which share of the copy plan (0-based). */
  share: 'PGFERRY_SHARE',
  /** A task input besides the id, as JSON: `PGFERRY_INPUT_<KEY>` (e.g. PGFERRY_INPUT_VERIFY). */
  inputPrefix: 'PGFERRY_INPUT_',
} as const;

/**
 * An `ecs:runTask` request for the worker on Fargate, its container given `environment`. Lists are
 * substituted as strings ("subnet-a,subnet-b") and split into the arrays ECS wants.
 */
export function runTaskParameters(environment: object[]): object {
  return {
    LaunchType: 'FARGATE',
    Cluster: substitution('WorkerClusterArn'),
    TaskDefinition: substitution('WorkerTaskDefinitionArn'),
    NetworkConfiguration: {
      AwsvpcConfiguration: {
        'Subnets.$': `States.StringSplit('${substitution('WorkerSubnets')}', ',')`,
        'SecurityGroups.$': `States.StringSplit('${substitution('WorkerSecurityGroups')}', ',')`,
        AssignPublicIp: 'DISABLED',
      },
    },
    Overrides: { ContainerOverrides: [{ Name: substitution('WorkerContainerName'), Environment: environment }] },
  };
}

/**
 * A worker task: ECS RunTask on Fargate, `.waitForTaskToken`; the container's environment carries the
 * task's name, the migration id and the token (never a credential: the worker reads those from the store).
 * The subnet and security-group lists are substituted as one comma-separated string and split by the
 * intrinsic, so the definition stays valid JSON before substitution.
 */
export function workerTaskState(task: TaskName, o: TaskStateOptions): object {
  const spec = WORKFLOW_TASKS[task];
  if (spec.runtime !== 'worker') throw new Error(`${task} runs on Lambda`);
  const environment: object[] = [
    { Name: WORKER_ENV.task, Value: task },
    { Name: WORKER_ENV.migrationId, 'Value.$': '$.migrationId' },
    { Name: WORKER_ENV.taskToken, 'Value.$': '$$.Task.Token' },
  ];
  for (const [k, path] of Object.entries(TASK_INPUTS[task] ?? {}))
    environment.push({
      Name: `${WORKER_ENV.inputPrefix}${k.toUpperCase()}`,
      'Value.$': `States.JsonToString(${path})`,
    });
  return {
    Type: 'Task',
    Comment: `${spec.state} (Fargate worker)`,
    Resource: 'arn:aws:states:::ecs:runTask.waitForTaskToken',
    Parameters: runTaskParameters(environment),
    TimeoutSeconds: TASK_TIMEOUT_SECONDS[task],
    HeartbeatSeconds: WORKER_HEARTBEAT_SECONDS,
    ResultSelector: selector(task, '$'),
    ResultPath: TASK_RESULTS[task].path,
    Retry: retry(ECS_TRANSIENT),
    ...flow(task, o),
  };
}

/** The state for a task, Lambda or worker as the table says. */
export function taskState(task: TaskName, o: TaskStateOptions): object {
  return WORKFLOW_TASKS[task].runtime === 'lambda' ? lambdaTaskState(task, o) : workerTaskState(task, o);
}

/** A worker's task and input from its environment (what `workerTaskState` put there). */
export function taskInputFromEnvironment(env: Record<string, string | undefined>): {
  task: TaskName;
  input: { migrationId: string; taskToken?: string; [key: string]: unknown };
} {
  const task = env[WORKER_ENV.task];
  if (!task || !(task in WORKFLOW_TASKS))
    throw new InvalidInputError(`${WORKER_ENV.task} must name a workflow task (got ${JSON.stringify(task ?? null)})`, {
      field: WORKER_ENV.task,
    });
  const migrationId = env[WORKER_ENV.migrationId];
  if (!migrationId)
    throw new InvalidInputError(`${WORKER_ENV.migrationId} is not set`, { field: WORKER_ENV.migrationId });
  const input: { migrationId: string; taskToken?: string; [key: string]: unknown } = { migrationId };
  if (env[WORKER_ENV.taskToken]) input.taskToken = env[WORKER_ENV.taskToken];
  for (const k of Object.keys(TASK_INPUTS[task as TaskName] ?? {})) {
    const raw = env[`${WORKER_ENV.inputPrefix}${k.toUpperCase()}`];
    if (raw === undefined) continue;
    try {
      input[k] = JSON.parse(raw);
    } catch {
      throw new InvalidInputError(`${WORKER_ENV.inputPrefix}${k.toUpperCase()} is not JSON`, {
        field: `${WORKER_ENV.inputPrefix}${k.toUpperCase()}`,
      });
    }
  }
  return { task: task as TaskName, input };
}
