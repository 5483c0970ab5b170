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
  completeOutput,
  DEFAULTS,
  failureAction,
  NO_FACTS,
  parseMigrationConfig,
  SFN_HISTORY_EVENT_LIMIT,
  STATE,
  type TaskName,
  WORKFLOW_TASKS,
  workflowDefinition,
  workflowInput,
} from '../packages/core/src/index';
import { runWorkflowTask } from '../packages/postgres/src/index';

type State = Record<string, unknown> & { Type: string; Next?: string };
type Definition = { StartAt: string; States: Record<string, State> };

/** History events a state adds each time it is entered (a Lambda task 5, a callback task 6 with its TaskSubmitted). */
function eventsOf(s: State): number {
  if (s.Type !== 'Task') return 2;
  return String(s.Resource).endsWith('.waitForTaskToken') ? 6 : 5;
}

const AWAIT = WORKFLOW_TASKS.awaitApproval.state;

describe('the approval wait in the definition', () => {
  const def = workflowDefinition() as Definition;

  it('renews its window on States.Timeout and keeps a week of windows within a quarter of the history limit', () => {
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
    const perWindow = loop.reduce((n, name) => n + eventsOf(def.States[name]!), 0);
    expect(perWindow).toBe(APPROVAL_WINDOW_EVENTS);
    const begin = def.States[STATE.beginApprovalWait]!.Parameters as { windowSeconds: number; deadlineSeconds: number };
    expect(begin.windowSeconds).toBe(wait.TimeoutSeconds);
    expect(begin.deadlineSeconds).toBe(APPROVAL_DEADLINE_SECONDS);
    const windows = Math.ceil(begin.deadlineSeconds / begin.windowSeconds);
    const waiting = windows * perWindow;
    expect(waiting).toBeLessThanOrEqual(SFN_HISTORY_EVENT_LIMIT / 4);
    // Beside the longest catch-up the defaults allow, one sample a second (Step Functions' shortest
    // wait), and the rest of an execution, it still fits.
    const sampleLoop = [STATE.waitSample, WORKFLOW_TASKS.checkLag.state, STATE.caughtUp];
    const perSample = sampleLoop.reduce((n, name) => n + eventsOf(def.States[name]!), 0);
    const catchUp = (DEFAULTS.catchUpTimeoutMs / 1000) * perSample;
    expect(waiting + catchUp + 1500).toBeLessThan(SFN_HISTORY_EVENT_LIMIT);
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
      context: { Task: { Token: 'local:w1' }, State: { EnteredTime: since } },
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
