/**
 * The state machine definition: valid ASL (asl-validator), its shape (every task reachable, every Task
 * caught, callback steps bounded), and its paths, walked by aws-local-stepfunctions with scripted task
 * results (no database: the e2e test runs the real tasks).
 */

import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  BUSY_RETRY,
  busyWaitSeconds,
  completeOutput,
  DEFAULTS,
  failureAction,
  functionArnKey,
  LAMBDA_MAX_SECONDS,
  LEASE_SECONDS,
  NO_FACTS,
  STATE,
  TASK_NAMES,
  type TaskInput,
  type TaskName,
  type TaskOutput,
  type TaskSpec,
  takesLease,
  WORKER_SUBSTITUTIONS,
  WORKFLOW_TASKS,
  type WorkflowInput,
  workflowDefinition,
  workflowDefinitionJson,
  workflowInput,
} from '@pgferry/core';
import validator from 'asl-validator';
import { StateMachine } from 'aws-local-stepfunctions';
import { describe, expect, it } from 'vitest';
import { type HistoryEntry, type RunOptions, runLocalWorkflow } from '../packages/cli/src/local-workflow';

type State = Record<string, unknown> & { Type: string };
const def = workflowDefinition() as { StartAt: string; States: Record<string, State> };

function targets(s: State): string[] {
  const out: string[] = [];
  if (typeof s.Next === 'string') out.push(s.Next);
  if (typeof s.Default === 'string') out.push(s.Default);
  for (const c of (s.Choices as { Next: string }[] | undefined) ?? []) out.push(c.Next);
  for (const c of (s.Catch as { Next: string }[] | undefined) ?? []) out.push(c.Next);
  return out;
}

function reachable(): Set<string> {
  const seen = new Set<string>();
  // A graph and the graphs inside its Parallel branches and Map processors (the scaled-out bulk load).
  const walk = (graph: { StartAt: string; States: Record<string, State> }) => {
    const todo = [graph.StartAt];
    while (todo.length) {
      const name = todo.pop() as string;
      if (seen.has(name)) continue;
      seen.add(name);
      const s = graph.States[name];
      if (!s) continue;
      todo.push(...targets(s));
      const inner = s as { Branches?: (typeof graph)[]; ItemProcessor?: typeof graph };
      for (const b of inner.Branches ?? []) walk(b);
      if (inner.ItemProcessor) walk(inner.ItemProcessor);
    }
  };
  walk(def);
  return seen;
}

/** The definition as the stack deploys it: every ${Key} substituted. */
function substituted(): unknown {
  const values: Record<string, string> = {
    WorkerClusterArn: 'arn:aws:ecs:eu-west-1:123456789012:cluster/pgferry',
    WorkerTaskDefinitionArn: 'arn:aws:ecs:eu-west-1:123456789012:task-definition/pgferry-worker:1',
    WorkerContainerName: 'worker',
    WorkerSubnets: 'subnet-0a1b2c3d,subnet-4e5f6a7b',
    WorkerSecurityGroups: 'sg-0123456789abcdef0',
  };
  for (const t of TASK_NAMES) values[functionArnKey(t)] = `arn:aws:lambda:eu-west-1:123456789012:function:pgferry-${t}`;
  const text = workflowDefinitionJson().replace(/\$\{(\w+)\}/g, (_, k: string) => {
    if (!(k in values)) throw new Error(`unknown substitution ${k}`);
    return values[k] as string;
  });
  return JSON.parse(text);
}

