/**
 * The workflow as an Amazon States Language definition, built from the task table (tasks.ts) and the
 * failure policy (failure.ts). No I/O. The stack deploys exactly `workflowDefinitionJson()` with
 * `DefinitionBody.fromString` and `definitionSubstitutions` (function ARNs, the worker's cluster,
 * task definition, container, subnets and security groups); `pgferry` runs the same text locally.
 */
import { APPROVAL_DEADLINE_SECONDS, APPROVAL_WINDOW_SECONDS } from '../approval-wait';
import { DEFAULTS } from '../config';
import { BULK_LOAD_STATES, bulkLoadStates } from './bulk-load';
import { CUTOVER_REJECTED_ERROR } from './failure';
import {
  CONTINUATION_FAILED_ERROR,
  CONTINUED_NAME_FORMAT,
  type ContinuedFrom,
  type HistoryCostState,
  historyBudget,
} from './history';
import { catchFor, lambdaTaskState, RECORD_FAILURE, ROLL_BACK, taskState, workerTaskState } from './states';
import { WORKFLOW_TASKS } from './tasks';

/** What an execution is started with. Only the migration id names data: credentials stay in the store. */
export interface WorkflowInput {
  migrationId: string;
  /** `migrate` runs the migration (skipping what is done); `rollback` goes straight to "Roll back". */
  action: 'migrate' | 'rollback';
  /** `manual` waits at "Await cutover approval" once caught up; `auto` cuts over. */
  cutover: 'auto' | 'manual';
  /** The cutover was approved already (a later execution started by `pgferry cutover`). */
  approved: boolean;
  /** Create (or adopt and check) the plan's RDS target first ("Provision target"); false locally, where --target names it. */
  provisionTarget: boolean;
  /** Run "Clean up" after the bake (in AWS); locally clean-up is the separate `pgferry cleanup`. */
  cleanup: boolean;
  /** The bake before clean-up, in seconds. */
  bakeSeconds: number;
  /** Fargate workers the snapshot copy is split over (the config's copyWorkers); 1 locally. */
  copyWorkers: number;
  /** 0 for a migration's first execution; n for the n-th that continued it ("Continue in a new execution"). */
  execution: number;
  /** What a continued execution carries on with (null for a first execution): it goes straight back to catch-up. */
  continued: ContinuedFrom | null;
}

/** The gate's figures between two "Check lag" samples (see packages/postgres/src/tasks). */
export interface GateState {
  /** The gate has been open for the configured number of samples in a row. */
  ready: boolean;
  streak: number;
  /** The wait before the next sample ("Wait for the next lag sample"). */
  waitSeconds: number;
  /** What the next sample needs from this one (lag readings, the last catalog check, when catch-up began). */
  memory?: unknown;
  /** Samples this execution has taken, over all its catch-ups (see workflow/history.ts). */
  samples?: number;
  /** Work the load left on the target that this sample could not run itself: "Finish the load on the target" runs it. */
  finishLoad?: boolean | null;
}

export const STATE = {
  start: 'Start',
  whatToDo: 'Migrate or roll back?',
  whereFrom: 'Where does the migration stand?',
  needsTarget: 'Target to provision?',
  scaleOut: 'Copy with more than one worker?',
  loadBy: 'Load with DMS?',
  beginCatchUp: 'Begin catch-up',
  waitSample: 'Wait for the next lag sample',
  caughtUp: 'Caught up?',
  beginApprovalWait: 'Begin the approval wait',
  approved: 'Cutover approved',
  drainAgain: 'Cutover attempts left?',
  countAttempt: 'Count the cutover attempt',
  cleanupAsked: 'Clean up requested?',
  bake: 'Bake',
  cleanupHeld: 'Clean-up held: verify was not ok',
  migrated: 'Migrated',
  afterRollback: 'Rolled back on request or after a failure?',
  rolledBack: 'Rolled back',
  afterRecord: 'Undo needed?',
  stopped: 'Stopped (resumable)',
  failed: 'Failed',
  rollbackFailed: 'Rollback failed',
  continueCatchUp: 'Continue the catch-up',
  continueAsNew: 'Continue in a new execution',
  continuationFailed: 'Could not continue in a new execution',
  continued: 'Continued in a new execution',
} as const;

const T = WORKFLOW_TASKS;

/** A fresh gate for a new catch-up: not ready, sample at once. */
const FRESH_GATE = { ready: false, streak: 0, waitSeconds: 0 };

