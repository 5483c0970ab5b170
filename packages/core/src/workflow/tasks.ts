/**
 * The workflow's tasks: what the state machine calls, where each runs in AWS, and the names the
 * deployed definition substitutes. The Step Functions definition (workflow/definition.ts), the stack
 * (one Lambda per Lambda task, the worker for the others) and the local runtime all read this table.
 */

/** Where a task runs in AWS: a Lambda invocation, or the Fargate worker (long tasks, pg_dump/pg_restore, snapshots). */
export type TaskRuntime = 'lambda' | 'worker';

export interface TaskSpec {
  /** The state's name in the Step Functions console. */
  state: string;
  runtime: TaskRuntime;
  /** The state waits on a task token (`.waitForTaskToken`) that an event, a person or the worker completes. */
  callback?: boolean;
  /**
   * Runs inside the bulk load, beside its coordinator ("Hold snapshot"), which holds the migration's
   * lease for the whole load: takes none itself (lease.ts).
   */
  insideLoad?: boolean;
}

export const WORKFLOW_TASKS = {
  assess: { state: 'Assess source', runtime: 'lambda' },
  provisionTarget: { state: 'Provision target', runtime: 'lambda', callback: true },
  prepareSchema: { state: 'Prepare schema', runtime: 'worker', callback: true },
  bulkLoad: { state: 'Bulk load', runtime: 'worker', callback: true },
  copyShare: { state: 'Copy a share of the tables', runtime: 'worker', callback: true, insideLoad: true },
  /** The bulk load's poll until the coordinator has recorded the copy plan (reads the store only). */
  readCopyPlan: { state: 'Read the copy plan', runtime: 'lambda', insideLoad: true },
  /**
   * Strategy dump through S3: the S3 `Object Created` event of the coordinator's dump completes it (the
   * object read back with its digest); the coordinator restores only once it has.
   */
  awaitDumpUpload: { state: 'Wait for the dump upload', runtime: 'lambda', callback: true, insideLoad: true },
  /** Strategy dms: the endpoints and the DMS task (or Serverless config) made and started. */
  startDms: { state: 'Start the DMS task', runtime: 'lambda' },
  /** Strategy dms: the DMS task's state-change event (full load finished, failed, stopped) completes it. */
  awaitDmsFullLoad: { state: 'Wait for the DMS full load', runtime: 'lambda', callback: true },
  startReplication: { state: 'Start replication', runtime: 'lambda' },
  checkLag: { state: 'Check lag', runtime: 'lambda' },
  /**
   * The statistics and the NOT VALID foreign keys the load left to the target (a VALIDATE of a big table
   * takes hours): run to the end on the worker, which "Check lag" hands them to when no session of its
   * own can run them between samples (Lambda). Locally the execution's session runs them beside the gate.
   */
  finishLoad: { state: 'Finish the load on the target', runtime: 'worker', callback: true },
  verifyBeforeSwitch: { state: 'Verify before cutover', runtime: 'worker', callback: true },
  awaitApproval: { state: 'Await cutover approval', runtime: 'lambda', callback: true },
  cutover: { state: 'Cut over', runtime: 'lambda' },
  verify: { state: 'Verify', runtime: 'worker', callback: true },
  cleanup: { state: 'Clean up', runtime: 'lambda' },
  rollback: { state: 'Roll back', runtime: 'lambda' },
  recordFailure: { state: 'Record failure', runtime: 'lambda' },
} as const satisfies Record<string, TaskSpec>;

export type TaskName = keyof typeof WORKFLOW_TASKS;

export const TASK_NAMES = Object.keys(WORKFLOW_TASKS) as TaskName[];

/** `${AssessFunctionArn}`-style substitution key a deployed definition fills with a Lambda task's ARN. */
export function functionArnKey(task: TaskName): string {
  return `${task[0]!.toUpperCase()}${task.slice(1)}FunctionArn`;
}

/** Substitutions a deployed definition fills for the worker (ECS RunTask). */
export const WORKER_SUBSTITUTIONS = [
  'WorkerClusterArn',
  'WorkerTaskDefinitionArn',
  'WorkerContainerName',
  'WorkerSubnets',
  'WorkerSecurityGroups',
] as const;

/** What every task receives: the migration it acts on, and (callback tasks) the token to complete. */
export interface TaskInput {
  migrationId: string;
  taskToken?: string;
  [key: string]: unknown;
}

/**
 * What every task returns: a short summary for a person reading the console, plus typed figures
 * (rows, bytes, LSNs, lag, write gap). Never a secret.
 */
export interface TaskOutput {
  summary: string;
  [key: string]: unknown;
}
