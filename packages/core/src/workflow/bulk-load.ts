/**
 * The bulk load scaled out over N workers, as data (no I/O): how the copy is split into shares, what
 * the state machine reads of the plan, and the ASL sub-graph that runs it.
 *
 *   Bulk load (Parallel)
 *   ├─ Hold snapshot: the coordinator creates the slot, exports its snapshot, records the plan and
 *   │  keeps the exporting session open until every share has reported (then indexes, constraints…)
 *   └─ Wait for the copy plan ↔ Read the copy plan → Copy tables (Map over the shares:
 *      "Copy a share of the tables", each worker inside the coordinator's snapshot)
 *      or, strategy dump through S3, → Wait for the dump upload (the S3 event completes it)
 */
import type { CopyPlan, MigrationState } from '../model';
import { BUSY_RETRY, catchFor, lambdaTaskState, runTaskParameters, substitution, WORKER_ENV } from './states';
import { functionArnKey, type TaskName, WORKFLOW_TASKS } from './tasks';

/** Seconds between two reads of the plan while the coordinator creates the slot and plans. */
export const PLAN_POLL_SECONDS = 5;
/** A worker that sends no heartbeat for this long is taken for dead (the worker sends one every HEARTBEAT_SECONDS). */
export const WORKER_HEARTBEAT_TIMEOUT_SECONDS = 300;
export const HEARTBEAT_SECONDS = 60;
/** The longest a bulk load may take (a Fargate task is not bounded by Lambda's 15 minutes): 7 days. */
export const BULK_LOAD_TIMEOUT_SECONDS = 7 * 24 * 3600;

/**
 * Splits copy items into `n` shares of about equal bytes: largest first, each to the share with the
 * fewest bytes so far (within 4/3 of the best split). Item order within a share stays largest first.
 */
export function splitIntoShares<T extends { estBytes: number }>(items: T[], n: number): T[][] {
  const count = Math.max(1, Math.min(Math.floor(n), items.length || 1));
  const shares: { items: T[]; bytes: number }[] = Array.from({ length: count }, () => ({ items: [], bytes: 0 }));
  for (const item of [...items].sort((a, b) => b.estBytes - a.estBytes)) {
    let least = shares[0]!;
    for (const s of shares) if (s.bytes < least.bytes) least = s;
    least.items.push(item);
    least.bytes += item.estBytes;
  }
  return shares.map((s) => s.items);
}

/** One iteration of the Map: which share a worker copies, in which attempt's plan. */
export interface ShareInput {
  migrationId: string;
  loadId: string;
  share: number;
}

/** What "Read the copy plan" returns: the Map's items once the coordinator has recorded the plan. */
export interface CopyPlanStatus {
  ready: boolean;
  /** A share already failed: the load is ending (the coordinator drops its slot). */
  failed: boolean;
  /** The coordinator dumps into S3 and restores once the object's event came: wait for that event. */
  dumpUpload: boolean;
  workers: number;
  shares: ShareInput[];
  summary: string;
}

/** The plan of attempt `loadId` as the state machine sees it; an earlier attempt's plan is "not ready". */
export function copyPlanStatus(state: Pick<MigrationState, 'id' | 'copyPlan'>, loadId: string): CopyPlanStatus {
  const plan: CopyPlan | undefined = state.copyPlan;
  if (!plan || plan.loadId !== loadId)
    return {
      ready: false,
      failed: false,
      dumpUpload: false,
      workers: 0,
      shares: [],
      summary: 'the coordinator is still planning',
    };
  const failed = plan.shares.some((s) => s.failedAt);
  if (plan.dumpUpload)
    return {
      ready: true,
      failed,
      dumpUpload: true,
      workers: 1,
      shares: [],
      summary: `the coordinator dumps into S3 in snapshot ${plan.snapshot}; waiting for the object's event`,
    };
  const shares = plan.inProcess ? [] : plan.shares.map((_, share) => ({ migrationId: state.id, loadId, share }));
  const bytes = plan.shares.reduce((sum, s) => sum + s.estBytes, 0);
  return {
    ready: true,
    failed,
    dumpUpload: false,
    // The Map's MaxConcurrency: every share must run while the coordinator holds the snapshot.
    workers: Math.max(1, shares.length),
    shares,
    summary: shares.length
      ? `${shares.length} share(s) of ${(bytes / 1024 ** 2).toFixed(1)} MiB to copy in snapshot ${plan.snapshot}`
      : 'nothing for the workers to copy (the coordinator loads this one itself)',
  };
}

/** A worker task: ECS RunTask on Fargate, completed by the worker through the task token. */
function workerTask(task: TaskName, environment: Record<string, string>, extra: object): object {
  return {
    Type: 'Task',
    Comment: `runs "pgferry worker" (${task}) on Fargate; the worker completes the task token and sends heartbeats`,
    Resource: 'arn:aws:states:::ecs:runTask.waitForTaskToken',
    Parameters: runTaskParameters([
      { Name: WORKER_ENV.task, Value: task },
      { Name: WORKER_ENV.taskToken, 'Value.$': '$$.Task.Token' },
      ...Object.entries(environment).map(([name, path]) => ({ Name: name, 'Value.$': path })),
    ]),
    HeartbeatSeconds: WORKER_HEARTBEAT_TIMEOUT_SECONDS,
    TimeoutSeconds: BULK_LOAD_TIMEOUT_SECONDS,
    ...extra,
  };
}