/** Input fields the execution carries as they came, and hands on to an execution that continues it. */
const CARRIED = [
  'migrationId',
  'action',
  'cutover',
  'approved',
  'provisionTarget',
  'cleanup',
  'bakeSeconds',
  'copyWorkers',
  'execution',
  'continued',
] as const satisfies readonly (keyof WorkflowInput)[];

const carried = (from: string, except: readonly string[] = []) =>
  Object.fromEntries(CARRIED.filter((k) => !except.includes(k)).map((k) => [`${k}.$`, `${from}.${k}`]));

/** What the definition is built with; the defaults are what the stack deploys and `workflow print` prints. */
export interface WorkflowDefinitionOptions {
  /** One window of the approval wait (see APPROVAL_WINDOW_SECONDS): tests shorten it. */
  approvalWindowSeconds?: number;
  /** The approval deadline, counted from when the wait began. */
  approvalDeadlineSeconds?: number;
  /** Tests only: samples an execution takes before it continues in a new one, instead of the budget's figure. */
  samplesPerExecution?: number;
}

export function workflowDefinition(options: WorkflowDefinitionOptions = {}): object {
  const windowSeconds = options.approvalWindowSeconds ?? APPROVAL_WINDOW_SECONDS;
  const deadlineSeconds = options.approvalDeadlineSeconds ?? APPROVAL_DEADLINE_SECONDS;
  // Filled in once the states exist: the loops' cost is read from the very states they are made of.
  const continueAfter = { Variable: '$.gate.samples', NumericGreaterThanEquals: 0 };
  const states: Record<string, object> = {
    [STATE.start]: {
      Type: 'Pass',
      Comment: 'What the execution carries: the migration id and its choices, never a credential',
      Parameters: {
        ...carried('$'),
        results: {},
        gate: { ...FRESH_GATE, samples: 0 },
        verify: { done: false, rounds: 0 },
        cutoverAttempt: { count: 1 },
        error: null,
      },
      Next: STATE.whatToDo,
    },
    [STATE.whatToDo]: {
      Type: 'Choice',
      Choices: [{ Variable: '$.action', StringEquals: 'rollback', Next: ROLL_BACK }],
      Default: T.assess.state,
    },
    [T.assess.state]: taskState('assess', { next: STATE.whereFrom, onError: RECORD_FAILURE }),
    // A later execution of a stored migration: once the switch began it is finished, never gone back from.
    [STATE.whereFrom]: {
      Type: 'Choice',
      Choices: [
        { Variable: '$.results.assess.resumeAt', StringEquals: 'cutover', Next: T.cutover.state },
        { Variable: '$.results.assess.resumeAt', StringEquals: 'verify', Next: T.verify.state },
        // An execution that continues another: the load is done, back to its catch-up at once.
        { Not: { Variable: '$.continued', IsNull: true }, Next: STATE.continueCatchUp },
      ],
      Default: STATE.needsTarget,
    },
    [STATE.continueCatchUp]: {
      Type: 'Pass',
      Comment: 'The gate, the verify rounds and the cutover attempts as the execution before this one left them',
      Parameters: {
        ...carried('$'),
        'results.$': '$.results',
        'gate.$': '$.continued.gate',
        'verify.$': '$.continued.verify',
        'cutoverAttempt.$': '$.continued.cutoverAttempt',
        error: null,
      },
      Next: STATE.waitSample,
    },
    [STATE.needsTarget]: {
      Type: 'Choice',
      Choices: [{ Variable: '$.provisionTarget', BooleanEquals: true, Next: T.provisionTarget.state }],
      Default: T.prepareSchema.state,
    },
    [T.provisionTarget.state]: taskState('provisionTarget', { next: T.prepareSchema.state, onError: ROLL_BACK }),
    [T.prepareSchema.state]: taskState('prepareSchema', { next: STATE.loadBy, onError: ROLL_BACK }),
    // Strategy dms: an AWS DMS task loads and then captures changes instead of the copy and the subscription.
    [STATE.loadBy]: {
      Type: 'Choice',
      Choices: [{ Variable: '$.results.assess.strategy', StringEquals: 'dms', Next: T.startDms.state }],
      Default: STATE.scaleOut,
    },
    [T.startDms.state]: taskState('startDms', { next: T.awaitDmsFullLoad.state, onError: ROLL_BACK }),
    [T.awaitDmsFullLoad.state]: taskState('awaitDmsFullLoad', { next: T.startReplication.state, onError: ROLL_BACK }),
    // One worker copies a source it is big enough for (and the CLI always: copyWorkers 1); beyond
    // that, the coordinator holds the snapshot while a Map of workers copies its shares inside it.
    // The dump strategy always goes that way: in AWS the branch beside the coordinator waits for the
    // dump's S3 event ("Wait for the dump upload"); locally, with a file, it has nothing to wait for.
    [STATE.scaleOut]: {
      Type: 'Choice',
      Choices: [
        { Variable: '$.results.assess.strategy', StringEquals: 'dump', Next: BULK_LOAD_STATES.load },
        {
          And: [
            { Variable: '$.copyWorkers', IsPresent: true },
            { Variable: '$.copyWorkers', NumericGreaterThan: 1 },
          ],
          Next: BULK_LOAD_STATES.load,
        },
      ],
      Default: T.bulkLoad.state,
    },
    [T.bulkLoad.state]: taskState('bulkLoad', { next: T.startReplication.state, onError: ROLL_BACK }),
    ...bulkLoadStates(T.startReplication.state, ROLL_BACK),
    [T.startReplication.state]: taskState('startReplication', { next: STATE.beginCatchUp, onError: ROLL_BACK }),

    // Catch-up: one gate sample per "Check lag"; the streak and what the gate compares across samples
    // travel in $.gate, so each invocation is short and the loop survives a Lambda's lifetime.
    [STATE.beginCatchUp]: {
      Type: 'Pass',
      Comment:
        'A new streak: after the load, after a verify (its reads took a while), after a drain over budget; the execution keeps counting its samples',
      Parameters: { ...FRESH_GATE, 'samples.$': '$.gate.samples' },
      ResultPath: '$.gate',
      Next: STATE.waitSample,
    },
    [STATE.waitSample]: { Type: 'Wait', SecondsPath: '$.gate.waitSeconds', Next: T.checkLag.state },
    [T.checkLag.state]: taskState('checkLag', { next: STATE.caughtUp, onError: ROLL_BACK }),
    [STATE.caughtUp]: {
      Type: 'Choice',
      Choices: [
        // Before the history limit comes near (workflow/history.ts): the catch-up goes on in a new execution.
        {
          And: [
            { Variable: '$.gate.samples', IsPresent: true },
            { Variable: '$.gate.samples', IsNumeric: true },
            continueAfter,
          ],
          Next: STATE.continueAsNew,
        },
        // Work the load left to the target that "Check lag" could not run itself (no session between
        // Lambda invocations): the worker runs it to the end, then a new streak.
        {
          And: [
            { Variable: '$.gate.finishLoad', IsPresent: true },
            { Variable: '$.gate.finishLoad', IsBoolean: true },
            { Variable: '$.gate.finishLoad', BooleanEquals: true },
          ],
          Next: T.finishLoad.state,
        },
        { Variable: '$.gate.ready', BooleanEquals: false, Next: STATE.waitSample },
        {
          And: [
            { Variable: '$.cutover', StringEquals: 'manual' },
            { Variable: '$.approved', BooleanEquals: false },
          ],
          Next: STATE.beginApprovalWait,
        },
        // Verify before the switch waits for pgferry's own slot, which the DMS path has not: only the
        // verify after the switch (over native reverse replication) runs there.
        {
          And: [
            { Variable: '$.verify.done', BooleanEquals: false },
            { Not: { Variable: '$.results.assess.strategy', StringEquals: 'dms' } },
          ],
          Next: T.verifyBeforeSwitch.state,
        },
      ],
      Default: T.cutover.state,
    },
    // The wait for a person, one window at a time: on each window's timeout the state is entered again,
    // with a new token, and its task samples the lag once (so what the approver reads is minutes old,
    // not as old as the gate's opening) and ends the wait past the deadline (ApprovalTimeoutError).
    [STATE.beginApprovalWait]: {
      Type: 'Pass',
      Comment: `The approval wait: windows of ${windowSeconds} s, ended unanswered after ${deadlineSeconds} s`,
      Parameters: { 'since.$': '$$.State.EnteredTime', windowSeconds, deadlineSeconds },
      ResultPath: '$.approvalWait',
      Next: T.awaitApproval.state,
    },
    [T.awaitApproval.state]: taskState('awaitApproval', {
      next: STATE.approved,
      timeoutSeconds: windowSeconds,
      catch: [
        { ErrorEquals: ['States.Timeout'], ResultPath: '$.approvalWait.renewed', Next: T.awaitApproval.state },
        ...catchFor('awaitApproval', ROLL_BACK),
      ],
    }),
    [STATE.approved]: {
      Type: 'Pass',
      Result: true,
      ResultPath: '$.approved',
      Next: STATE.beginCatchUp,
    },
    [STATE.continueAsNew]: {
      Type: 'Task',
      Comment:
        'Starts this state machine again for the migration, from its catch-up. The name is fixed by the migration id and the execution number: Step Functions takes a retried StartExecution with the same name and input as the same request (idempotent while that execution runs), so a retry never starts a second execution',
      Resource: 'arn:aws:states:::states:startExecution',
      Parameters: {
        'StateMachineArn.$': '$$.StateMachine.Id',
        'Name.$': `States.Format('${CONTINUED_NAME_FORMAT}', $.migrationId, States.MathAdd($.execution, 1))`,
        Input: {
          ...carried('$', ['execution', 'continued']),
          'execution.$': 'States.MathAdd($.execution, 1)',
          continued: {
            gate: {
              'ready.$': '$.gate.ready',
              'streak.$': '$.gate.streak',
              'waitSeconds.$': '$.gate.waitSeconds',
              'memory.$': '$.gate.memory',
              samples: 0,
            },
            'verify.$': '$.verify',
            'cutoverAttempt.$': '$.cutoverAttempt',
          },
          // Links the two executions in the console.
          'AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID.$': '$$.Execution.Id',
        },
      },
      ResultSelector: { 'executionArn.$': '$.ExecutionArn' },
      ResultPath: '$.continuedIn',
      // StartExecution answers at once (the new execution runs on its own).
      TimeoutSeconds: 60,
      // Any failure is tried again: the same name and input make a repeated start harmless.
      Retry: [
        {
          ErrorEquals: ['States.ALL'],
          IntervalSeconds: 2,
          MaxAttempts: 5,
          BackoffRate: 2,
          JitterStrategy: 'FULL',
        },
      ],
      Catch: [{ ErrorEquals: ['States.ALL'], ResultPath: '$.continuationError', Next: STATE.continuationFailed }],
      Next: STATE.continued,
    },
    // Nothing went wrong with the migration: a resumable stop, replication going on.
    [STATE.continuationFailed]: {
      Type: 'Pass',
      Parameters: { Error: CONTINUATION_FAILED_ERROR, 'Cause.$': 'States.JsonToString($.continuationError)' },
      ResultPath: '$.error',
      Next: RECORD_FAILURE,
    },
    [STATE.continued]: {
      Type: 'Succeed',
      Comment: 'The migration goes on in the execution named after it with the next number (-continued-N)',
    },
    [T.finishLoad.state]: workerTaskState('finishLoad', { next: STATE.beginCatchUp, onError: ROLL_BACK }),
    [T.verifyBeforeSwitch.state]: workerTaskState('verifyBeforeSwitch', {
      next: STATE.beginCatchUp,
      onError: ROLL_BACK,
    }),
    [T.cutover.state]: lambdaTaskState('cutover', {
      next: T.verify.state,
      catch: [
        // The drain would not fit its budget (or prepared transactions did not end): the source was
        // unfrozen; catch up again and try, up to DEFAULTS.cutoverAttempts times.
        {
          ErrorEquals: ['DrainTimeoutError', 'PreparedTransactionsPendingError'],
          ResultPath: '$.error',
          Next: STATE.drainAgain,
        },
        ...catchFor('cutover', ROLL_BACK),
      ],
    }),
    [STATE.drainAgain]: {
      Type: 'Choice',
      Choices: [
        { Variable: '$.cutoverAttempt.count', NumericLessThan: DEFAULTS.cutoverAttempts, Next: STATE.countAttempt },
      ],
      Default: RECORD_FAILURE,
    },
    [STATE.countAttempt]: {
      Type: 'Pass',
      Parameters: { 'count.$': 'States.MathAdd($.cutoverAttempt.count, 1)' },
      ResultPath: '$.cutoverAttempt',
      Next: STATE.beginCatchUp,
    },
    [T.verify.state]: taskState('verify', { next: STATE.cleanupAsked, onError: RECORD_FAILURE }),
    // Clean-up ends the way back: only after a verify that found the two sides equal. Any other
    // outcome (a mismatch, reverse replication behind) keeps everything for a person to decide.
    [STATE.cleanupAsked]: {
      Type: 'Choice',
      Choices: [
        {
          And: [
            { Variable: '$.cleanup', BooleanEquals: true },
            { Variable: '$.results.verify.outcome', IsPresent: true },
            { Variable: '$.results.verify.outcome', IsString: true },
            { Variable: '$.results.verify.outcome', StringEquals: 'ok' },
          ],
          Next: STATE.bake,
        },
        { Variable: '$.cleanup', BooleanEquals: true, Next: STATE.cleanupHeld },
      ],
      Default: STATE.migrated,
    },
    [STATE.cleanupHeld]: {
      Type: 'Pass',
      Comment:
        'Verify after the switch was not ok: no bake and no clean-up, the reverse replication and every object kept; pgferry status says what verify found',
      Next: STATE.migrated,
    },
    [STATE.bake]: {
      Type: 'Wait',
      Comment: 'The application runs on the target, reverse replication keeping the source current, before clean-up',
      SecondsPath: '$.bakeSeconds',
      Next: T.cleanup.state,
    },
    [T.cleanup.state]: taskState('cleanup', { next: STATE.migrated, onError: RECORD_FAILURE }),
    [STATE.migrated]: { Type: 'Succeed' },

    // Failure paths. "Roll back" and "Record failure" both apply the failure policy again with the
    // stored state, so a route taken on the error's name alone never undoes more than it may.
    [ROLL_BACK]: lambdaTaskState('rollback', {
      next: STATE.afterRollback,
      catch: [{ ErrorEquals: ['States.ALL'], ResultPath: '$.rollbackError', Next: STATE.rollbackFailed }],
    }),
    [STATE.afterRollback]: {
      Type: 'Choice',
      Choices: [
        { Variable: '$.error', IsNull: true, Next: STATE.rolledBack },
        // A rollback someone asked for at the gate (the approval failed with CutoverRejectedError).
        {
          And: [
            { Variable: '$.error.Error', IsPresent: true },
            { Variable: '$.error.Error', StringEquals: CUTOVER_REJECTED_ERROR },
            { Variable: '$.results.rollback.action', StringEquals: 'roll-back' },
          ],
          Next: STATE.rolledBack,
        },
        { Variable: '$.results.rollback.action', StringEquals: 'roll-back', Next: STATE.failed },
        { Variable: '$.results.rollback.action', StringEquals: 'fail', Next: STATE.failed },
      ],
      Default: STATE.stopped,
    },
    [STATE.rolledBack]: { Type: 'Succeed' },
    [RECORD_FAILURE]: lambdaTaskState('recordFailure', {
      next: STATE.afterRecord,
      catch: [{ ErrorEquals: ['States.ALL'], ResultPath: '$.recordError', Next: STATE.failed }],
    }),
    [STATE.afterRecord]: {
      Type: 'Choice',
      Choices: [
        { Variable: '$.failure.action', StringEquals: 'roll-back', Next: ROLL_BACK },
        { Variable: '$.failure.action', StringEquals: 'fail', Next: STATE.failed },
      ],
      Default: STATE.stopped,
    },
    [STATE.stopped]: {
      Type: 'Fail',
      Comment: 'Nothing undone: the migration is kept as it was (resume goes on, rollback removes it)',
      ErrorPath: '$.error.Error',
      CausePath: '$.error.Cause',
    },
    [STATE.failed]: {
      Type: 'Fail',
      Comment:
        'The migration failed; what it had built on the source was rolled back (nothing, if it failed at the assessment)',
      ErrorPath: '$.error.Error',
      CausePath: '$.error.Cause',
    },
    [STATE.rollbackFailed]: {
      Type: 'Fail',
      Comment: 'The rollback did not finish: `pgferry status` names what is left and the command that ends it',
      ErrorPath: '$.rollbackError.Error',
      CausePath: '$.rollbackError.Cause',
    },
  };
  const cost = (name: string) => states[name] as HistoryCostState;
  continueAfter.NumericGreaterThanEquals =
    options.samplesPerExecution ??
    historyBudget({
      sample: [cost(STATE.waitSample), cost(T.checkLag.state), cost(STATE.caughtUp)],
      window: [cost(T.awaitApproval.state)],
      windowSeconds,
      deadlineSeconds,
    }).samplesPerExecution;
  return {
    Comment: 'pgferry: move a live PostgreSQL database onto Amazon RDS with zero downtime',
    StartAt: STATE.start,
    States: states,
  };
}

/** The definition as deployed and printed: stable key order, pretty-printed. */
export function workflowDefinitionJson(options: WorkflowDefinitionOptions = {}): string {
  return JSON.stringify(workflowDefinition(options), null, 2);
}
