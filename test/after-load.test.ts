/**
 * The work the load leaves to the target while replication runs (statistics, foreign keys added NOT
 * VALID): where it runs (the execution's session locally; the worker, never a Lambda invocation, in
 * AWS) and what a failure of it does (a resumable stop, never a rollback of the load).
 */
import type { TaskCallbacks } from '@pgferry/core';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { advance, openSession } from '../packages/cli/src/runner';
import { bulkLoad, prepareSchema, runWorkflowTask, startReplication } from '../packages/postgres/src/index';
import { migrationFixture, newMigration, sleep } from './harness/migration';
import { leftovers, type Pair } from './harness/pairs';

const fixture = migrationFixture();

const unvalidated = async (pair: Pair) =>
  (
    await pair.target("SELECT conname FROM pg_constraint WHERE contype = 'f' AND NOT convalidated ORDER BY conname")
  ).map((r) => r.conname);

const afterLoadSessions = (pair: Pair) =>
  pair.target("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgferry:%:validate'");

/** A migration loaded and replicating, the work after the load left as the load leaves it. */
async function loaded(label: string, extra: Parameters<typeof newMigration>[2] = {}) {
  const { pair, rt } = await fixture.setup(label, 300);
  const m = await newMigration(rt, pair, { cutover: 'manual', ...extra });
  const session = await openSession(rt, m.id);
  try {
    await prepareSchema(session.ctx);
    await bulkLoad(session.ctx);
    await startReplication(session.ctx);
  } finally {
    await session.close();
  }
  return { pair, rt, m, lambda: { store: rt.store, log: () => {} } };
}

