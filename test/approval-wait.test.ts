/**
 * The approval wait in AWS: "Await cutover approval" waits one window at a time and is entered again on
 * each window's timeout (a new token, one more gate sample), until a person decides or the deadline
 * passes. Its cost in Step Functions history is derived from the definition itself; the definition is
 * run by aws-local-stepfunctions through window renewals, then an approval.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import validator from 'asl-validator';
import { StateMachine } from 'aws-local-stepfunctions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import '../packages/cli/src/local-workflow';
import { FileMigrationStore } from '../packages/cli/src/store';
import {
  APPROVAL_DEADLINE_SECONDS,
  APPROVAL_WINDOW_EVENTS,
  ApprovalTimeoutError,
  BULK_LOAD_STATES,
  completeOutput,
  DEFAULTS,
  failureAction,
  HISTORY_EVENT_BUDGET,
  historyEventsOf,
  NO_FACTS,
  PLAN_POLL_SECONDS,
  parseMigrationConfig,
  RETRY_EVENTS,
  SFN_HISTORY_EVENT_LIMIT,
  STATE,
  type TaskName,
  WORKFLOW_TASKS,
  workflowDefinition,
  workflowInput,
} from '../packages/core/src/index';
import { runWorkflowTask, VERIFY_BEFORE_SWITCH_ROUNDS } from '../packages/postgres/src/index';

type State = Record<string, unknown> & { Type: string; Next?: string };
type Graph = { StartAt: string; States: Record<string, State> };
type Definition = Graph;

const AWAIT = WORKFLOW_TASKS.awaitApproval.state;
const CHECK_LAG = WORKFLOW_TASKS.checkLag.state;

/** Every state of a graph and of the graphs inside it (Parallel branches, Map processors), with the Map it runs in. */
function allStates(graph: Graph, inMap?: string): { name: string; state: State; inMap?: string }[] {
  return Object.entries(graph.States).flatMap(([name, state]) => [
    { name, state, inMap },
    ...((state.Branches as Graph[] | undefined) ?? []).flatMap((b) => allStates(b, inMap)),
    ...(state.ItemProcessor ? allStates(state.ItemProcessor as Graph, name) : []),
  ]);
}

/** The most events one entry of a state adds: its own, every retry its Retry rules allow, a Parallel's or Map's start and end. */
function worstEntry(state: State): number {
  const retries = ((state.Retry as { MaxAttempts?: number }[] | undefined) ?? []).reduce(
    (n, r) => n + (r.MaxAttempts ?? 3),
    0,
  );
  const container = state.Type === 'Parallel' || state.Type === 'Map' ? 2 : 0;
  return historyEventsOf(state) + retries * RETRY_EVENTS + container;
}

/** The largest copyWorkers a migration config takes (what one Map can run at most iterations of). */
function maxCopyWorkers(): number {
  let n = 1;
  const parses = (k: number) => {
    try {
      parseMigrationConfig({ id: 'x1', sourceUrl: 'postgres://a@h/d', targetUrl: 'postgres://a@h2/d', copyWorkers: k });
      return true;
    } catch {
      return false;
    }
  };
  while (parses(n + 1) && n < 10_000) n++;
  return n;
}