describe('workflow definition', () => {
  it('is valid ASL, before and after the stack substitutes its ARNs and lists', () => {
    const before = validator(JSON.parse(workflowDefinitionJson()));
    expect(before.errorsText('\n')).toBe('');
    expect(before.isValid).toBe(true);
    const after = validator(substituted(), { checkArn: true, checkPaths: true });
    expect(after.errorsText('\n')).toBe('');
    expect(after.isValid).toBe(true);
    // And by the local runtime's own checks, which it skips on every command for this test's sake.
    expect(() => new StateMachine(substituted() as never, { validationOptions: { checkArn: true } })).not.toThrow();
  });

  it('substitutes only the keys the task table names', () => {
    const keys = new Set([...workflowDefinitionJson().matchAll(/\$\{(\w+)\}/g)].map((m) => m[1]));
    const lambda = TASK_NAMES.filter((t) => WORKFLOW_TASKS[t].runtime === 'lambda' && t !== 'copyShare');
    const expected = new Set<string>([...WORKER_SUBSTITUTIONS, ...lambda.map(functionArnKey)]);
    expect([...keys].sort()).toEqual([...expected].sort());
  });

  it("reaches the state of every task in the table, the scaled-out bulk load's included", () => {
    const seen = reachable();
    for (const t of TASK_NAMES) expect(seen, t).toContain(WORKFLOW_TASKS[t].state);
    expect([...Object.keys(def.States)].filter((s) => !seen.has(s))).toEqual([]);
  });

  it('catches every Task, bounds every one in time, and gives the worker heartbeats', () => {
    for (const [name, s] of Object.entries(def.States).filter(([, s]) => s.Type === 'Task')) {
      expect((s.Catch as unknown[] | undefined)?.length, name).toBeGreaterThan(0);
      expect(s.TimeoutSeconds, name).toBeGreaterThan(0);
      if (String(s.Resource).includes('waitForTaskToken')) {
        expect(JSON.stringify(s.Parameters), name).toContain('$$.Task.Token');
      }
      if (String(s.Resource).includes('ecs:runTask')) expect(s.HeartbeatSeconds, name).toBe(300);
    }
    expect(def.States[WORKFLOW_TASKS.awaitApproval.state]?.Resource).toBe(
      'arn:aws:states:::lambda:invoke.waitForTaskToken',
    );
  });

  it('waits out another task holding the migration: every task that takes the lease retries MigrationBusyError past the longest Lambda task and a lapsing lease', () => {
    // Every Task state, those inside the bulk load's Parallel and Map included, with the task it runs.
    const tasks: { name: string; state: State; task: TaskName }[] = [];
    const collect = (graph: { States: Record<string, State> }) => {
      for (const [name, s] of Object.entries(graph.States)) {
        const inner = s as {
          Branches?: { States: Record<string, State> }[];
          ItemProcessor?: { States: Record<string, State> };
        };
        for (const b of inner.Branches ?? []) collect(b);
        if (inner.ItemProcessor) collect(inner.ItemProcessor);
        if (s.Type !== 'Task') continue;
        const text = JSON.stringify(s.Parameters);
        const task = TASK_NAMES.find(
          (t) => text.includes(`"task":"${t}"`) || text.includes(`"Name":"PGFERRY_TASK","Value":"${t}"`),
        );
        if (task) tasks.push({ name, state: s, task });
      }
    };
    collect(def);
    expect(new Set(tasks.map((t) => t.task))).toEqual(new Set(TASK_NAMES));
    for (const { name, state, task } of tasks) {
      const retries = (state.Retry as object[] | undefined) ?? [];
      if ((WORKFLOW_TASKS[task] as TaskSpec).insideLoad) continue;
      expect(retries, name).toContainEqual(BUSY_RETRY);
    }
    // A Lambda invocation Step Functions stopped waiting for runs on at most LAMBDA_MAX_SECONDS; a dead
    // holder's lease lapses LEASE_SECONDS after its last renewal.
    expect(busyWaitSeconds()).toBeGreaterThan(LAMBDA_MAX_SECONDS + LEASE_SECONDS);
    // The tasks inside the load run under the coordinator's lease; "Record failure" of another actor's
    // error records nothing and takes none.
    for (const t of ['readCopyPlan', 'copyShare', 'awaitDumpUpload'] as const)
      expect(takesLease(t, { migrationId: 'm1' }), t).toBe(false);
    expect(takesLease('recordFailure', { migrationId: 'm1', error: { Error: 'MigrationBusyError', Cause: '' } })).toBe(
      false,
    );
    expect(takesLease('recordFailure', { migrationId: 'm1', error: { Error: 'CopyFailedError', Cause: '' } })).toBe(
      true,
    );
    expect(takesLease('cutover', { migrationId: 'm1' })).toBe(true);
  });

  it('passes only the migration id and workflow figures to tasks, never a URL or a password', () => {
    const text = workflowDefinitionJson();
    expect(text).not.toMatch(/postgres(ql)?:\/\/|password|secret/i);
    for (const s of Object.values(def.States).filter((s) => s.Type === 'Task')) {
      const params = JSON.stringify(s.Parameters);
      expect(params).toContain('$.migrationId');
    }
  });

  it('routes errors by the failure policy: resumable ones to "Record failure", the rest to "Roll back"', () => {
    const catches = (state: string) => def.States[state]?.Catch as { ErrorEquals: string[]; Next: string }[];
    const route = (state: string, error: string) =>
      catches(state).find((c) => c.ErrorEquals.includes(error) || c.ErrorEquals.includes('States.ALL'))?.Next;
    expect(route('Check lag', 'LagTimeoutError')).toBe('Record failure');
    // A table verify could not read for another session's lock: resumable, never a rollback of the load.
    expect(route('Verify before cutover', 'VerifyLockedError')).toBe('Record failure');
    expect(route('Check lag', 'ConnectionLostError')).toBe('Record failure');
    expect(route('Check lag', 'WalRetentionExceededError')).toBe('Roll back');
    expect(route('Bulk load', 'BulkLoadFailedError')).toBe('Roll back');
    expect(route('Bulk load', 'UndoFailedError')).toBe('Record failure');
    expect(route('Cut over', 'DrainTimeoutError')).toBe(STATE.drainAgain);
    expect(route('Cut over', 'CutoverFailedError')).toBe('Record failure');
    expect(route('Cut over', 'ReplicationFailedError')).toBe('Roll back');
    expect(route('Verify', 'VerificationFailedError')).toBe('Record failure');
    expect(route('Verify', 'Error')).toBe('Record failure');
    expect(route('Assess source', 'AssessmentBlockedError')).toBe('Record failure');
    // A window of the approval wait ends: the wait goes on with a new token; past its deadline it stops.
    expect(route('Await cutover approval', 'States.Timeout')).toBe('Await cutover approval');
    expect(route('Await cutover approval', 'ApprovalTimeoutError')).toBe('Record failure');
    // A foreign key the target's rows fail, or a lock timeout, after the load: the load stays, resumable.
    expect(route('Finish the load on the target', 'AfterLoadFailedError')).toBe('Record failure');
    expect(route('Check lag', 'AfterLoadFailedError')).toBe('Record failure');
    expect(route('Finish the load on the target', 'ConnectionLostError')).toBe('Record failure');
    expect(route('Finish the load on the target', 'Error')).toBe('Roll back');
    // Its worker killed (no heartbeat): what it did stays, replication goes on; a load's worker is rolled back.
    expect(route('Finish the load on the target', 'States.HeartbeatTimeout')).toBe('Record failure');
    expect(route('Verify before cutover', 'States.HeartbeatTimeout')).toBe('Record failure');
    expect(route('Bulk load', 'States.HeartbeatTimeout')).toBe('Roll back');
  });

  it('is what `pgferry workflow print` prints, and --help names the command', () => {
    const bin = fileURLToPath(new URL('../packages/cli/bin/pgferry.mjs', import.meta.url));
    const printed = execFileSync(process.execPath, [bin, 'workflow', 'print'], { encoding: 'utf8' });
    expect(printed).toBe(`${workflowDefinitionJson()}\n`);
    expect(execFileSync(process.execPath, [bin, '--help'], { encoding: 'utf8' })).toContain('workflow print');
    const wrong = spawnSync(process.execPath, [bin, 'workflow', 'show'], { encoding: 'utf8' });
    expect(wrong.status).toBe(2);
    expect(wrong.stderr).toContain('unknown workflow subcommand "show"');
  });

  it('prints the same text every time', () => {
    expect(workflowDefinitionJson()).toBe(workflowDefinitionJson());
    expect(JSON.parse(workflowDefinitionJson())).toEqual(workflowDefinition());
  });
});

