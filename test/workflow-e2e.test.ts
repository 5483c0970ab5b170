/**
 * The whole workflow definition run locally (aws-local-stepfunctions, tasks in-process through
 * runWorkflowTask) on a real PostgreSQL pair under a live writer: the CLI's commands are executions
 * of it, and each leaves its history, state by state, for `pgferry status`.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { STATE, WalRetentionExceededError } from '@pgferry/core';
import pg from 'pg';
import { describe, expect, it, vi } from 'vitest';
import { LocalTaskCallbacks } from '../packages/cli/src/local-callbacks';
import { completeApproval, describeExecution, readExecution } from '../packages/cli/src/local-runtime';
import { advance, rollbackMigration } from '../packages/cli/src/runner';
import { openSession, runWorkflowTask, type TaskDeps } from '../packages/postgres/src/index';
import { frozen, migrationFixture, newMigration, sleep } from './harness/migration';
import { leftovers } from './harness/pairs';

const fixture = migrationFixture();
const bin = fileURLToPath(new URL('../packages/cli/bin/pgferry.mjs', import.meta.url));

const tasksOf = (states: { state: string }[]) =>
  states.map((s) => s.state).filter((s) => !['Wait for the next lag sample', 'Caught up?'].includes(s));

describe('the workflow definition, run locally', () => {
  it('migrates through the CLI under a live writer: every state recorded, no write lost', async () => {
    const { pair, rt } = await fixture.setup('wf_ok', 300);
    const writer = fixture.writer(rt);
    await sleep(200);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    // `pgferry resume` of the migration made above (the CLI's migrate creates its own id): the same
    // command line path, cutover automatic from here through `pgferry cutover`.
    const run = (args: string[]) =>
      promisify(execFile)(process.execPath, [bin, ...args, '--state-dir', rt.stateDir], { encoding: 'utf8' });
    const resumed = await run(['resume', '--id', m.id]);
    expect(resumed.stdout).toContain(`pgferry cutover --id ${m.id}`);
    const waiting = readExecution(rt.stateDir, m.id);
    expect(waiting?.status).toBe('awaiting-approval');
    expect(waiting?.lastState).toBe('Await cutover approval');
    expect((await rt.store.get(m.id)).status).toBe('awaiting-cutover');
    // It waits on a task token of the local registry, filed in the store for whoever approves.
    expect(waiting?.waiting).toMatchObject({ state: 'Await cutover approval', task: 'awaitApproval' });
    expect(waiting?.waiting?.token).toMatch(new RegExp(`^local:${m.id}:awaitApproval:`));
    const tokens = JSON.parse(readFileSync(`${rt.stateDir}/${m.id}.tokens.json`, 'utf8'));
    expect(tokens.awaitApproval).toBe(waiting?.waiting?.token);
    const waitingEntry = waiting?.states.findLast((s) => s.state === 'Await cutover approval');
    expect(waitingEntry?.leftAt).toBeUndefined();
    const waitingStatus = await run(['status', '--id', m.id, '--offline']);
    expect(waitingStatus.stdout).toContain(
      `\`pgferry cutover --id ${m.id}\` completes its task token and continues this execution`,
    );

    const cut = await run(['cutover', '--id', m.id]);
    expect(cut.stdout).toContain('The application now uses the target');
    await sleep(300);
    const stats = await writer.stop();
    expect(stats.servers.length).toBe(2);
    expect(await writer.lostWrites(pair.targetUrl)).toEqual([]);
    expect(stats.errors['23505'] ?? 0).toBe(0);

    const state = await rt.store.get(m.id);
    expect(state.status).toBe('cut-over');
    expect(state.cutover?.writeGapMs).toBeGreaterThan(0);
    const execution = readExecution(rt.stateDir, m.id);
    // ONE execution: started by resume, waiting at the approval, continued by cutover from there.
    expect(execution).toMatchObject({
      command: 'migrate',
      startedAt: waiting?.startedAt,
      status: 'succeeded',
      lastState: STATE.migrated,
      continued: [{ command: 'cutover' }],
    });
    expect(execution?.waiting).toBeUndefined();
    const visited = tasksOf(execution?.states ?? []);
    expect(visited.slice(0, 6)).toEqual([
      'Start',
      'Migrate or roll back?',
      'Assess source',
      'Where does the migration stand?',
      'Target to provision?',
      'Prepare schema',
    ]);
    expect(visited.filter((s) => s === 'Assess source')).toHaveLength(1);
    expect(visited.filter((s) => s === 'Await cutover approval')).toHaveLength(1);
    const approval = visited.indexOf('Await cutover approval');
    expect(visited.slice(approval, approval + 3)).toEqual([
      'Await cutover approval',
      'Cutover approved',
      'Begin catch-up',
    ]);
    expect(visited.indexOf('Verify before cutover')).toBeGreaterThan(approval);
    expect(visited.slice(-3)).toEqual(['Verify', 'Clean up requested?', 'Migrated']);
    // The approval state is one entry, from when the execution began to wait to when cutover approved it.
    const approved = execution?.states.find((s) => s.state === 'Await cutover approval');
    expect(approved?.enteredAt).toBe(waitingEntry?.enteredAt);
    expect(approved?.summary).toMatch(/^approved with pgferry cutover/);
    expect(Date.parse(approved?.leftAt ?? '')).toBeGreaterThan(Date.parse(execution?.continued?.[0]?.at ?? ''));
    // The token was taken once, and its completion is gone with the execution.
    expect(JSON.parse(readFileSync(`${rt.stateDir}/${m.id}.tokens.json`, 'utf8'))).toEqual({});
    expect(existsSync(`${rt.stateDir}/callbacks/${m.id}`)).toBe(false);
    const cutState = execution?.states.find((s) => s.state === 'Cut over');
    expect(cutState?.summary).toMatch(/write gap/);
    expect(execution?.states.find((s) => s.state === 'Prepare schema')?.summary).toBe('schema restored');

    // status shows it state by state, the catch-up loop folded into one line.
    const status = await run(['status', '--id', m.id, '--offline']);
    expect(status.stdout).toContain('Execution (migrate');
    expect(status.stdout).toContain(', continued by cutover at ');
    expect(status.stdout).toMatch(/Check lag ×\d+/);
    expect(status.stdout).toMatch(/Cut over\s+.*write gap/);
    // Only the migration id travels in the execution: no password in the history.
    expect(readFileSync(`${rt.stateDir}/${m.id}.execution`, 'utf8')).not.toContain(pair.sourceUrl.split('@')[0]);
  });

  it('continues a long catch-up in new executions (before the history limit) in the same process, loading nothing twice and losing no write', async () => {
    const { pair, rt } = await fixture.setup('wf_cont', 300);
    // Three samples an execution: the first catch-up and the one after the verify before the switch
    // take at least two each (lagSamples 2), so the migration goes on in at least one new execution.
    rt.workflow = { samplesPerExecution: 3 };
    const writer = fixture.writer(rt);
    await sleep(200);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    const state = await advance(rt, m.id, { cutover: 'auto' });
    await sleep(300);
    const stats = await writer.stop();
    expect(stats.servers.length).toBe(2);
    expect(await writer.lostWrites(pair.targetUrl)).toEqual([]);
    expect(state.status).toBe('cut-over');

    const execution = readExecution(rt.stateDir, m.id);
    expect(execution).toMatchObject({ command: 'migrate', status: 'succeeded', lastState: STATE.migrated });
    const continuedIn = execution?.continuedIn ?? [];
    expect(continuedIn.length).toBeGreaterThanOrEqual(1);
    expect(continuedIn.map((c) => [c.name, c.number])).toEqual(
      continuedIn.map((_, i) => [`${m.id}-continued-${i + 1}`, i + 1]),
    );
    // The store names the execution that runs the migration now, and says where it continued.
    expect(state.execution).toMatchObject({
      name: `${m.id}-continued-${continuedIn.length}`,
      number: continuedIn.length,
    });
    expect(state.events.map((e) => e.message)).toContainEqual(
      expect.stringMatching(new RegExp(`^continued in execution 1 \\(${m.id}-continued-1\\): the catch-up goes on`)),
    );
    // Each continued execution goes from its assessment straight back to the catch-up: the schema and the
    // data were loaded once, the verify before the switch ran once.
    const visited = (execution?.states ?? []).map((s) => s.state);
    expect(visited.filter((s) => s === STATE.continued)).toHaveLength(continuedIn.length);
    expect(visited.filter((s) => s === STATE.continueCatchUp)).toHaveLength(continuedIn.length);
    expect(visited.filter((s) => s === 'Assess source')).toHaveLength(continuedIn.length + 1);
    for (const once of ['Prepare schema', 'Bulk load', 'Start replication', 'Cut over', 'Verify'])
      expect(
        visited.filter((s) => s === once),
        once,
      ).toHaveLength(1);
    expect(rt.logs.filter((l) => l === 'start bulk-load')).toHaveLength(1);
    expect(rt.logs.filter((l) => l === 'start prepare-schema')).toHaveLength(1);
    // `pgferry status` shows the continuation.
    expect(describeExecution(execution!)).toContain(`, continued in execution 1 (${m.id}-continued-1) at `);
  });

  it("a continued execution's assessment ends none of the migration's sessions, and one started after a stop touches nothing", async () => {
    const { pair, rt } = await fixture.setup('wf_contassess', 50);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    const session = await openSession(rt.store, m.id, { listener: rt.events, artifactDir: rt.dir });
    const deps: TaskDeps = { store: rt.store, log: (l) => rt.logs.push(l), session: async () => session };
    try {
      await runWorkflowTask('assess', { migrationId: m.id, execution: m.id, executionNumber: 0 }, deps);
      // The catch-up's foreign-key validation runs in a session of this very process.
      const validate = new pg.Client({
        connectionString: pair.sourceUrl,
        application_name: `pgferry:${m.id}:validate`,
      });
      validate.on('error', () => {});
      await validate.connect();
      try {
        await runWorkflowTask(
          'assess',
          { migrationId: m.id, execution: `${m.id}-continued-1`, executionNumber: 1 },
          deps,
        );
        expect((await validate.query('SELECT 1 AS ok')).rows).toEqual([{ ok: 1 }]);
        expect((await rt.store.get(m.id)).execution).toMatchObject({ name: `${m.id}-continued-1`, number: 1 });
        // Rolled back meanwhile (Slack stopped the execution while its start of the next was in flight):
        // the late one stops without recording anything.
        await rt.store.put({ ...(await rt.store.get(m.id)), status: 'rolled-back' });
        const before = await rt.store.get(m.id);
        await expect(
          runWorkflowTask('assess', { migrationId: m.id, execution: `${m.id}-continued-2`, executionNumber: 2 }, deps),
        ).rejects.toMatchObject({ name: 'StateConflictError' });
        const after = await rt.store.get(m.id);
        expect([after.status, after.execution, after.events.length]).toEqual([
          'rolled-back',
          before.execution,
          before.events.length,
        ]);
        // A resumed execution (`pgferry start --id` after a stop, numbered on) does end them: a dead
        // process may have left them.
        await rt.store.put({ ...after, status: 'running' });
        await runWorkflowTask(
          'assess',
          { migrationId: m.id, execution: `${m.id}-resumed-3`, executionNumber: 3 },
          deps,
        );
        await expect(validate.query('SELECT 1')).rejects.toThrow();
        // Its event says it resumed the migration (not that a catch-up continued).
        expect((await rt.store.get(m.id)).events.at(-1)?.message).toBe(
          `resumed in execution 3 (${m.id}-resumed-3): the migration goes on from where ${m.id}-continued-1 stopped`,
        );
      } finally {
        await validate.end().catch(() => {});
      }
    } finally {
      await session.close();
    }
  });

  it('rolls back after the cutover through a rollback execution, losing nothing', async () => {
    const { pair, rt } = await fixture.setup('wf_back', 300);
    const writer = fixture.writer(rt);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    // The worker's callback tasks run in-process and complete their tokens through the local registry.
    const succeeded = vi.spyOn(LocalTaskCallbacks.prototype, 'succeed');
    await advance(rt, m.id, { cutover: 'auto' });
    const completed = succeeded.mock.calls.map(([token]) => token.split(':')[2]);
    succeeded.mockRestore();
    expect(completed).toEqual(['prepareSchema', 'bulkLoad', 'verifyBeforeSwitch', 'verify']);
    await sleep(300);
    const rolled = await rollbackMigration(rt, m.id);
    await sleep(300);
    const stats = await writer.stop();
    expect(rolled.status).toBe('rolled-back');
    expect(stats.servers.length).toBe(3); // source → target → source
    expect(await writer.lostWrites(pair.sourceUrl)).toEqual([]);
    expect(await frozen(pair, 'source')).toBe(false);
    const execution = readExecution(rt.stateDir, m.id);
    expect(execution).toMatchObject({ command: 'rollback', status: 'succeeded', lastState: STATE.rolledBack });
    expect(tasksOf(execution?.states ?? [])).toEqual([
      'Start',
      'Migrate or roll back?',
      'Roll back',
      STATE.afterRollback,
      STATE.rolledBack,
    ]);
  });

  it('ends in the Failed state with the reason, and leaves nothing behind, when catch-up fails', async () => {
    const { pair, rt } = await fixture.setup('wf_fail', 200);
    const writer = fixture.writer(rt);
    // Any retained WAL is past this limit: the first gate sample drops the slot to protect the source.
    const m = await newMigration(rt, pair, { cutover: 'auto', walAbortBytes: 1, walWarnBytes: 0 });
    const err = await advance(rt, m.id, { cutover: 'auto' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WalRetentionExceededError);
    const execution = readExecution(rt.stateDir, m.id);
    expect(execution?.status).toBe('failed');
    expect(execution?.lastState).toBe(STATE.failed);
    expect(execution?.error).toMatch(/^WalRetentionExceededError: slot pgferry_\w+ retained/);
    expect(tasksOf(execution?.states ?? []).slice(-4)).toEqual([
      'Check lag',
      'Roll back',
      STATE.afterRollback,
      STATE.failed,
    ]);
    expect(describeExecution(execution!)).toMatch(/Check lag ×1\s+ERROR WalRetentionExceededError/);
    const state = await rt.store.get(m.id);
    expect(state.status).toBe('rolled-back');
    expect(state.failure).toMatchObject({ name: 'WalRetentionExceededError', phase: 'catch-up' });
    // Nothing left: no slot, no publication, no subscription; the source takes writes.
    expect(await leftovers(pair)).toEqual([]);
    expect(await frozen(pair, 'source')).toBe(false);
    const before = (await writer.stop()).acked;
    expect(before).toBeGreaterThan(0);
    await pair.source("INSERT INTO audit_log (actor, action) VALUES ('test', 'after-failure')");
  });

  it('a cutover killed once it approved leaves a state the next cutover continues from, losing nothing', async () => {
    const { pair, rt } = await fixture.setup('wf_kill', 300);
    const writer = fixture.writer(rt);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    const waiting = readExecution(rt.stateDir, m.id);
    expect(waiting?.status).toBe('awaiting-approval');
    // kill -9 as soon as the approval is given (its completion written), before the execution goes on.
    const child = spawn(process.execPath, [bin, 'cutover', '--id', m.id, '--state-dir', rt.stateDir], {
      stdio: 'ignore',
    });
    const exited = new Promise((r) => child.on('exit', r));
    const dir = `${rt.stateDir}/callbacks/${m.id}`;
    const registry = new LocalTaskCallbacks(rt.stateDir);
    while (!registry.result(waiting?.waiting?.token ?? '-')) {
      if (child.exitCode !== null) throw new Error(`cutover exited (${child.exitCode}) before approving`);
      await sleep(2);
    }
    child.kill('SIGKILL');
    await exited;
    expect(await rt.store.takeTaskToken?.(m.id, 'awaitApproval')).toBeUndefined();
    // The next cutover goes on: the same execution when the killed one had not started it again,
    // otherwise a new one whose done-checks skip what is done.
    const state = await advance(rt, m.id, { cutover: 'now' });
    expect(state.status).toBe('cut-over');
    await sleep(300);
    await writer.stop();
    expect(await writer.lostWrites(pair.targetUrl)).toEqual([]);
    expect(await frozen(pair, 'target')).toBe(false); // the application writes there now
    const execution = readExecution(rt.stateDir, m.id);
    expect(execution).toMatchObject({ status: 'succeeded', lastState: STATE.migrated });
    expect(existsSync(dir)).toBe(false);
  });

  it('continues the waiting execution when an approval was given by a cutover that stopped before going on', async () => {
    const { pair, rt } = await fixture.setup('wf_cont', 200);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    await advance(rt, m.id, { cutover: 'manual' });
    const waiting = readExecution(rt.stateDir, m.id);
    // What a cutover does first; it stopped there (killed, its machine rebooted).
    expect(await completeApproval(rt, m.id)).toBe(true);
    expect(await completeApproval(rt, m.id)).toBe(false);
    const state = await advance(rt, m.id, { cutover: 'now' });
    expect(state.status).toBe('cut-over');
    const execution = readExecution(rt.stateDir, m.id);
    expect(execution).toMatchObject({
      startedAt: waiting?.startedAt,
      status: 'succeeded',
      continued: [{ command: 'cutover' }],
    });
    expect(tasksOf(execution?.states ?? []).filter((s) => s === 'Assess source')).toHaveLength(1);
  });
});
