/**
 * The local runtime of the state machine: the very definition the stack deploys
 * (`workflowDefinitionJson()`), run by aws-local-stepfunctions, each Task state mapped in-process to
 * one task function. Lambda tasks answer as `lambda:invoke` does (the output in `Payload`), callback
 * steps as SendTaskSuccess does (the output itself), and worker tasks get their input from the
 * container environment the definition builds, decoded as the worker decodes it.
 */
import {
  BULK_LOAD_STATES,
  completeOutput,
  TASK_NAMES,
  TASK_RESULTS,
  type TaskInput,
  type TaskName,
  type TaskOutput,
  taskInputFromEnvironment,
  WORKER_ENV,
  WORKFLOW_TASKS,
  type WorkflowDefinitionOptions,
  type WorkflowInput,
  workflowDefinitionJson,
} from '@pgferry/core';

// aws-local-stepfunctions 3 calls Promise.withResolvers (Node 22); Node 20 lacks it.
if (typeof (Promise as { withResolvers?: unknown }).withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers<T>() {
      let resolve!: (v: T | PromiseLike<T>) => void;
      let reject!: (e: unknown) => void;
      const promise = new Promise<T>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      return { promise, resolve, reject };
    },
  });
}

/** One state of an execution, as the console's execution view lists it. */
export interface HistoryEntry {
  state: string;
  type: string;
  enteredAt: string;
  leftAt?: string;
  ms?: number;
  /** The task's summary (Task states), or what the state did. */
  summary?: string;
  /** The error the state failed with (then caught, retried or ending the execution). */
  error?: string;
  retried?: number;
}

export interface ExecutionOutcome {
  status: 'succeeded' | 'failed' | 'aborted';
  /** The last state entered: where a failed or aborted execution stopped. */
  lastState?: string;
  error?: string;
  cause?: string;
  output?: unknown;
}

export type TaskHandler = (task: TaskName, input: TaskInput) => Promise<TaskOutput>;

export interface LocalExecution {
  /** Resolves when the execution ends, whichever way; never rejects on a failed execution. */
  done: Promise<ExecutionOutcome>;
  /** Stop at the current state (a callback step that waits for a person, locally). */
  abort(): void;
  /** The input `state` was last entered with (read once `done` resolves: the event log is then read whole). */
  inputOf(state: string): unknown;
}

export interface RunOptions {
  /** Every state entered and left, as it happens. */
  onHistory?(entry: HistoryEntry, event: 'entered' | 'left'): void;
  /** Wait states locally, in ms (the bake, the wait between lag samples). */
  waitMs?: Record<string, number>;
  /** Retry intervals locally, in ms. */
  retryMs?: Record<string, number>;
  /**
   * Continue a suspended execution: start at `state` with the input it was entered with (the
   * definition's own StartAt is replaced; aws-local-stepfunctions has no other way in).
   */
  startAt?: { state: string; input: unknown };
  /** What the definition is built with (tests: a small `samplesPerExecution`). */
  definition?: WorkflowDefinitionOptions;
  /**
   * "Continue in a new execution" asked for execution `name` (the n-th continuation): locally it runs
   * in this process once this one has ended, with the same handler and history.
   */
  onContinue?(name: string, number: number): void;
}

/** The Step Functions integration that starts an execution (the definition's "Continue in a new execution"). */
const START_EXECUTION = 'arn:aws:states:::states:startExecution';

/** What the local runtime calls the state machine (`$$.StateMachine.Id`): never an AWS ARN. */
const LOCAL_STATE_MACHINE = 'arn:aws:states:local:000000000000:stateMachine:pgferry-local';

const localExecutionArn = (name: string) => `${LOCAL_STATE_MACHINE.replace(':stateMachine:', ':execution:')}:${name}`;

/** The execution a local "Continue in a new execution" asked for. */
interface Continuation {
  name: string;
  input: WorkflowInput;
}

function lambdaResult(task: TaskName, output: TaskOutput): unknown {
  const spec = WORKFLOW_TASKS[task] as { runtime: string; callback?: boolean };
  return spec.runtime === 'lambda' && !spec.callback ? { StatusCode: 200, Payload: output } : output;
}

/** The task input a state's evaluated Parameters carry (Lambda Payload, or the worker's environment). */
export function taskInputFrom(task: TaskName, parameters: unknown): TaskInput {
  const p = parameters as {
    Payload?: TaskInput;
    Overrides?: { ContainerOverrides?: { Environment?: { Name: string; Value: string }[] }[] };
  };
  if (WORKFLOW_TASKS[task].runtime === 'lambda') {
    const { task: _, ...input } = p.Payload ?? ({} as TaskInput);
    return input as TaskInput;
  }
  const env = Object.fromEntries(
    (p.Overrides?.ContainerOverrides?.[0]?.Environment ?? []).map((e) => [e.Name, e.Value]),
  );
  const { input } = taskInputFromEnvironment(env);
  // The scaled-out bulk load's attempt and share (the deployed worker reads them in worker.ts).
  if (env[WORKER_ENV.loadId]) input.loadId = env[WORKER_ENV.loadId];
  if (env[WORKER_ENV.share] !== undefined) input.share = Number(env[WORKER_ENV.share]);
  return input;
}