describe('failure policy', () => {
  const facts = { ...NO_FACTS };
  it('keeps a migration resumable where replication is healthy, rolls back the rest before the switch', () => {
    expect(failureAction('LagTimeoutError', 'catch-up', facts)).toBe('stop');
    expect(failureAction('DrainTimeoutError', 'cutover', facts)).toBe('stop');
    expect(failureAction('PreparedTransactionsPendingError', 'cutover', facts)).toBe('stop');
    expect(failureAction('VerificationFailedError', 'catch-up', facts)).toBe('stop');
    expect(failureAction('VerifyLockedError', 'catch-up', facts)).toBe('stop');
    expect(failureAction('ReplicationFailedError', 'catch-up', { ...facts, connectionLoss: true })).toBe('stop');
    expect(failureAction('ReplicationFailedError', 'catch-up', facts)).toBe('roll-back');
    expect(failureAction('BulkLoadFailedError', 'bulk-load', facts)).toBe('roll-back');
    expect(failureAction('CutoverFailedError', 'cutover', facts)).toBe('stop');
    // A cutover record left means its undo did not clear it: the load is not known good.
    expect(failureAction('CutoverFailedError', 'cutover', { ...facts, cutoverRecorded: true })).toBe('roll-back');
    expect(failureAction('AssessmentBlockedError', 'assess', facts)).toBe('fail');
  });

  it('never rolls back once the switch began, and records nothing for a conflict or a signal', () => {
    expect(failureAction('ReplicationFailedError', 'cutover', { ...facts, switchStarted: true })).toBe('stop');
    expect(failureAction('Error', 'verify', { ...facts, switched: true, switchStarted: true })).toBe('keep-cut-over');
    expect(failureAction('StateConflictError', 'bulk-load', facts)).toBe('ignore');
    expect(failureAction('BulkLoadFailedError', 'bulk-load', { ...facts, interrupted: true })).toBe('ignore');
    expect(failureAction('UndoFailedError', 'cutover', facts)).toBe('stop');
  });
});