/** Names of the sub-graph's states, for a person reading the console (the tasks' names come from the task table). */
export const BULK_LOAD_STATES = {
  load: 'Bulk load in shares',
  hold: 'Hold snapshot',
  wait: 'Wait for the copy plan',
  read: WORKFLOW_TASKS.readCopyPlan.state,
  ready: 'Is the copy plan recorded?',
  abandoned: 'A share failed',
  copy: 'Copy tables',
  share: WORKFLOW_TASKS.copyShare.state,
  upload: WORKFLOW_TASKS.awaitDumpUpload.state,
} as const;

/**
 * The bulk load's states: a Parallel whose branches are the coordinator ("Hold snapshot") and a short
 * poll until the plan is recorded followed by a Map of share workers ("Copy tables"). Any failure
 * (a worker's SendTaskFailure, a missed heartbeat, a timeout) goes to `onError` with the error in
 * `$.error`; success goes to `next` with the coordinator's summary in `$.bulkLoad`. Substitutions:
 * WORKER_SUBSTITUTIONS and the read-plan Lambda's `${ReadCopyPlanFunctionArn}`.
 */
export function bulkLoadStates(next: string, onError: string): Record<string, object> {
  const n = BULK_LOAD_STATES;
  const coordinator = {
    StartAt: n.hold,
    States: {
      [n.hold]: workerTask(
        'bulkLoad',
        { [WORKER_ENV.migrationId]: '$.migrationId', [WORKER_ENV.loadId]: '$.loadId' },
        // The coordinator holds the migration's lease for the load (lease.ts); the shares take none.
        { Retry: [BUSY_RETRY], End: true },
      ),
    },
  };
  const shares = {
    StartAt: n.wait,
    States: {
      [n.wait]: { Type: 'Wait', Seconds: PLAN_POLL_SECONDS, Next: n.read },
      [n.read]: {
        Type: 'Task',
        Comment: 'reads the coordinator plan from the migration state (no database connection)',
        Resource: 'arn:aws:states:::lambda:invoke',
        Parameters: {
          FunctionName: substitution(functionArnKey('readCopyPlan')),
          Payload: { 'migrationId.$': '$.migrationId', task: 'readCopyPlan', 'loadId.$': '$.loadId' },
        },
        ResultSelector: {
          'ready.$': '$.Payload.ready',
          'failed.$': '$.Payload.failed',
          'dumpUpload.$': '$.Payload.dumpUpload',
          'workers.$': '$.Payload.workers',
          'shares.$': '$.Payload.shares',
          'summary.$': '$.Payload.summary',
        },
        ResultPath: '$.plan',
        Retry: [
          {
            ErrorEquals: ['Lambda.ServiceException', 'Lambda.TooManyRequestsException', 'StateConflictError'],
            IntervalSeconds: 2,
            MaxAttempts: 3,
            BackoffRate: 2,
          },
        ],
        Next: n.ready,
      },
      [n.ready]: {
        Type: 'Choice',
        Choices: [
          { Variable: '$.plan.failed', BooleanEquals: true, Next: n.abandoned },
          { Variable: '$.plan.dumpUpload', BooleanEquals: true, Next: n.upload },
          { Variable: '$.plan.ready', BooleanEquals: true, Next: n.copy },
        ],
        Default: n.wait,
      },
      [n.abandoned]: {
        Type: 'Fail',
        Error: 'BulkLoadFailedError',
        Cause: 'a share of the copy failed; the coordinator ends the load and drops its slot',
      },
      [n.copy]: {
        Type: 'Map',
        ItemsPath: '$.plan.shares',
        MaxConcurrencyPath: '$.plan.workers',
        ItemProcessor: {
          ProcessorConfig: { Mode: 'INLINE' },
          StartAt: n.share,
          States: {
            [n.share]: workerTask(
              'copyShare',
              {
                [WORKER_ENV.migrationId]: '$.migrationId',
                [WORKER_ENV.loadId]: '$.loadId',
                [WORKER_ENV.share]: "States.Format('{}', $.share)",
              },
              { End: true },
            ),
          },
        },
        ResultPath: null,
        End: true,
      },
      // A failure (the object refused, no event before the timeout) fails the branch, so the Parallel.
      [n.upload]: lambdaTaskState('awaitDumpUpload', { end: true }),
    },
  };
  return {
    [n.load]: {
      Type: 'Parallel',
      Comment: 'the coordinator holds the exported snapshot while the workers copy their shares inside it',
      // One attempt's name: a share or a poll never takes an earlier attempt's plan for this one.
      Parameters: {
        'migrationId.$': '$.migrationId',
        'loadId.$': "States.Format('{}@{}', $$.Execution.Name, $$.State.EnteredTime)",
      },
      Branches: [coordinator, shares],
      ResultSelector: { 'summary.$': '$[0].summary' },
      ResultPath: '$.bulkLoad',
      // As every task: resumable errors (a server away for a while) are recorded, the rest undone.
      Catch: catchFor('bulkLoad', onError),
      Next: next,
    },
  };
}