describe('the work after the load', () => {
  it('stops resumable when a foreign key fails its validation, keeps it listed, and resumes once the rows are fixed', async () => {
    const { pair, rt } = await fixture.setup('fkbad', 300);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    // Before its VALIDATE, a row the key refuses appears on the target (written past the key, as a
    // trigger-less bulk fix or a replica-role session could).
    let planted = false;
    rt.faults = {
      beforeValidate: async (drift) => {
        if (planted || !drift.includes('orders_customer_id_fkey')) return;
        planted = true;
        await pair.target(
          'SET session_replication_role = replica; INSERT INTO orders (id, customer_id, amount) VALUES (900001, 900001, 1)',
        );
      },
    };
    const err = await advance(rt, m.id, { cutover: 'manual' }).catch((e) => e);
    expect(planted).toBe(true);
    expect(err.name, String(err)).toBe('AfterLoadFailedError');
    expect(err.message).toMatch(/foreign key orders_customer_id_fkey on public\.orders could not be validated/);
    expect(err.hint).toContain(`pgferry resume --id ${m.id}`);
    expect(err.exitCode).toBe(9);
    const stopped = await rt.store.get(m.id);
    expect(stopped.status).toBe('running');
    expect(stopped.failure?.name).toBe('AfterLoadFailedError');
    expect(stopped.foreignKeysToValidate?.map((f) => f.name)).toContain('orders_customer_id_fkey');
    // Nothing thrown away, nothing left running on the target.
    expect(await leftovers(pair)).toContain(`source slot pgferry_${m.id}`);
    expect(await afterLoadSessions(pair)).toEqual([]);
    expect(await unvalidated(pair)).toContain('orders_customer_id_fkey');

    await pair.target('DELETE FROM orders WHERE id = 900001');
    const done = await advance(rt, m.id, { cutover: 'manual' });
    expect(done.failure).toBeUndefined();
    expect(done.foreignKeysToValidate).toBeUndefined();
    expect(done.phases['catch-up']?.endedAt).toBeTruthy();
    expect(await unvalidated(pair)).toEqual([]);
  });

  it('is handed to the worker by a "Check lag" with no session of its own, which runs it to the end', async () => {
    const { pair, rt, m, lambda } = await loaded('fkworker');
    const left = await rt.store.get(m.id);
    expect(left.foreignKeysToValidate?.length).toBe(2);
    expect(await unvalidated(pair)).toEqual(['invoices_order_id_fkey', 'orders_customer_id_fkey']);

    // As a Lambda invocation runs it (`lambda`): no session between samples.
    const handed = (await runWorkflowTask('checkLag', { migrationId: m.id }, lambda)) as Record<string, unknown>;
    expect(handed).toMatchObject({ ready: false, finishLoad: true });
    expect(handed.summary).toMatch(/2 foreign key\(s\) to validate on the target: handed to the worker/);
    // It started nothing that would outlive the invocation, and validated nothing.
    expect(await afterLoadSessions(pair)).toEqual([]);
    expect(await unvalidated(pair)).toHaveLength(2);

    const calls: unknown[][] = [];
    const callbacks: TaskCallbacks = {
      async succeed(token, output) {
        calls.push(['succeed', token, output]);
        return true;
      },
      async fail(token, error) {
        calls.push(['fail', token, error]);
        return true;
      },
      heartbeat: async () => {},
    };
    const finished = await runWorkflowTask(
      'finishLoad',
      { migrationId: m.id, taskToken: 'tok-1' },
      { ...lambda, callbacks },
    );
    expect(finished.summary).toMatch(/2 foreign key\(s\) validated on the target/);
    expect(calls).toEqual([['succeed', 'tok-1', finished]]);
    expect(await unvalidated(pair)).toEqual([]);
    expect((await rt.store.get(m.id)).foreignKeysToValidate).toBeUndefined();

    // The catch-up that follows samples the lag and opens, with nothing more to hand over.
    let gate: unknown;
    let last: Record<string, unknown> = {};
    for (let i = 0; i < 40 && last.ready !== true; i++) {
      last = (await runWorkflowTask('checkLag', { migrationId: m.id, gate }, lambda)) as Record<string, unknown>;
      expect(last.finishLoad ?? null, String(last.summary)).toBeNull();
      gate = last;
      await sleep(150);
    }
    expect(last.ready, String(last.summary)).toBe(true);
    expect(await afterLoadSessions(pair)).toEqual([]);
    // The timeline: the attempt that handed over ended so, not "interrupted" by the next one.
    const attempts = (await rt.store.get(m.id)).phaseHistory?.filter((a) => a.phase === 'catch-up') ?? [];
    expect(attempts.map((a) => a.outcome)).toEqual(['done', 'done']);
    expect(attempts[0]?.summary).toMatch(/handed to the worker/);
  });

  it("guards the source's disk when it hands the work over: past the abort limit the slot is dropped", async () => {
    const { pair, m, lambda } = await loaded('fkwal', { walWarnBytes: 1, walAbortBytes: 2 });
    const err = await runWorkflowTask('checkLag', { migrationId: m.id }, lambda).catch((e) => e);
    expect(err.name, String(err)).toBe('WalRetentionExceededError');
    expect(await leftovers(pair)).not.toContain(`source slot pgferry_${m.id}`);
  });

  it('records what is done while it runs, and stops resumable, naming the holder, when a lock holds it past the catch-up timeout', async () => {
    const { pair, rt, m, lambda } = await loaded('fklock', { catchUpTimeoutMs: 2500 });
    // The second key to validate waits behind this session's lock; the first does not.
    const [first, second] = (await rt.store.get(m.id)).foreignKeysToValidate ?? [];
    expect(first && second).toBeTruthy();
    const locker = new pg.Client({ connectionString: pair.targetUrl, application_name: 'nightly-job' });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query(`LOCK TABLE ${second?.table} IN SHARE UPDATE EXCLUSIVE MODE`);
      const err = await runWorkflowTask('finishLoad', { migrationId: m.id }, lambda).catch((e) => e);
      expect(err.name, String(err)).toBe('AfterLoadFailedError');
      expect(err.message).toMatch(/waits for a lock held by pid \d+ \(application "nightly-job"/);
      expect(err.message).toMatch(/for \d+ s$/);
      const state = await rt.store.get(m.id);
      expect(state.foreignKeysToValidate?.map((f) => f.name)).toEqual([second?.name]);
      // What was done stays done: the first key is valid, and no session of the work is left.
      expect(await unvalidated(pair)).toEqual([second?.name]);
      expect(await afterLoadSessions(pair)).toEqual([]);
      expect((state.lag?.length ?? 0) > 0).toBe(true);
      // "Record failure" gets only the error's name and message (as in AWS): the hint comes from the state.
      await runWorkflowTask(
        'recordFailure',
        { migrationId: m.id, error: { Error: err.name, Cause: JSON.stringify({ errorMessage: err.message }) } },
        lambda,
      );
      const recorded = await rt.store.get(m.id);
      expect(recorded.status).toBe('running');
      expect(recorded.failure).toMatchObject({ name: 'AfterLoadFailedError', hint: err.hint });
      expect(recorded.failure?.hint).toContain(`pgferry resume --id ${m.id}`);
      expect(recorded.lastError).toBeUndefined();
    } finally {
      await locker.end();
    }
    // The lock gone, the work goes on where it stopped.
    const finished = await runWorkflowTask('finishLoad', { migrationId: m.id }, lambda);
    expect(finished.summary).toMatch(/1 foreign key\(s\) validated/);
    expect(await unvalidated(pair)).toEqual([]);
  });

  it('stops its work when its execution is gone, leaving the state to whatever acts on the migration now', async () => {
    const { pair, rt, m, lambda } = await loaded('fkabort');
    const locker = new pg.Client({ connectionString: pair.targetUrl });
    await locker.connect();
    const stop = new AbortController();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE orders, invoices IN SHARE UPDATE EXCLUSIVE MODE');
      const running = runWorkflowTask('finishLoad', { migrationId: m.id }, { ...lambda, signal: stop.signal }).catch(
        (e) => e,
      );
      for (let i = 0; i < 100 && (await afterLoadSessions(pair)).length === 0; i++) await sleep(50);
      const before = (await rt.store.get(m.id)).version;
      stop.abort();
      const err = await running;
      expect(err.name).toBe('AfterLoadFailedError');
      expect(err.message).toContain('its execution ended');
      expect(await afterLoadSessions(pair)).toEqual([]);
      const after = await rt.store.get(m.id);
      expect(after.foreignKeysToValidate?.length).toBe(2);
      // Nothing written after the stop (a sample may have been recorded before it).
      expect(after.version - before).toBeLessThanOrEqual(1);
    } finally {
      await locker.end();
    }
  });

  it('ends the sessions a worker that died left running before the rollback a failure calls for', async () => {
    const { pair, rt, m, lambda } = await loaded('fkdead');
    // In catch-up, a worker killed mid-VALIDATE: its backend runs on, holding the table's lock.
    await rt.store.put({ ...(await rt.store.get(m.id)), phase: 'catch-up' });
    const orphan = new pg.Client({ connectionString: pair.targetUrl, application_name: `pgferry:${m.id}:validate` });
    orphan.on('error', () => {});
    await orphan.connect();
    await orphan.query('BEGIN');
    await orphan.query('LOCK TABLE orders IN SHARE UPDATE EXCLUSIVE MODE');
    const out = await runWorkflowTask(
      'rollback',
      { migrationId: m.id, error: { Error: 'ReplicationFailedError', Cause: 'the subscription stopped' } },
      lambda,
    );
    expect(out.action).toBe('roll-back');
    const state = await rt.store.get(m.id);
    expect(state.status, JSON.stringify(state.events.at(-1))).toBe('rolled-back');
    expect(await leftovers(pair)).toEqual([]);
    await orphan.end().catch(() => {});
  });
});
