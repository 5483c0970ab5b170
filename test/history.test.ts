/**
 * A migration's history kept whole: every attempt of every phase (a catch-up gone back to after a
 * drain over budget, a phase cut off by a killed process), as status and the report show them; and
 * the whole lag series' bound (every sample of the last hour, one point per minute before).
 */
import { describe, expect, it } from 'vitest';
import { describeStatus } from '../packages/cli/src/status';
import {
  bucketsToThin,
  DrainTimeoutError,
  LAG_SERIES,
  type LagSample,
  lagBucket,
  lagGapMs,
  lagSegments,
  type MigrationState,
  mergeLagSeries,
  parseMigrationConfig,
  peakOfBucket,
  phaseAttempts,
} from '../packages/core/src/index';
import { type PhaseContext, type PhaseListener, phaseStarted, runPhase } from '../packages/postgres/src/index';

function migration(): MigrationState {
  const at = '2026-12-06T10:00:00.000Z';
  return {
    id: 'h1',
    version: 0,
    createdAt: at,
    updatedAt: at,
    status: 'running',
    phase: 'assess',
    config: parseMigrationConfig({
      id: 'h1',
      sourceUrl: 'postgres://app:***@old-db:5432/shop',
      targetUrl: 'postgres://app:***@new-db:5432/shop',
    }),
    phases: {},
    events: [],
  };
}

/** A phase context over a state in memory: what runPhase and the phase bookkeeping read and write. */
function memoryContext(initial: MigrationState): PhaseContext {
  let state = initial;
  return {
    get state() {
      return state;
    },
    async update(change: (s: MigrationState) => void) {
      const next = structuredClone(state);
      change(next);
      state = { ...next, version: next.version + 1 };
    },
  } as unknown as PhaseContext;
}

const quiet: PhaseListener = { log: () => {} };
const done = (summary: string) => async () => summary;

describe('the history of phases', () => {
  it('keeps a catch-up left for a cutover that went back, the failed cutover and the one after, in order', async () => {
    const ctx = memoryContext(migration());
    await runPhase(ctx, 'assess', done('no blockers'), quiet);
    await runPhase(ctx, 'catch-up', done('caught up'), quiet);
    const drain = new DrainTimeoutError('the target did not confirm 0/3000 within the drain budget of 300 ms');
    await expect(runPhase(ctx, 'cutover', () => Promise.reject(drain), quiet)).rejects.toBe(drain);
    await runPhase(ctx, 'catch-up', done('caught up again'), quiet);
    await runPhase(ctx, 'cutover', done('write gap 120 ms'), quiet);

    const s = ctx.state;
    expect(s.phaseHistory?.map((a) => [a.phase, a.outcome])).toEqual([
      ['assess', 'done'],
      ['catch-up', 'done'],
      ['cutover', 'failed'],
      ['catch-up', 'done'],
      ['cutover', 'done'],
    ]);
    expect(s.phaseHistory?.[2]?.summary).toBe(`DrainTimeoutError: ${drain.message}`);
    for (const a of s.phaseHistory ?? [])
      expect(Date.parse(a.endedAt!)).toBeGreaterThanOrEqual(Date.parse(a.startedAt));
    // The per-phase record keeps the last attempt, as the done-checks expect.
    expect(s.phases['catch-up']?.summary).toBe('caught up again');
    expect(s.phases.cutover?.attempts).toBe(2);

    const text = describeStatus(s);
    const lines = text.split('\n').filter((l) => /^ {4}\S/.test(l));
    expect(lines.map((l) => l.trim().split(/\s{2,}| \d/)[0])).toEqual([
      'Assess source',
      'Catch up (1st)',
      'Cut over (1st)',
      'Catch up (2nd)',
      'Cut over (2nd)',
    ]);
    expect(lines[2]).toMatch(
      /Cut over \(1st\)\s+[\d:.]+ → [\d:.]+\s+[\d.]+ s {2}failed: DrainTimeoutError: the target did not confirm/,
    );
    expect(lines[4]).toMatch(/Cut over \(2nd\)\s+[\d:.]+ → [\d:.]+\s+[\d.]+ s {2}write gap 120 ms/);
  });

  it('marks an attempt cut off by a killed process interrupted when the next one starts', async () => {
    const ctx = memoryContext(migration());
    await phaseStarted(ctx, 'bulk-load', quiet); // the process dies here: no end, no failure
    await runPhase(ctx, 'bulk-load', done('6 tables'), quiet);
    expect(ctx.state.phaseHistory?.map((a) => [a.phase, a.outcome])).toEqual([
      ['bulk-load', 'interrupted'],
      ['bulk-load', 'done'],
    ]);
    expect(describeStatus(ctx.state)).toMatch(/Bulk load \(1st\)\s+[\d:.]+ → interrupted/);
  });

  it('shows a state written before the history from its phase records', () => {
    const s: MigrationState = {
      ...migration(),
      phases: {
        assess: { startedAt: '2026-12-06T10:00:00.000Z', endedAt: '2026-12-06T10:00:01.000Z', summary: 'ok' },
        'bulk-load': { startedAt: '2026-12-06T10:00:02.000Z' },
      },
    };
    expect(phaseAttempts(s).map((a) => [a.phase, a.outcome])).toEqual([
      ['assess', 'done'],
      ['bulk-load', undefined],
    ]);
  });
});

