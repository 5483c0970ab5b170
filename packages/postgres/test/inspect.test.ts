import type { MigrationState } from '@pgferry/core';
import { describe, expect, it } from 'vitest';
import { driftStopsApply, forwardStopped, type LiveCatalog, liveAttention, type SideLive } from '../src/inspect';

const state = (over: Partial<MigrationState> = {}): MigrationState =>
  ({ id: 'm1', status: 'running', phase: 'bulk-load', phases: {}, events: [], ...over }) as MigrationState;
const side = (s: 'source' | 'target', over: Partial<SideLive> = {}): SideLive => ({
  side: s,
  frozen: false,
  sessions: 0,
  slots: [],
  publications: [],
  subscriptions: [],
  ...over,
});
const slot = (name: string, active: boolean, walStatus = 'reserved') => ({
  name,
  active,
  retainedBytes: 3 * 1024 ** 3,
  walStatus,
});
const switched = { cutover: { switchAt: '2026-11-26T00:00:00Z' } };

describe('liveAttention', () => {
  it('lets a copy whose process is connected read nothing from its slot yet', () => {
    expect(
      liveAttention(state(), side('source', { sessions: 3, slots: [slot('pgferry_m1', false)] }), side('target')),
    ).toEqual([]);
  });

  it('flags the unread slot of a dead process with its size and the commands that end it', () => {
    const a = liveAttention(state(), side('source', { slots: [slot('pgferry_m1', false)] }), side('target'));
    expect(a[0]).toBe(
      'replication slot pgferry_m1 on the source is not being read and retains 3.00 GiB of WAL, more with every write, until `pgferry resume --id m1` (goes on) or `pgferry rollback --id m1` (drops it)',
    );
    expect(a[1]).toMatch(/^no pgferry process is connected to either server, but the state says bulk-load is running/);
  });

  it('flags an unread slot while the process is connected once replication should be running', () => {
    const sub = { name: 'pgferry_m1', enabled: true, workerRunning: false, applyErrors: 4, prepared: false };
    const a = liveAttention(
      state({ phase: 'catch-up' }),
      side('source', { sessions: 1, slots: [slot('pgferry_m1', false)] }),
      side('target', { sessions: 1, subscriptions: [sub] }),
    );
    expect(a).toEqual([
      expect.stringMatching(/^replication slot pgferry_m1 on the source is not being read/),
      "subscription pgferry_m1 on the target: no apply worker running, 4 apply error(s) so far (the target's server log says why)",
    ]);
  });

  it('offers only resume while a switch that began is unfinished (rollback refuses then)', () => {
    const mid = state({ phase: 'cutover', cutover: { switchStartedAt: '2026-11-26T00:00:00Z' } });
    const a = liveAttention(mid, side('source', { frozen: true, slots: [slot('pgferry_m1', false)] }), side('target'));
    expect(a).toEqual([
      expect.stringMatching(/until `pgferry resume --id m1` \(finishes the switch\)$/),
      expect.stringMatching(/^no pgferry process is connected/),
    ]);
  });

  it('leaves reverse replication prepared for a cutover alone until the switch, and flags it disabled after', () => {
    const rev = { name: 'pgferry_m1_rev', enabled: false, workerRunning: false, applyErrors: 0, prepared: true };
    const sub = { name: 'pgferry_m1', enabled: true, workerRunning: true, applyErrors: 0 };
    const before = liveAttention(
      state({ phase: 'catch-up' }),
      side('source', { sessions: 1, slots: [slot('pgferry_m1', true)], subscriptions: [rev] }),
      side('target', { sessions: 1, subscriptions: [{ ...sub, prepared: false }] }),
    );
    expect(before).toEqual([]);
    const after = liveAttention(
      state({ status: 'cut-over', phase: 'verify', ...switched }),
      side('source', { frozen: true, subscriptions: [rev] }),
      side('target'),
    );
    expect(after).toContain('subscription pgferry_m1_rev on the source is disabled: nothing replicates');
  });

  it('notices a rollback killed after its switch back was recorded, while the state still says cut-over', () => {
    const killed = state({
      status: 'cut-over',
      phase: 'rollback',
      cutover: { switchAt: '2026-11-26T00:00:00Z' },
      rollback: { freezeAt: '2026-11-27T00:00:00Z', switchAt: '2026-11-27T00:00:01Z' },
    });
    expect(liveAttention(killed, side('source'), side('target', { frozen: true }))).toEqual([
      'a rollback switched the application back to the source at 2026-11-27T00:00:01Z and stopped before it finished (the state still says cut-over): `pgferry rollback --id m1` finishes it',
    ]);
  });

  it('says a slot that lost its WAL cannot replicate any more', () => {
    const a = liveAttention(state(), side('source', { slots: [slot('pgferry_m1', false, 'lost')] }), side('target'));
    expect(a[0]).toMatch(/has lost WAL it needed .* `pgferry rollback --id m1`, then migrate again$/);
  });

  it('expects a read-only source after the switch and a read-only target after a rollback', () => {
    const after = state({ status: 'cut-over', phase: 'verify', ...switched });
    const rev = { name: 'pgferry_m1_rev', enabled: true, workerRunning: true, applyErrors: 0, prepared: false };
    expect(
      liveAttention(
        after,
        side('source', { frozen: true, subscriptions: [rev] }),
        side('target', { slots: [slot('pgferry_m1_rev', true)] }),
      ),
    ).toEqual([]);
    const back = state({ status: 'rolled-back', phase: 'rollback', ...switched, rollback: { switchAt: 'x' } });
    expect(liveAttention(back, side('source'), side('target', { frozen: true }))).toEqual([]);
  });

  it('flags the database the application writes to when an interrupted freeze left it read-only', () => {
    const interrupted = state({ phase: 'cutover', cutover: { freezeAt: '2026-11-26T00:00:00Z' } });
    expect(liveAttention(interrupted, side('source', { frozen: true }), side('target'))).toContain(
      'the source database, which the application writes to, is read-only (default_transaction_read_only) and no pgferry process is working on it: a cutover was interrupted: `pgferry resume --id m1` finishes or undoes it, `pgferry rollback --id m1` unfreezes the source',
    );
    // No freeze recorded (pgferry records it before freezing): someone else's, which no pgferry command resets.
    expect(liveAttention(state({ phase: 'catch-up' }), side('source', { frozen: true }), side('target'))).toContain(
      "the source database, which the application writes to, is read-only (default_transaction_read_only) and no pgferry process is working on it: not frozen by this migration (it recorded no freeze), so pgferry leaves it so: whoever froze it (another migration's cutover, a DBA) reopens it, with `ALTER DATABASE … RESET default_transaction_read_only`",
    );
    const midRollback = state({ status: 'cut-over', phase: 'rollback', ...switched });
    expect(liveAttention(midRollback, side('source', { frozen: true }), side('target', { frozen: true }))).toEqual([
      'the target database, which the application writes to, is read-only (default_transaction_read_only) and no pgferry process is working on it: a rollback was interrupted: `pgferry rollback --id m1` finishes it',
    ]);
    // The same freeze with its process still at work is the write gap itself.
    expect(
      liveAttention(midRollback, side('source', { frozen: true }), side('target', { frozen: true, sessions: 1 })),
    ).toEqual([]);
  });

  it('reports a server it could not reach, and claims nothing about a process it could not see', () => {
    expect(liveAttention(state(), { ...side('source'), error: 'timeout' }, side('target'))).toEqual([
      'could not check the source: timeout',
    ]);
    expect(
      liveAttention(
        state({ status: 'awaiting-cutover', phase: 'catch-up' }),
        { ...side('source'), error: 'no PostgreSQL server answered' },
        side('target'),
      ),
    ).toEqual(['could not check the source: no PostgreSQL server answered']);
  });

  it('says what stopped the process when its record says (a signal), and guesses only otherwise', () => {
    const [line] = liveAttention(state(), side('source'), side('target'), { stoppedBy: 'stopped by SIGTERM' });
    expect(line).toBe(
      'no pgferry process is connected to either server, but the state says bulk-load is running: the process was stopped by SIGTERM; `pgferry resume --id m1` goes on',
    );
  });
});