/** Walk the definition with scripted task results; returns the states entered, in order. */
async function walk(
  input: Partial<WorkflowInput>,
  script: (task: TaskName, input: TaskInput, n: number) => TaskOutput | Error,
  options: Pick<RunOptions, 'definition' | 'onContinue' | 'retryMs'> = {},
) {
  const entered: string[] = [];
  const history: HistoryEntry[] = [];
  const calls = new Map<TaskName, number>();
  const run = runLocalWorkflow(
    {
      migrationId: 'm1',
      action: 'migrate',
      cutover: 'auto',
      approved: false,
      provisionTarget: false,
      cleanup: false,
      bakeSeconds: 0,
      copyWorkers: 1,
      execution: 0,
      continued: null,
      ...input,
    },
    async (task, i) => {
      const n = (calls.get(task) ?? 0) + 1;
      calls.set(task, n);
      const r = script(task, i, n);
      if (r instanceof Error) throw r;
      return r;
    },
    {
      ...options,
      onHistory: (e, ev) => {
        if (ev === 'entered') entered.push(e.state);
        else history.push(e);
      },
    },
  );
  const outcome = await run.done;
  return { outcome, entered, history, calls };
}

function named(name: string, message: string): Error {
  const e = new Error(message);
  e.name = name;
  return e;
}

const ok = (task: TaskName, extra: Record<string, unknown> = {}): TaskOutput => ({ summary: `${task} done`, ...extra });

/** Check lag: not ready on the first sample, ready on the second. */
function gate(n: number): TaskOutput {
  return { summary: `sample ${n}`, ready: n % 2 === 0, streak: n % 2, waitSeconds: 0, memory: { n } };
}