/** The names of every Task state of a definition (of `resource` only, if given), its Parallel branches and Map processors included. */
function taskStates(definition: unknown, resource?: string): string[] {
  const names: string[] = [];
  const walk = (machine: { States?: Record<string, Record<string, unknown>> } | undefined) => {
    for (const [name, state] of Object.entries(machine?.States ?? {})) {
      if (state.Type === 'Task' && (!resource || state.Resource === resource)) names.push(name);
      for (const branch of (state.Branches as object[] | undefined) ?? []) walk(branch);
      walk((state.ItemProcessor ?? state.Iterator) as object | undefined);
    }
  };
  walk(definition as object);
  return names;
}

/**
 * The state a suspended execution was saved with by a pgferry that did not count samples yet: "Begin
 * catch-up" reads `$.gate.samples` and "Continue in a new execution" `$.execution`; a path that is not
 * there would fail the execution.
 */
function savedBeforeCounting(input: unknown): unknown {
  if (!input || typeof input !== 'object') return input;
  const s = input as { gate?: unknown; execution?: unknown; continued?: unknown };
  const gate = s.gate && typeof s.gate === 'object' ? (s.gate as Record<string, unknown>) : undefined;
  return {
    ...s,
    ...(gate && !('samples' in gate) ? { gate: { ...gate, samples: 0 } } : {}),
    ...(s.execution === undefined ? { execution: 0 } : {}),
    ...(s.continued === undefined ? { continued: null } : {}),
  };
}

/** The value at a simple `$.a.b` path. */
function at$(value: unknown, path: string): unknown {
  let v = value;
  for (const key of path
    .replace(/^\$\.?/, '')
    .split('.')
    .filter(Boolean))
    v = v && typeof v === 'object' ? (v as Record<string, unknown>)[key] : undefined;
  return v;
}

/**
 * Run the workflow definition locally with `handler` doing every task. aws-local-stepfunctions (and the
 * AWS SDK clients it imports) is imported here when an execution starts, not at the top: a static import
 * of this external package is hoisted to the top of the CLI's bundle, and every command (--help, status)
 * would load it.
 */
export function runLocalWorkflow(input: WorkflowInput, handler: TaskHandler, options: RunOptions = {}): LocalExecution {
  let stop: (() => void) | undefined;
  let stopAsked = false;
  /** The input each state was last entered with (what a suspended execution continues from). */
  const inputs = new Map<string, unknown>();
  const done = (async () => {
    const sfn = await import('aws-local-stepfunctions');
    const started = (abort: () => void) => {
      stop = abort;
      if (stopAsked) abort();
    };
    let run: RunOptions = options;
    let runInput: unknown = options.startAt ? savedBeforeCounting(options.startAt.input) : { ...input };
    let name = `local-${input.migrationId}-${Date.now()}`;
    for (;;) {
      const next: { value?: Continuation } = {};
      const outcome = await execute(sfn, runInput, handler, run, inputs, started, name, next);
      // An execution that ended in "Continued in a new execution": the next one runs here and now,
      // from the input it was started with (no AWS call, ever).
      if (outcome.status !== 'succeeded' || !next.value || stopAsked) return outcome;
      name = next.value.name;
      options.onContinue?.(name, next.value.input.execution);
      run = { ...options, startAt: undefined };
      runInput = next.value.input;
    }
  })();
  return {
    done,
    abort: () => {
      stopAsked = true;
      stop?.();
    },
    inputOf: (state) => inputs.get(state),
  };
}