describe('the approval wait in the definition', () => {
  const def = workflowDefinition() as Definition;

  it('renews its window on States.Timeout, one window a few events', () => {
    const wait = def.States[AWAIT]!;
    const renewal = (wait.Catch as { ErrorEquals: string[]; Next: string }[])[0]!;
    // The first catcher takes the window's timeout, before the failure policy's.
    expect(renewal.ErrorEquals).toEqual(['States.Timeout']);
    // The states one window goes through, from the renewal back to the wait.
    const loop: string[] = [];
    for (let name = renewal.Next; ; ) {
      loop.push(name);
      if (name === AWAIT) break;
      name = def.States[name]!.Next as string;
    }
    expect(loop.reduce((n, name) => n + historyEventsOf(def.States[name]!), 0)).toBe(APPROVAL_WINDOW_EVENTS);
    const begin = def.States[STATE.beginApprovalWait]!.Parameters as { windowSeconds: number; deadlineSeconds: number };
    expect(begin.windowSeconds).toBe(wait.TimeoutSeconds);
    expect(begin.deadlineSeconds).toBe(APPROVAL_DEADLINE_SECONDS);
  });

  it('keeps every execution under the history limit: its samples over all its catch-ups, one approval wait, and the rest at their worst', () => {
    const states = allStates(def);
    const cost = (name: string) => historyEventsOf(def.States[name]!);
    // The sample loop, read from the definition: Wait → Check lag → Caught up? → Wait.
    expect(def.States[STATE.waitSample]!.Next).toBe(CHECK_LAG);
    expect(def.States[CHECK_LAG]!.Next).toBe(STATE.caughtUp);
    const perSample = [STATE.waitSample, CHECK_LAG, STATE.caughtUp].reduce((n, s) => n + cost(s), 0);
    // The count is execution-wide: "Begin catch-up" (after a verify round, the approval, a drain over
    // budget) keeps it, and "Caught up?" continues in a new execution at the budget's figure.
    expect(def.States[STATE.beginCatchUp]!.Parameters).toMatchObject({ 'samples.$': '$.gate.samples' });
    const rule = (def.States[STATE.caughtUp]!.Choices as { And?: Record<string, unknown>[]; Next: string }[])[0]!;
    expect(rule.Next).toBe(STATE.continueAsNew);
    const samples = rule.And!.find((c) => 'NumericGreaterThanEquals' in c)!.NumericGreaterThanEquals as number;
    expect(rule.And!.find((c) => 'NumericGreaterThanEquals' in c)!.Variable).toBe('$.gate.samples');
    // One approval wait per execution ("Cutover approved" sets $.approved; the Choice waits only while it is false).
    const windows = Math.ceil(APPROVAL_DEADLINE_SECONDS / (def.States[AWAIT]!.TimeoutSeconds as number));
    const approvalWait = windows * cost(AWAIT);
    const loops = samples * perSample + approvalWait;
    expect(loops).toBeLessThanOrEqual(HISTORY_EVENT_BUDGET);
    expect(loops + perSample).toBeGreaterThan(HISTORY_EVENT_BUDGET);

    // Everything else, at its worst: each state entered as often as the definition lets it be, each
    // entry with every retry. Catch-up is entered again after each verify round, the approval and each
    // drain over budget; the Map runs a worker per share.
    const attempts = DEFAULTS.cutoverAttempts;
    const rounds = VERIFY_BEFORE_SWITCH_ROUNDS;
    const entries: Record<string, number> = {
      [STATE.beginCatchUp]: 1 + rounds + 1 + (attempts - 1),
      [WORKFLOW_TASKS.verifyBeforeSwitch.state]: rounds,
      [WORKFLOW_TASKS.cutover.state]: attempts,
      [STATE.drainAgain]: attempts,
      [STATE.countAttempt]: attempts - 1,
    };
    // Not counted here: the loops above, and the scaled-out load's wait for the copy plan (one poll
    // every few seconds while the coordinator creates its slot): bounded by that, below.
    const planPoll = new Set<string>([BULK_LOAD_STATES.wait, BULK_LOAD_STATES.read, BULK_LOAD_STATES.ready]);
    const loopStates = new Set<string>([STATE.waitSample, CHECK_LAG, STATE.caughtUp, AWAIT]);
    let rest = 0;
    for (const { name, state, inMap } of states) {
      if (loopStates.has(name) || planPoll.has(name)) continue;
      const times = (entries[name] ?? 1) * (inMap ? maxCopyWorkers() : 1);
      rest += times * (worstEntry(state) + (state.Type === 'Map' ? 2 * maxCopyWorkers() : 0));
    }
    expect(rest).toBeLessThanOrEqual(SFN_HISTORY_EVENT_LIMIT - HISTORY_EVENT_BUDGET);
    expect(loops + rest).toBeLessThan(SFN_HISTORY_EVENT_LIMIT);
    // The wait for the copy plan, at its longest in AWS: a poll every PLAN_POLL_SECONDS while the
    // coordinator's Fargate task starts (allowed 5 minutes) and creates its slot (at most
    // slotWaitTimeoutMs, which a plan cannot change from its default). It fits beside the rest.
    const byName = new Map(states.map((s) => [s.name, s.state]));
    const perPoll = [...planPoll].reduce((n, name) => n + historyEventsOf(byName.get(name)!), 0);
    const polls = Math.ceil((DEFAULTS.slotWaitTimeoutMs / 1000 + 5 * 60) / PLAN_POLL_SECONDS);
    expect(loops + rest + polls * perPoll).toBeLessThan(SFN_HISTORY_EVENT_LIMIT);
  });

  it('is valid ASL with a short window too, and ends the wait past its deadline as a resumable stop', () => {
    const short = workflowDefinition({ approvalWindowSeconds: 1 });
    const { isValid, errors } = validator(short as never);
    expect(errors).toEqual([]);
    expect(isValid).toBe(true);
    const catches = def.States[AWAIT]!.Catch as { ErrorEquals: string[]; Next: string }[];
    const route = catches.find((c) => c.ErrorEquals.includes('ApprovalTimeoutError'))?.Next;
    expect(route).toBe(WORKFLOW_TASKS.recordFailure.state);
    expect(failureAction('ApprovalTimeoutError', 'catch-up', NO_FACTS)).toBe('stop');
  });

  it('runs through two window renewals, then the approval, then the cutover (aws-local-stepfunctions)', async () => {
    const short = workflowDefinition({ approvalWindowSeconds: 1 }) as Definition;
    const entered: string[] = [];
    const waits: unknown[] = [];
    const never = new Promise<never>(() => {});
    let samples = 0;
    const handlers: Record<string, (input: unknown) => Promise<unknown>> = {};
    const ok = (task: TaskName, extra: object = {}) => completeOutput(task, { summary: task, ...extra });
    for (const [task, spec] of Object.entries(WORKFLOW_TASKS) as [TaskName, { state: string }][])
      handlers[spec.state] = async (p) => {
        const payload = (p as { Payload?: Record<string, unknown> }).Payload ?? {};
        const plain = (o: object) => ({ StatusCode: 200, Payload: o });
        switch (task) {
          case 'checkLag':
            return plain(ok(task, { ready: ++samples % 2 === 0, streak: 1, waitSeconds: 0, memory: { samples } }));
          case 'awaitApproval':
            waits.push(payload);
            // Nobody decides in the first two windows: their tokens time out.
            if (waits.length <= 2) return never;
            return ok(task);
          case 'verifyBeforeSwitch':
            return ok(task, { done: true, rounds: 1, outcome: 'ok' });
          default:
            return (WORKFLOW_TASKS[task] as { callback?: boolean }).callback ? ok(task) : plain(ok(task));
        }
      };
    const machine = new StateMachine(short as never, { validationOptions: { noValidate: true } });
    const since = '2026-12-07T03:00:00.000Z';
    const execution = machine.run(workflowInput({ migrationId: 'w1', cutover: 'manual' }) as never, {
      overrides: { taskResourceLocalHandlers: handlers as never, waitTimeOverrides: { [STATE.waitSample]: 0 } },
      context: { Execution: { Name: 'w1' }, Task: { Token: 'local:w1' }, State: { EnteredTime: since } },
    });
    const follow = (async () => {
      for await (const e of execution.eventLogs as AsyncIterable<{ type: string; state?: { name: string } }>)
        if (e.type === 'StateEntered' && e.state) entered.push(e.state.name);
    })();
    await execution.result;
    await follow;
    expect(entered.filter((s) => s === AWAIT)).toHaveLength(3);
    const after = entered.slice(entered.lastIndexOf(AWAIT) + 1);
    expect(after[0]).toBe(STATE.approved);
    expect(after).toContain(WORKFLOW_TASKS.cutover.state);
    // Entered once, before the first window; every window is told when the wait began and its deadline.
    expect(entered.filter((s) => s === STATE.beginApprovalWait)).toHaveLength(1);
    for (const w of waits)
      expect(w).toMatchObject({
        migrationId: 'w1',
        approvalWait: { since, windowSeconds: 1, deadlineSeconds: APPROVAL_DEADLINE_SECONDS },
        gate: { ready: true },
      });
  }, 20_000);
});