describe('forwardStopped', () => {
  const sub = { name: 'pgferry_m1', enabled: true, workerRunning: true, applyErrors: 3, prepared: false };
  const live = (over: Partial<SideLive> = {}, drift?: string[]) => ({
    at: '2026-12-07T00:00:00Z',
    source: side('source'),
    target: side('target', { subscriptions: [sub], ...over }),
    attention: [],
    ...(drift ? { catalog: { drift, unreplicated: [], beforeCutover: [] } } : {}),
  });
  const waiting = state({ status: 'awaiting-cutover', phase: 'catch-up' });

  it('is silent while a worker applies, whatever errors it counted since its creation', () => {
    expect(forwardStopped(waiting, live())).toBeUndefined();
  });

  it('names a disabled or missing subscription and a missing worker, before the switch only (drift is said apart)', () => {
    expect(
      forwardStopped(waiting, live({}, ['column public.t.x (int) exists on the source but not on the target'])),
    ).toBeUndefined();
    expect(forwardStopped(waiting, live({ subscriptions: [{ ...sub, enabled: false }] }))).toBe(
      'subscription pgferry_m1 on the target is disabled',
    );
    expect(forwardStopped(waiting, live({ subscriptions: [] }))).toBe('subscription pgferry_m1 is not on the target');
    expect(forwardStopped(waiting, live({ subscriptions: [{ ...sub, workerRunning: false }] }))).toBe(
      'no apply worker runs for subscription pgferry_m1 on the target',
    );
    expect(forwardStopped(state({ ...switched }), live({ subscriptions: [] }))).toBeUndefined();
    expect(forwardStopped(waiting, live({ error: 'timeout' }))).toBeUndefined();
  });
});

