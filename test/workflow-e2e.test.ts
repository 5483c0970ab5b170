/**
 * The whole workflow definition run locally (aws-local-stepfunctions, tasks in-process through
 * runWorkflowTask) on a real PostgreSQL pair under a live writer: the CLI's commands are executions
 * of it, and each leaves its history, state by state, for `pgferry status`.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { STATE, WalRetentionExceededError } from '@pgferry/core';
import { describe, expect, it } from 'vitest';
import { describeExecution, readExecution } from '../packages/cli/src/local-runtime';
import { advance, rollbackMigration } from '../packages/cli/src/runner';
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
    expect(execution).toMatchObject({ command: 'cutover', status: 'succeeded', lastState: STATE.migrated });
    const visited = tasksOf(execution?.states ?? []);
    // A new execution: the done phases answer from their done-checks, the approval is given.
    expect(visited.slice(0, 6)).toEqual([
      'Start',
      'Migrate or roll back?',
      'Assess source',
      'Where does the migration stand?',
      'Target to provision?',
      'Prepare schema',
    ]);
    expect(visited).toContain('Verify before cutover');
    expect(visited.slice(-3)).toEqual(['Verify', 'Clean up requested?', 'Migrated']);
    expect(visited).not.toContain('Await cutover approval');
    const cutState = execution?.states.find((s) => s.state === 'Cut over');
    expect(cutState?.summary).toMatch(/write gap/);
    expect(execution?.states.find((s) => s.state === 'Prepare schema')?.summary).toMatch(/^already done/);

    // status shows it state by state, the catch-up loop folded into one line.
    const status = await run(['status', '--id', m.id, '--offline']);
    expect(status.stdout).toContain('Execution (cutover');
    expect(status.stdout).toMatch(/Check lag ×\d+/);
    expect(status.stdout).toMatch(/Cut over\s+.*write gap/);
    // Only the migration id travels in the execution: no password in the history.
    expect(readFileSync(`${rt.stateDir}/${m.id}.execution`, 'utf8')).not.toContain(pair.sourceUrl.split('@')[0]);
  });

  it('rolls back after the cutover through a rollback execution, losing nothing', async () => {
    const { pair, rt } = await fixture.setup('wf_back', 300);
    const writer = fixture.writer(rt);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    await advance(rt, m.id, { cutover: 'auto' });
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
});