describe('the whole lag series', () => {
  const at = (minutes: number, seconds = 0) =>
    new Date(Date.parse('2026-12-06T08:00:00.000Z') + minutes * 60_000 + seconds * 1000).toISOString();

  it('thins a minute to its peak, and only the minutes more than an hour older than the newest sample', () => {
    const minute: LagSample[] = [
      { at: at(0, 5), bytes: 10, ms: 900 },
      { at: at(0, 25), bytes: 700, ms: 50 },
      { at: at(0, 45), bytes: 20, ms: 10, appliedBps: 5 },
    ];
    expect(peakOfBucket(minute)).toEqual({ at: at(0, 45), bytes: 700, ms: 900, appliedBps: 5, of: 3 });
    expect(lagBucket(at(0, 45))).toBe('2026-12-06T08:00');
    const buckets = [0, 1, 2, 30, 61, 62].map((m) => lagBucket(at(m)));
    // Newest sample at 09:02:10: the hour of full samples starts at 08:02.
    expect(bucketsToThin(buckets, at(62, 10))).toEqual(['2026-12-06T08:00', '2026-12-06T08:01']);
    expect(LAG_SERIES.fullMs).toBe(3_600_000);
  });

  it('merges the parts of a series once each, oldest first, and cuts it where sampling stopped', () => {
    const a = [{ at: at(0), bytes: 1, ms: 1 }];
    const b = [
      { at: at(0), bytes: 1, ms: 1 },
      { at: at(1), bytes: 2, ms: 2 },
    ];
    const later = [{ at: at(600), bytes: 3, ms: 3 }];
    const merged = mergeLagSeries(later, b, a);
    expect(merged.map((p) => p.bytes)).toEqual([1, 2, 3]);
    // Minutes apart is sampling; ten hours apart is a stop (a resume the next day).
    expect(lagSegments(merged, lagGapMs(500)).map((part) => part.length)).toEqual([2, 1]);
  });
});

describe('the status of a local migration while a command works on it', () => {
  it('names the command that continued its execution last (a cutover going on from where migrate waited)', () => {
    const execution = {
      migrationId: 'h1',
      command: 'migrate',
      input: {} as never,
      startedAt: '2026-12-06T10:00:00.000Z',
      status: 'running' as const,
      states: [],
      continued: [{ command: 'cutover', at: '2026-12-06T11:00:00.000Z' }],
    };
    expect(describeStatus(migration(), execution)).toContain(
      'next: a pgferry cutover is working on it (since 2026-12-06T11:00:00.000Z)',
    );
    expect(describeStatus(migration(), { ...execution, continued: undefined })).toContain(
      'next: a pgferry migrate is working on it (since 2026-12-06T10:00:00.000Z)',
    );
  });
});

describe('the status of a migration whose catch-up continued in a new execution (deployed)', () => {
  it('names the execution that runs it now and says it continued', () => {
    const continued: MigrationState = {
      ...migration(),
      phase: 'catch-up',
      execution: { name: 'h1-continued-2', number: 2, since: '2026-12-06T11:00:00.000Z' },
    };
    expect(describeStatus(continued, undefined, true)).toContain(
      'next: its execution (named h1-continued-2: continued in execution 2) is working on it',
    );
    expect(describeStatus(migration(), undefined, true)).toContain('next: its execution (named h1) is working on it');
    // Resumed after a stop (`pgferry start --id`, `/pgferry resume`): said so, not "continued".
    const resumed = { ...continued, execution: { name: 'h1-resumed-3', number: 3, since: '2026-12-06T12:00:00.000Z' } };
    expect(describeStatus(resumed, undefined, true)).toContain(
      'next: its execution (named h1-resumed-3: resumed in execution 3) is working on it',
    );
  });
});