describe('workflow paths (scripted tasks)', () => {
  it('runs a migration with automatic cutover through verify before the switch, cutover and verify', async () => {
    const inputs: Partial<Record<TaskName, TaskInput>> = {};
    const { outcome, entered, history } = await walk({}, (task, input, n) => {
      inputs[task] = input;
      if (task === 'checkLag') return gate(n);
      if (task === 'verifyBeforeSwitch') return ok(task, { done: true, rounds: 1, outcome: 'ok' });
      return ok(task);
    });
    expect(outcome.status).toBe('succeeded');
    const tasks = entered.filter((s) => Object.values(WORKFLOW_TASKS).some((t) => t.state === s));
    expect(tasks).toEqual([
      'Assess source',
      'Prepare schema',
      'Bulk load',
      'Start replication',
      'Check lag',
      'Check lag',
      'Verify before cutover',
      'Check lag',
      'Check lag',
      'Cut over',
      'Verify',
    ]);
    // The gate's memory goes from one sample to the next; the worker's input arrives through its environment.
    expect(inputs.checkLag?.gate).toMatchObject({ memory: { n: 3 } });
    expect(inputs.verifyBeforeSwitch).toMatchObject({ migrationId: 'm1', verify: { done: false, rounds: 0 } });
    expect(inputs.bulkLoad?.taskToken).toBe('local:m1');
    expect(history.find((h) => h.state === 'Cut over')?.summary).toBe('cutover done');
  });

  it('hands the work the load left to the worker when "Check lag" cannot run it, then catches up afresh', async () => {
    const inputs: TaskInput[] = [];
    const { outcome, entered } = await walk({}, (task, input, n) => {
      if (task === 'checkLag') {
        inputs.push(input);
        // The first sample finds work left and no session to run it on.
        if (n === 1) return ok(task, { ready: false, streak: 3, waitSeconds: 0, memory: { n }, finishLoad: true });
        return gate(n);
      }
      if (task === 'verifyBeforeSwitch') return ok(task, { done: true, rounds: 1, outcome: 'ok' });
      return ok(task);
    });
    expect(outcome.status).toBe('succeeded');
    const at = entered.indexOf('Finish the load on the target');
    expect(entered.slice(at - 2, at + 3)).toEqual([
      'Check lag',
      'Caught up?',
      'Finish the load on the target',
      'Begin catch-up',
      'Wait for the next lag sample',
    ]);
    expect(entered.filter((s) => s === 'Finish the load on the target')).toHaveLength(1);
    // A new streak after it: the gate's memory does not carry over.
    expect(inputs[1]?.gate).toMatchObject({ ready: false, streak: 0 });
    expect(inputs[1]?.gate).not.toHaveProperty('memory');
  });

  it('stops resumable, nothing rolled back, when the work after the load fails', async () => {
    const { entered, calls } = await walk({}, (task, _input, n) => {
      if (task === 'checkLag')
        return ok(task, { ready: false, streak: 0, waitSeconds: 0, memory: { n }, finishLoad: true });
      if (task === 'finishLoad')
        return named('AfterLoadFailedError', 'foreign key orders_customer_id_fkey could not be validated');
      if (task === 'recordFailure') return ok(task, { action: 'stop' });
      return ok(task);
    });
    expect(entered).toContain('Record failure');
    expect(entered).not.toContain('Roll back');
    expect(calls.get('rollback')).toBeUndefined();
    expect(entered.at(-1)).toBe('Stopped (resumable)');
  });

  it('waits for approval with --cutover manual, and skips it once approved', async () => {
    const manual = await walk({ cutover: 'manual' }, (task, _i, n) =>
      task === 'checkLag' ? gate(n) : task === 'verifyBeforeSwitch' ? ok(task, { done: true }) : ok(task),
    );
    expect(manual.entered).toContain('Await cutover approval');
    expect(manual.entered.indexOf('Await cutover approval')).toBeLessThan(manual.entered.indexOf('Cut over'));
    const approved = await walk({ cutover: 'manual', approved: true }, (task, _i, n) =>
      task === 'checkLag' ? gate(n) : task === 'verifyBeforeSwitch' ? ok(task, { done: true }) : ok(task),
    );
    expect(approved.entered).not.toContain('Await cutover approval');
    expect(approved.outcome.status).toBe('succeeded');
  });

  it('goes back to catch-up after a drain over budget, and stops resumable after the last attempt', async () => {
    const attempts: unknown[] = [];
    const drains = await walk({}, (task, i, n) => {
      if (task === 'checkLag') return gate(n);
      if (task === 'verifyBeforeSwitch') return ok(task, { done: true });
      if (task === 'cutover') attempts.push(i.attempt);
      if (task === 'cutover') return named('DrainTimeoutError', `drain ${n} over budget`);
      if (task === 'recordFailure') return ok(task, { action: 'stop' });
      return ok(task);
    });
    expect(drains.calls.get('cutover')).toBe(DEFAULTS.cutoverAttempts);
    // Each attempt is told its number: the task says "back to catch-up (attempt n of 3)" only when there is one more.
    expect(attempts).toEqual([{ count: 1 }, { count: 2 }, { count: 3 }]);
    expect(drains.entered.slice(-3)).toEqual(['Record failure', STATE.afterRecord, STATE.stopped]);
    expect(drains.outcome).toMatchObject({ status: 'failed', lastState: STATE.stopped, error: 'DrainTimeoutError' });
    expect(drains.outcome.cause).toBe(`drain ${DEFAULTS.cutoverAttempts} over budget`);
  });

  it('continues the catch-up in a new execution past its samples, carrying the gate, and cuts over there', async () => {
    const assessed: TaskInput[] = [];
    const gates: unknown[] = [];
    const continued: [string, number][] = [];
    const { outcome, entered } = await walk(
      {},
      (task, input, n) => {
        if (task === 'assess') assessed.push(input);
        if (task === 'checkLag') {
          // As the real task: one more sample counted. The gate opens from the 5th sample on.
          const given = input.gate as { samples?: number };
          gates.push(input.gate);
          return { ...gate(n), ready: n >= 5, memory: { n }, samples: (given.samples ?? 0) + 1 };
        }
        if (task === 'verifyBeforeSwitch') return ok(task, { done: true, rounds: 1, outcome: 'ok' });
        return ok(task);
      },
      { definition: { samplesPerExecution: 3 }, onContinue: (name, number) => continued.push([name, number]) },
    );
    expect(outcome.status).toBe('succeeded');
    expect(outcome.lastState).toBe(STATE.migrated);
    // Three samples an execution, over all its catch-ups: samples 1-3; 4-5, the verify, 6; then 7 cuts over.
    expect(continued).toEqual([
      ['m1-continued-1', 1],
      ['m1-continued-2', 2],
    ]);
    expect(entered.filter((s) => s === STATE.continueAsNew)).toHaveLength(2);
    expect(entered.filter((s) => s === STATE.continued)).toHaveLength(2);
    expect(entered.filter((s) => s === 'Start')).toHaveLength(3);
    // The load ran once, and the verify before the switch too (its result travels with the gate).
    for (const once of ['Prepare schema', 'Bulk load', 'Start replication', 'Verify before cutover', 'Cut over'])
      expect(
        entered.filter((s) => s === once),
        once,
      ).toHaveLength(1);
    const second = entered.indexOf('Start', 1);
    expect(entered.slice(second, second + 6)).toEqual([
      'Start',
      'Migrate or roll back?',
      'Assess source',
      'Where does the migration stand?',
      STATE.continueCatchUp,
      STATE.waitSample,
    ]);
    // The count starts again in each execution and goes on over "Begin catch-up" (after the verify);
    // the gate's memory goes on into the next execution (sample 4 reads what sample 3 left).
    expect(gates.map((g) => (g as { samples: number }).samples)).toEqual([0, 1, 2, 0, 1, 2, 0]);
    expect(gates.map((g) => (g as { memory?: { n: number } }).memory?.n ?? 0)).toEqual([0, 1, 2, 3, 4, 0, 6]);
    // Each execution tells "Assess source" which it is.
    expect(assessed.map((a) => [a.executionNumber, String(a.execution).replace(/-\d+$/, '')])).toEqual([
      [0, 'local-m1'],
      [1, 'm1-continued'],
      [2, 'm1-continued'],
    ]);
    expect(entered.slice(-3)).toEqual(['Verify', 'Clean up requested?', 'Migrated']);
  });

  it('stops resumable, not rolled back, when the next execution cannot be started', () => {
    const task = def.States[STATE.continueAsNew]!;
    expect(task.Resource).toBe('arn:aws:states:::states:startExecution');
    expect(task.Parameters).toMatchObject({
      'StateMachineArn.$': '$$.StateMachine.Id',
      'Name.$': "States.Format('{}-continued-{}', $.migrationId, States.MathAdd($.execution, 1))",
    });
    const caught = (task.Catch as { ErrorEquals: string[]; Next: string }[])[0]!;
    expect(caught).toMatchObject({ ErrorEquals: ['States.ALL'], Next: STATE.continuationFailed });
    const named = def.States[STATE.continuationFailed]!;
    expect(named.Next).toBe('Record failure');
    const error = (named.Parameters as { Error: string }).Error;
    expect(failureAction(error, 'catch-up', NO_FACTS)).toBe('stop');
    expect(def.States[STATE.continued]?.Type).toBe('Succeed');
  });

  it('continues an execution suspended at the approval by a pgferry that did not count samples yet', async () => {
    // What such a version saved as the input of "Await cutover approval": no sample count, no execution number.
    const saved = {
      ...workflowInput({ migrationId: 'm8', cutover: 'manual' }),
      results: { assess: { summary: 'done', resumeAt: 'start', strategy: 'snapshot' } },
      gate: { ready: true, streak: 2, waitSeconds: 0, memory: { n: 2 } },
      verify: { done: false, rounds: 0 },
      cutoverAttempt: { count: 1 },
      error: null,
      approvalWait: { since: '2026-12-07T03:00:00.000Z', windowSeconds: 600, deadlineSeconds: 604800 },
    } as Record<string, unknown>;
    delete saved.execution;
    delete saved.continued;
    const entered: string[] = [];
    const run = runLocalWorkflow(
      workflowInput({ migrationId: 'm8', cutover: 'manual' }),
      async (task, i) => {
        if (task === 'checkLag') return { ...gate(2), samples: Number((i.gate as { samples: number }).samples) + 1 };
        if (task === 'verifyBeforeSwitch') return ok(task, { done: true, rounds: 1, outcome: 'ok' });
        return ok(task);
      },
      {
        startAt: { state: WORKFLOW_TASKS.awaitApproval.state, input: saved },
        definition: { samplesPerExecution: 2 },
        onHistory: (e, ev) => {
          if (ev === 'entered') entered.push(e.state);
        },
      },
    );
    const outcome = await run.done;
    expect(outcome).toMatchObject({ status: 'succeeded', lastState: STATE.migrated });
    // Its samples counted from 0: the second sample after the approval went on in a new execution.
    expect(entered).toContain(STATE.continued);
    expect(run.inputOf(WORKFLOW_TASKS.assess.state)).toMatchObject({ execution: 1 });
  });

  it('tries a failed start again, then records ContinuationFailedError and stops resumable (aws-local-stepfunctions)', async () => {
    const short = workflowDefinition({ samplesPerExecution: 1 }) as { States: Record<string, State> };
    const tries: unknown[] = [];
    let recorded: unknown;
    const handlers: Record<string, (input: unknown) => Promise<unknown>> = {};
    const plain = (o: object) => ({ StatusCode: 200, Payload: o });
    for (const task of TASK_NAMES)
      handlers[WORKFLOW_TASKS[task].state] = async (p) => {
        const payload = (p as { Payload?: Record<string, unknown> }).Payload ?? {};
        if (task === 'checkLag') return plain(completeOutput(task, { ...gate(1), samples: 1 }));
        if (task === 'recordFailure') {
          recorded = payload.error;
          return plain(completeOutput(task, { summary: 'recorded', action: 'stop' }));
        }
        const out = completeOutput(task, ok(task));
        return (WORKFLOW_TASKS[task] as { callback?: boolean }).callback ? out : plain(out);
      };
    handlers[STATE.continueAsNew] = async (p) => {
      tries.push(p);
      throw named('StepFunctions.AccessDeniedException', 'not authorized to perform states:StartExecution');
    };
    const execution = new StateMachine(short as never, { validationOptions: { noValidate: true } }).run(
      { ...workflowInput({ migrationId: 'm9' }) } as never,
      {
        overrides: {
          taskResourceLocalHandlers: handlers as never,
          waitTimeOverrides: { [STATE.waitSample]: 0 },
          retryIntervalOverrides: { [STATE.continueAsNew]: 0 },
        },
        context: {
          Execution: { Name: 'm9', Id: 'arn:aws:states:eu-west-1:123456789012:execution:pgferry:m9' },
          StateMachine: { Id: 'arn:aws:states:eu-west-1:123456789012:stateMachine:pgferry' },
          State: { EnteredTime: '2026-12-07T03:00:00.000Z' },
          Task: { Token: 'token-m9' },
        } as never,
      },
    );
    const failure = await execution.result.then(
      () => undefined,
      (e: Error) => e,
    );
    // "Stopped (resumable)": the error is the one "Record failure" was given.
    expect((failure?.cause as Error | undefined)?.name).toBe('ContinuationFailedError');
    expect(String(failure)).toContain('StepFunctions.AccessDeniedException');
    const retry = (short.States[STATE.continueAsNew]!.Retry as { MaxAttempts: number }[])[0]!;
    expect(tries).toHaveLength(1 + retry.MaxAttempts);
    // Every try the same request: the name and input are the same, so a start that did happen is not repeated.
    for (const t of tries) expect(t).toEqual(tries[0]);
    expect(tries[0]).toMatchObject({
      StateMachineArn: 'arn:aws:states:eu-west-1:123456789012:stateMachine:pgferry',
      Name: 'm9-continued-1',
      Input: {
        migrationId: 'm9',
        execution: 1,
        continued: { gate: { samples: 0, memory: { n: 1 } }, cutoverAttempt: { count: 1 } },
        AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID: 'arn:aws:states:eu-west-1:123456789012:execution:pgferry:m9',
      },
    });
    expect(recorded).toMatchObject({ Error: 'ContinuationFailedError' });
    expect(String((recorded as { Cause: string }).Cause)).toContain('StepFunctions.AccessDeniedException');
  });

  it('tries a task again while another holds the migration, and stops resumable, nothing undone, past the wait', async () => {
    const busy = () => named('MigrationBusyError', 'migration m1 is being worked on by another pgferry process');
    const retryMs = { [WORKFLOW_TASKS.cutover.state]: 0, [WORKFLOW_TASKS.rollback.state]: 0 };
    const waited = await walk(
      {},
      (task, _input, n) => {
        if (task === 'checkLag') return gate(n);
        if (task === 'verifyBeforeSwitch') return ok(task, { done: true, rounds: 1, outcome: 'ok' });
        if (task === 'cutover' && n <= 2) return busy();
        return ok(task);
      },
      { retryMs },
    );
    expect(waited.outcome.status).toBe('succeeded');
    expect(waited.calls.get('cutover')).toBe(3);
    expect(waited.calls.get('rollback')).toBeUndefined();

    let recorded: unknown;
    const outlasted = await walk(
      {},
      (task, input, n) => {
        if (task === 'checkLag') return gate(n);
        if (task === 'verifyBeforeSwitch') return ok(task, { done: true, rounds: 1, outcome: 'ok' });
        if (task === 'cutover') return busy();
        if (task === 'recordFailure') {
          recorded = input.error;
          const action = failureAction('MigrationBusyError', 'cutover', NO_FACTS);
          return completeOutput(task, { summary: 'not recorded', action });
        }
        return ok(task);
      },
      { retryMs },
    );
    expect(outlasted.calls.get('cutover')).toBe(1 + BUSY_RETRY.MaxAttempts);
    expect(recorded).toMatchObject({ Error: 'MigrationBusyError' });
    expect(outlasted.calls.get('rollback')).toBeUndefined();
    expect(outlasted.outcome).toMatchObject({ status: 'failed', lastState: STATE.stopped });

    // A rollback someone asked for ends "Rollback failed", naming the holder; it did nothing.
    const asked = await walk({ action: 'rollback' }, () => busy(), { retryMs });
    expect(asked.calls.get('rollback')).toBe(1 + BUSY_RETRY.MaxAttempts);
    expect(asked.outcome).toMatchObject({
      status: 'failed',
      lastState: STATE.rollbackFailed,
      error: 'MigrationBusyError',
    });
  });

  it('rolls back after a failed bulk load and ends Failed with the reason', async () => {
    const r = await walk({}, (task) => {
      if (task === 'bulkLoad') return named('BulkLoadFailedError', 'COPY public.orders failed');
      if (task === 'rollback') return ok(task, { action: 'roll-back' });
      return ok(task);
    });
    expect(r.entered.slice(-3)).toEqual(['Roll back', STATE.afterRollback, STATE.failed]);
    expect(r.outcome).toMatchObject({
      status: 'failed',
      error: 'BulkLoadFailedError',
      cause: 'COPY public.orders failed',
    });
    expect(r.history.find((h) => h.state === 'Bulk load')?.error).toContain('BulkLoadFailedError');
  });

  it('goes from "Record failure" to "Roll back" when the stored state calls for it', async () => {
    const r = await walk({}, (task, _i, n) => {
      if (task === 'checkLag') return gate(n);
      if (task === 'verifyBeforeSwitch') return ok(task, { done: true });
      if (task === 'cutover') return named('CutoverFailedError', 'freeze refused');
      if (task === 'recordFailure') return ok(task, { action: 'roll-back' });
      if (task === 'rollback') return ok(task, { action: 'roll-back' });
      return ok(task);
    });
    expect(r.entered).toContain('Record failure');
    expect(r.entered).toContain('Roll back');
    expect(r.outcome).toMatchObject({ status: 'failed', lastState: STATE.failed, error: 'CutoverFailedError' });
  });

  it('finishes a switch that began before anything else, never going back to catch-up', async () => {
    const r = await walk({}, (task) => (task === 'assess' ? ok(task, { resumeAt: 'cutover' }) : ok(task)));
    const tasks = r.entered.filter((s) => Object.values(WORKFLOW_TASKS).some((t) => t.state === s));
    expect(tasks).toEqual(['Assess source', 'Cut over', 'Verify']);
    expect(r.outcome.status).toBe('succeeded');
  });

  it('ends "Rolled back", not Failed, when someone rolls back at the approval (CutoverRejectedError)', async () => {
    const r = await walk({ cutover: 'manual' }, (task, _i, n) => {
      if (task === 'checkLag') return gate(n);
      if (task === 'verifyBeforeSwitch') return ok(task, { done: true });
      if (task === 'awaitApproval') return named('CutoverRejectedError', 'rollback requested in Slack by U1');
      if (task === 'rollback') return ok(task, { action: 'roll-back' });
      return ok(task);
    });
    expect(r.entered.slice(-3)).toEqual(['Roll back', STATE.afterRollback, STATE.rolledBack]);
    expect(r.outcome).toMatchObject({ status: 'succeeded', lastState: STATE.rolledBack });
    // A rollback that could undo nothing is not called rolled back.
    const kept = await walk({ cutover: 'manual' }, (task, _i, n) => {
      if (task === 'checkLag') return gate(n);
      if (task === 'verifyBeforeSwitch') return ok(task, { done: true });
      if (task === 'awaitApproval') return named('CutoverRejectedError', 'rollback requested in Slack by U1');
      if (task === 'rollback') return ok(task, { action: 'stop' });
      return ok(task);
    });
    expect(kept.outcome).toMatchObject({ status: 'failed', lastState: STATE.stopped });
  });

  it('rolls back on request and succeeds', async () => {
    const r = await walk({ action: 'rollback' }, (task) => ok(task, { action: 'roll-back' }));
    expect(r.entered.filter((s) => s === 'Roll back')).toHaveLength(1);
    expect(r.outcome).toMatchObject({ status: 'succeeded', lastState: STATE.rolledBack });
    expect(r.calls.get('assess')).toBeUndefined();
  });

  it('ends in "Rollback failed" with the rollback\'s error when the rollback fails', async () => {
    const r = await walk({ action: 'rollback' }, () => named('RollbackFailedError', 'target unreachable'));
    expect(r.outcome).toMatchObject({
      status: 'failed',
      lastState: STATE.rollbackFailed,
      error: 'RollbackFailedError',
      cause: 'target unreachable',
    });
  });

  it('bakes and cleans up only when asked to, and only after a verify that found the sides equal', async () => {
    const script =
      (outcome: string) =>
      (task: TaskName, _i: TaskInput, n: number): TaskOutput =>
        task === 'checkLag'
          ? gate(n)
          : task === 'verifyBeforeSwitch'
            ? ok(task, { done: true })
            : task === 'verify'
              ? ok(task, { outcome })
              : ok(task);
    const without = await walk({}, script('ok'));
    expect(without.entered).not.toContain('Clean up');
    const withCleanup = await walk({ cleanup: true, bakeSeconds: 0, provisionTarget: true }, script('ok'));
    expect(withCleanup.entered.slice(-3)).toEqual(['Bake', 'Clean up', 'Migrated']);
    expect(withCleanup.entered).toContain('Provision target');
    // A mismatch, or reverse replication behind: the way back stays, nothing is baked or cleaned up.
    for (const outcome of ['mismatch', 'behind']) {
      const held = await walk({ cleanup: true, bakeSeconds: 0 }, script(outcome));
      expect(held.entered.slice(-2)).toEqual(['Clean-up held: verify was not ok', 'Migrated']);
      expect(held.entered).not.toContain('Bake');
      expect(held.entered).not.toContain('Clean up');
    }
  });
});
