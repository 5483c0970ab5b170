import { describe, expect, it } from 'vitest';
import {
  APPLY_RATE_FLOOR_BPS,
  DEFAULTS,
  type LagPoint,
  lagFigures,
  lagReasons,
  lagTimeMs,
  predictDrainMs,
} from '../src/index';

const MB = 1000 * 1000;
const limits = { maxLagBytes: DEFAULTS.maxLagBytes, maxLagMs: DEFAULTS.maxLagMs, maxDrainMs: DEFAULTS.maxDrainMs };

/** Readings every 500 ms: the source writing `gen` bytes/s, the subscriber confirming `applied` bytes/s. */
function series(n: number, gen: number, applied: number, start = { current: 1e9, confirmed: 1e9 }): LagPoint[] {
  return Array.from({ length: n }, (_, i) => ({
    t: 1_000_000 + i * 500,
    current: start.current + (gen * i) / 2,
    confirmed: start.confirmed + (applied * i) / 2,
  }));
}

describe('lag in bytes and time', () => {
  it('is zero when the subscriber has confirmed everything', () => {
    expect(lagTimeMs(series(5, 10 * MB, 10 * MB))).toBe(0);
    expect(lagFigures(series(5, 10 * MB, 10 * MB)).bytes).toBe(0);
  });

  it('tells how long ago the source wrote what the subscriber confirmed last', () => {
    // The source writes 10 MB/s; the subscriber is exactly 3 MB (300 ms) behind on the last reading.
    const points = series(6, 10 * MB, 10 * MB, { current: 1e9, confirmed: 1e9 - 3 * MB });
    expect(lagTimeMs(points)).toBe(300);
  });

  it('reads the time lag as at least the age of the oldest reading when the subscriber is behind all of them', () => {
    const points = series(4, 10 * MB, 0);
    expect(lagTimeMs(points)).toBe(1500);
  });

  it('keeps the gate closed on a backlog that grows from 43 MB to 81 MB, whatever replay_lag says', () => {
    // The churn: five samples over which unconfirmed WAL grew from 43 MB to 81 MB.
    const points = series(5, 40 * MB, 21 * MB, { current: 2e9, confirmed: 2e9 - 43 * MB });
    const history = points.map((_, i) => lagFigures(points.slice(0, i + 1)));
    const now = history.at(-1)!;
    expect(Math.round(now.bytes / MB)).toBe(81);
    const reasons = lagReasons(now, history[0], limits);
    expect(reasons.join('; ')).toMatch(/lag 77\.2 MiB ≥ 16\.0 MiB/);
    expect(reasons.join('; ')).toMatch(/lag growing: /);
    expect(reasons.join('; ')).toMatch(/drain predicted at \d+ ms, over the 1000 ms budget/);
  });

  it('keeps the gate closed on a backlog under the limits that grows', () => {
    const points = series(5, 8 * MB, 6 * MB, { current: 3e9, confirmed: 3e9 - 1 * MB });
    const history = points.map((_, i) => lagFigures(points.slice(0, i + 1)));
    const reasons = lagReasons(history.at(-1)!, history[0], limits);
    expect(reasons.some((r) => r.startsWith('lag growing'))).toBe(true);
  });

  it('opens on a steady OLTP backlog of a few kB', () => {
    const points = series(5, 2 * MB, 2 * MB, { current: 4e9, confirmed: 4e9 - 20_000 });
    const history = points.map((_, i) => lagFigures(points.slice(0, i + 1)));
    expect(lagReasons(history.at(-1)!, history[0], limits)).toEqual([]);
  });

  it('predicts a drain from the measured apply rate, never faster than the floor', () => {
    expect(predictDrainMs(50 * MB, 25 * MB)).toBe(2000);
    expect(predictDrainMs(APPLY_RATE_FLOOR_BPS / 2, 0)).toBe(500);
    expect(predictDrainMs(0, 0)).toBe(0);
  });
});