describe('"Await cutover approval" past its deadline', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pgferry-approval-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('ends the wait with ApprovalTimeoutError and leaves no stale token to click', async () => {
    const store = new FileMigrationStore(dir);
    const at = new Date().toISOString();
    await store.create(
      {
        id: 'late1',
        version: 0,
        createdAt: at,
        updatedAt: at,
        status: 'awaiting-cutover',
        phase: 'catch-up',
        config: parseMigrationConfig({
          id: 'late1',
          sourceUrl: 'postgres://app@127.0.0.1:1/shop',
          targetUrl: 'postgres://app@127.0.0.1:2/shop',
        }),
        phases: {},
        events: [],
      },
      { sourceUrl: 'postgres://app@127.0.0.1:1/shop', targetUrl: 'postgres://app@127.0.0.1:2/shop' },
    );
    await store.putTaskToken('late1', 'awaitApproval', 'token-of-the-last-window');
    const since = new Date(Date.now() - 3_600_000).toISOString();
    const run = runWorkflowTask(
      'awaitApproval',
      { migrationId: 'late1', taskToken: 'token-of-a-new-window', approvalWait: { since, deadlineSeconds: 1800 } },
      { store, log: () => {} },
    );
    await expect(run).rejects.toBeInstanceOf(ApprovalTimeoutError);
    await expect(run).rejects.toThrow(/nobody approved the cutover of migration late1 by /);
    expect(await store.takeTaskToken('late1', 'awaitApproval')).toBeUndefined();

    // Within the deadline, servers that do not answer do not end the wait: the new token is filed and
    // the approver is told the lag shown is older, and why.
    const waiting = await runWorkflowTask(
      'awaitApproval',
      {
        migrationId: 'late1',
        taskToken: 'token-of-a-new-window',
        approvalWait: { since: new Date().toISOString(), deadlineSeconds: 1800, windowSeconds: 600 },
      },
      { store, log: () => {} },
    );
    expect(waiting.summary).toMatch(
      /waiting for approval; no lag sample \(no PostgreSQL server answered at --source .*ECONNREFUSED/,
    );
    const s = await store.get('late1');
    expect(s.status).toBe('awaiting-cutover');
    expect(s.approvalWait).toMatchObject({
      windowSeconds: 600,
      sampleError: expect.stringContaining('ECONNREFUSED'),
    });
    expect(await store.takeTaskToken('late1', 'awaitApproval')).toBe('token-of-a-new-window');
  });
});
