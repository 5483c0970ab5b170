/**
 * What an execution's loops cost in Step Functions history, and when the catch-up goes on in a new
 * execution instead ("continue as new", AWS's own advice for long loops). No I/O.
 *
 * Step Functions fails an execution whose history reaches SFN_HISTORY_EVENT_LIMIT events. The loops
 * of the definition are the only unbounded part: "Wait for the next lag sample" → "Check lag" →
 * "Caught up?" once a sample (a catch-up without a timeout samples for as long as the lag needs), and
 * the approval wait, one window at a time (bounded by its deadline). The samples are counted
 * execution-wide in `$.gate.samples` ("Begin catch-up" keeps the count when a drain over budget or a
 * verify sends the workflow back to catch-up); past `samplesPerExecution` "Caught up?" goes to
 * "Continue in a new execution".
 */
import { APPROVAL_DEADLINE_SECONDS, APPROVAL_WINDOW_SECONDS, SFN_HISTORY_EVENT_LIMIT } from '../approval-wait';

/**
 * What the loops of one execution may spend together (the catch-up samples and one whole approval
 * wait). The rest of the limit is for everything else an execution runs once or a few times (the load,
 * verify, cutover attempts, retries, the failure paths): test/approval-wait.test.ts derives that worst
 * case from the definition and checks it fits.
 */
export const HISTORY_EVENT_BUDGET = 20_000;

/** One state of a definition, as far as its history cost goes. */
export interface HistoryCostState {
  Type: string;
  Resource?: unknown;
}

/**
 * History events a state adds each time it is entered, without retries: entered and exited (2), a Task
 * also scheduled, started and succeeded (5), a callback Task (`.waitForTaskToken`) also submitted (6).
 */
export function historyEventsOf(state: HistoryCostState): number {
  if (state.Type !== 'Task') return 2;
  return String(state.Resource).endsWith('.waitForTaskToken') ? 6 : 5;
}

/** Events a failed attempt adds before its retry (failed, scheduled, started). */
export const RETRY_EVENTS = 3;

export interface HistoryBudgetInput {
  /** The states of one catch-up sample ("Wait for the next lag sample", "Check lag", "Caught up?"). */
  sample: HistoryCostState[];
  /** The states of one approval window (the renewal re-enters "Await cutover approval"). */
  window: HistoryCostState[];
  windowSeconds?: number;
  deadlineSeconds?: number;
  budget?: number;
}

/** The figures the definition is built with (see `historyBudget`). */
export interface HistoryBudget {
  eventsPerSample: number;
  eventsPerWindow: number;
  /** A whole approval wait: every window until the deadline. At most one per execution ("Cutover approved" sets `approved`). */
  approvalWaitEvents: number;
  /** Samples one execution takes, over all its catch-ups, before it continues in a new one. */
  samplesPerExecution: number;
}

export function historyBudget(input: HistoryBudgetInput): HistoryBudget {
  const sum = (states: HistoryCostState[]) => states.reduce((n, s) => n + historyEventsOf(s), 0);
  const eventsPerSample = sum(input.sample);
  const eventsPerWindow = sum(input.window);
  const windows = Math.ceil(
    (input.deadlineSeconds ?? APPROVAL_DEADLINE_SECONDS) / (input.windowSeconds ?? APPROVAL_WINDOW_SECONDS),
  );
  const approvalWaitEvents = windows * eventsPerWindow;
  const budget = input.budget ?? HISTORY_EVENT_BUDGET;
  if (budget >= SFN_HISTORY_EVENT_LIMIT)
    throw new Error(
      `a history budget of ${budget} events leaves nothing of the ${SFN_HISTORY_EVENT_LIMIT}-event limit for the rest of an execution`,
    );
  return {
    eventsPerSample,
    eventsPerWindow,
    approvalWaitEvents,
    // At least one sample (an approval wait shortened by a test may take the whole budget; the deployed
    // definition's figures are checked by test/approval-wait.test.ts).
    samplesPerExecution: Math.max(1, Math.floor((budget - approvalWaitEvents) / eventsPerSample)),
  };
}

/**
 * The name of the `n`-th execution that continues migration `id` (n ≥ 1; the first is named `id`).
 * Deterministic: a retried StartExecution with the same name and input is idempotent in Step Functions
 * while that execution runs, so a retry never starts a second one.
 */
export function continuedExecutionName(migrationId: string, n: number): string {
  return CONTINUED_NAME_FORMAT.replace('{}', migrationId).replace('{}', String(n));
}

/** `States.Format` template of that name (the definition's "Continue in a new execution" uses it). */
export const CONTINUED_NAME_FORMAT = '{}-continued-{}';

/**
 * The name of the execution that resumes migration `id` as its `n`-th (n ≥ 1): `pgferry start --id`
 * (or Slack's `/pgferry resume`) after a resumable stop, numbered on from the last execution.
 */
export function resumedExecutionName(migrationId: string, n: number): string {
  return `${migrationId}-resumed-${n}`;
}

/**
 * How an execution of a migration began, read from its name (a migration id has no `-`): the first,
 * one that continued the catch-up of the one before it, or one that resumed the migration after a stop.
 */
export function executionOrigin(name: string): 'first' | 'continued' | 'resumed' {
  if (/-continued-\d+$/.test(name)) return 'continued';
  if (/-resumed-\d+$/.test(name)) return 'resumed';
  return 'first';
}

/** The execution as status names it: `named <name>`, and for a later one how it began and its number. */
export function executionWords(e: { name: string; number: number }): string {
  const origin = e.number > 0 ? executionOrigin(e.name) : 'first';
  return origin === 'first' ? `named ${e.name}` : `named ${e.name}: ${origin} in execution ${e.number}`;
}

/**
 * What "Record failure" is given when the next execution could not be started (no permission, a name
 * taken): nothing is wrong with the migration, so it is a resumable stop (failure.ts).
 */
export const CONTINUATION_FAILED_ERROR = 'ContinuationFailedError';

/** What a continued execution carries on from the one before it (its input's `continued`). */
export interface ContinuedFrom {
  /** The gate as the last sample left it, its sample count back at 0 (a new history). */
  gate: { ready: boolean; streak: number; waitSeconds: number; memory: unknown; samples: number };
  verify: { done: boolean; rounds: number; outcome?: unknown };
  cutoverAttempt: { count: number };
}