async function execute(
  sfn: typeof import('aws-local-stepfunctions'),
  input: unknown,
  handler: TaskHandler,
  options: RunOptions,
  inputs: Map<string, unknown>,
  started: (abort: () => void) => void,
  executionName: string,
  continuation: { value?: Continuation },
): Promise<ExecutionOutcome> {
  const { ExecutionAbortedError, ExecutionError, StateMachine } = sfn;
  const definition = JSON.parse(workflowDefinitionJson(options.definition)) as {
    StartAt: string;
    States: Record<string, unknown>;
  };
  if (options.startAt) {
    if (!(options.startAt.state in definition.States))
      throw new Error(`no state "${options.startAt.state}" in the workflow definition to continue from`);
    definition.StartAt = options.startAt.state;
  }
  const machine = new StateMachine(definition as never, {
    // Not validated again on every command (about 0.3 s of every migrate, resume, cutover and rollback):
    // it is the very text the tests validate with asl-validator and aws-local-stepfunctions' own checks.
    validationOptions: { noValidate: true },
  });
  const byState = new Map<string, TaskName>(TASK_NAMES.map((t) => [WORKFLOW_TASKS[t].state, t]));
  const handlers: Record<string, (i: unknown) => Promise<unknown>> = {};
  for (const task of TASK_NAMES) {
    const state = WORKFLOW_TASKS[task].state;
    handlers[state] = async (parameters) => {
      return lambdaResult(task, completeOutput(task, await handler(task, taskInputFrom(task, parameters))));
    };
  }
  // The scaled-out bulk load's coordinator is the bulk load task under a state name of its own.
  handlers[BULK_LOAD_STATES.hold] = handlers[WORKFLOW_TASKS.bulkLoad.state]!;
  // "Continue in a new execution": noted here, run by runLocalWorkflow once this execution has ended.
  for (const state of taskStates(definition, START_EXECUTION))
    handlers[state] = async (parameters) => {
      const p = parameters as { Name: string; Input: WorkflowInput };
      if (continuation.value)
        throw new Error(`execution ${executionName} continued already, in ${continuation.value.name}`);
      continuation.value = { name: p.Name, input: p.Input };
      return { ExecutionArn: localExecutionArn(p.Name), StartDate: new Date().toISOString() };
    };
  // A Task state without a local handler would be sent to AWS by aws-local-stepfunctions: never.
  const unhandled = taskStates(definition).filter((name) => !handlers[name]);
  if (unhandled.length)
    throw new Error(`the local runtime has no task for state(s) ${unhandled.map((n) => `"${n}"`).join(', ')}`);
  const execution = machine.run(input as never, {
    overrides: {
      taskResourceLocalHandlers: handlers as never,
      waitTimeOverrides: options.waitMs,
      retryIntervalOverrides: options.retryMs,
    },
    // What the definition reads of the context (aws-local-stepfunctions fills none of it): the bulk load's
    // Parallel names its attempt after the execution and the time it was entered (one attempt per local
    // execution); "Begin the approval wait" reads when the wait began (locally the execution stops at the
    // gate anyway: the deadline is AWS's concern); "Continue in a new execution" reads the machine's id
    // and this execution's, and "Assess source" records the execution's name.
    context: {
      Execution: { Name: executionName, Id: localExecutionArn(executionName) },
      StateMachine: { Id: LOCAL_STATE_MACHINE },
      State: { EnteredTime: new Date().toISOString() },
      Task: { Token: `local:${(input as WorkflowInput).migrationId}` },
    } as never,
  });
  started(() => execution.abort());
  let last: string | undefined;
  const open = new Map<string, HistoryEntry>();
  const close = (entry: HistoryEntry, at: number, output?: unknown) => {
    entry.leftAt = new Date(at).toISOString();
    entry.ms = at - Date.parse(entry.enteredAt);
    // A task's summary is in the state's output, where its ResultPath put it.
    const task = byState.get(entry.state);
    if (task && !entry.error) {
      const result = at$(output, TASK_RESULTS[task].path) as { summary?: unknown } | undefined;
      if (typeof result?.summary === 'string') entry.summary = result.summary;
    }
    options.onHistory?.(entry, 'left');
  };
  const follow = (async () => {
    for await (const e of execution.eventLogs as AsyncIterable<{
      type: string;
      timestamp: number;
      state?: { name: string; type: string; input?: unknown; output?: unknown };
      Error?: string;
      Cause?: string;
    }>) {
      if (!e.state) continue;
      const at = new Date(e.timestamp).toISOString();
      const name = e.state.name;
      if (e.type === 'StateEntered') {
        last = name;
        const entry: HistoryEntry = { state: name, type: e.state.type, enteredAt: at };
        open.set(name, entry);
        inputs.set(name, e.state.input);
        options.onHistory?.(entry, 'entered');
      } else if (e.type === 'StateRetried') {
        const entry = open.get(name);
        if (entry) entry.retried = (entry.retried ?? 0) + 1;
      } else if (e.type === 'StateFailed') {
        // Caught, the state still exits (StateCaught, then StateExited); uncaught, the execution ends here.
        const entry = open.get(name);
        if (entry) entry.error = `${e.Error ?? 'Error'}: ${e.Cause ?? ''}`.slice(0, 500);
      } else if (e.type === 'StateExited') {
        const entry = open.get(name);
        if (!entry) continue;
        close(entry, e.timestamp, e.state.output);
        open.delete(name);
      }
    }
  })();
  let outcome: Omit<ExecutionOutcome, 'lastState'>;
  try {
    outcome = { status: 'succeeded', output: await execution.result };
  } catch (err) {
    if (err instanceof ExecutionAbortedError) outcome = { status: 'aborted' };
    else {
      const cause = err instanceof ExecutionError ? (err.cause as Error | undefined) : (err as Error);
      outcome = { status: 'failed', error: cause?.name, cause: cause?.message };
    }
  }
  // The event log ends with the execution: read to its end before saying where it stopped.
  await follow.catch(() => {});
  for (const entry of open.values()) close(entry, Date.now());
  return { ...outcome, lastState: last };
}