describe('liveAttention with the catalogs status read', () => {
  const catalog = (over: Partial<LiveCatalog> = {}): LiveCatalog => ({
    drift: [],
    unreplicated: [],
    beforeCutover: [],
    ...over,
  });
  const waiting = state({ status: 'awaiting-cutover', phase: 'catch-up' });

  it('says a write stops the apply only for drift that does: a column the target lacks or has of another type', () => {
    const [index] = liveAttention(waiting, side('source'), side('target'), {
      catalog: catalog({ drift: ['index public.i on public.t exists on the source but not on the target'] }),
    });
    expect(index).toMatch(
      /^the source's schema changed and the target's did not: index public\.i .*\. The cutover gate stays closed until the two match\. Run the same DDL/,
    );
    for (const d of [
      'column public.t.x (int) exists on the source but not on the target',
      'column public."my t".x is bigint on the source but integer on the target',
    ]) {
      expect(driftStopsApply(d)).toBe(true);
      const [line] = liveAttention(waiting, side('source'), side('target'), { catalog: catalog({ drift: [d] }) });
      expect(line).toContain(
        'until then a write to a table with a column the target lacks (or has of another type) stops replication',
      );
    }
    expect(driftStopsApply('column public.t.x exists on the target but was dropped on the source')).toBe(false);
  });

  it('names tables not replicated, what the cutover needs, and a catalog read that failed', () => {
    const a = liveAttention(waiting, side('source'), side('target'), {
      catalog: catalog({
        unreplicated: ['table public.c is not replicated (…)'],
        beforeCutover: ['role r …', 'sequence s …'],
      }),
    });
    expect(a).toEqual([
      'table public.c is not replicated (…)',
      'before the cutover can switch, put right: role r …; sequence s …',
    ]);
    expect(
      liveAttention(waiting, side('source'), side('target'), {
        catalog: catalog({ error: 'canceling statement due to statement timeout' }),
      }),
    ).toEqual([
      'could not compare the two catalogs (canceling statement due to statement timeout): status cannot tell whether DDL on the source, a table not replicated or what the cutover needs keeps the cutover gate closed',
    ]);
  });
});
