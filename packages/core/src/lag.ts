/**
 * Lag of a logical subscriber, in bytes and in time, from a series of readings of the publisher:
 * its current WAL position and the slot's confirmed_flush_lsn. No I/O: the gate and the cutover feed it.
 *
 * Why not `pg_stat_replication.replay_lag`: for a logical subscriber it is NULL or stale exactly when
 * apply falls behind (it is refreshed by the subscriber's replies, which stop while it works through a
 * backlog), so a gate reading it opened on 80 MB of unconfirmed WAL.
 */

export interface LagPoint {
  /** When it was read (ms since the epoch). */
  t: number;
  /** The publisher's WAL position (bytes from 0/0). */
  current: number;
  /** What the subscriber has confirmed (bytes from 0/0). */
  confirmed: number;
}

export interface LagFigures {
  /** WAL the subscriber has not confirmed, WAL not yet sent included. */
  bytes: number;
  /** How long ago the publisher wrote the oldest WAL the subscriber has not confirmed. */
  ms: number;
  /** WAL written per second over the rate window. */
  generatedBps: number;
  /** WAL confirmed per second over the rate window. */
  appliedBps: number;
  /** How long the subscriber would take to confirm everything written until now. */
  predictedDrainMs: number;
}

/** Readings kept: the time lag can be told as far back as this. */
export const LAG_HISTORY = 240;
/** Rates are measured over the readings of the last few seconds. */
export const RATE_WINDOW_MS = 5_000;
/**
 * The apply rate assumed when the subscriber has shown no more than the source's own pace (it kept up,
 * so what it could do is unknown): small on purpose. A drain predicted with it is longer than the real
 * one, never shorter; the budget inside the write gap stays the last word.
 */
export const APPLY_RATE_FLOOR_BPS = 1024 * 1024;

/**
 * The time lag: when the publisher's WAL position was where the subscriber's confirmation is now,
 * found between two readings (interpolated: WAL written at an even pace between them). Older than
 * every reading kept: the age of the oldest reading, a lower bound.
 */
export function lagTimeMs(points: readonly LagPoint[]): number {
  const last = points[points.length - 1];
  if (!last || last.confirmed >= last.current) return 0;
  for (let i = points.length - 1; i > 0; i--) {
    const a = points[i - 1] as LagPoint;
    const b = points[i] as LagPoint;
    if (a.current <= last.confirmed) {
      const f = b.current > a.current ? (last.confirmed - a.current) / (b.current - a.current) : 1;
      return Math.max(0, Math.round(last.t - (a.t + f * (b.t - a.t))));
    }
  }
  return Math.max(0, last.t - (points[0] as LagPoint).t);
}

/** Byte rates between the first reading of the window and the last. */
export function lagRates(points: readonly LagPoint[], windowMs = RATE_WINDOW_MS) {
  const last = points[points.length - 1];
  if (!last) return { generatedBps: 0, appliedBps: 0, spanMs: 0 };
  let first = last;
  for (let i = points.length - 2; i >= 0; i--) {
    const p = points[i] as LagPoint;
    if (last.t - p.t > windowMs) break;
    first = p;
  }
  const spanMs = last.t - first.t;
  if (spanMs <= 0) return { generatedBps: 0, appliedBps: 0, spanMs: 0 };
  return {
    generatedBps: ((last.current - first.current) * 1000) / spanMs,
    appliedBps: (Math.max(0, last.confirmed - first.confirmed) * 1000) / spanMs,
    spanMs,
  };
}

/** Drain time predicted for `bytes` at the rate the subscriber has shown (never below the floor). */
export function predictDrainMs(bytes: number, appliedBps: number): number {
  if (bytes <= 0) return 0;
  return Math.round((bytes * 1000) / Math.max(appliedBps, APPLY_RATE_FLOOR_BPS));
}

export function lagFigures(points: readonly LagPoint[]): LagFigures {
  const last = points[points.length - 1];
  const bytes = last ? Math.max(0, last.current - last.confirmed) : 0;
  const { generatedBps, appliedBps } = lagRates(points);
  return {
    bytes,
    ms: lagTimeMs(points),
    generatedBps,
    appliedBps,
    predictedDrainMs: predictDrainMs(bytes, appliedBps),
  };
}

/** Growth that counts as "growing" across the gate's streak, above the noise of a busy OLTP source. */
export const LAG_GROWTH = { bytes: 1024 * 1024, ms: 250 } as const;

export interface LagLimits {
  maxLagBytes: number;
  maxLagMs: number;
  maxDrainMs: number;
}

const MB = 1000 * 1000;
export const mbps = (bps: number) => `${(bps / MB).toFixed(1)} MB/s`;
export const mib = (bytes: number) =>
  bytes >= 1024 * 1024 ? `${(bytes / 1024 / 1024).toFixed(1)} MiB` : `${Math.round(bytes / 1024)} KiB`;

/**
 * Why the lag keeps the gate closed, if it does: over a limit (bytes or time), growing since the
 * streak's first sample, or a drain predicted past its budget. `since` is the figures of the sample
 * the streak would start from.
 */
export function lagReasons(now: LagFigures, since: LagFigures | undefined, limits: LagLimits): string[] {
  const out: string[] = [];
  if (now.bytes >= limits.maxLagBytes) out.push(`lag ${mib(now.bytes)} ≥ ${mib(limits.maxLagBytes)}`);
  if (now.ms >= limits.maxLagMs) out.push(`lag ${now.ms} ms ≥ ${limits.maxLagMs} ms`);
  if (since && (now.bytes - since.bytes > LAG_GROWTH.bytes || now.ms - since.ms > LAG_GROWTH.ms))
    out.push(`lag growing: ${mib(since.bytes)} / ${since.ms} ms → ${mib(now.bytes)} / ${now.ms} ms`);
  if (now.predictedDrainMs > limits.maxDrainMs)
    out.push(
      `drain predicted at ${now.predictedDrainMs} ms, over the ${limits.maxDrainMs} ms budget (${mib(now.bytes)} at ${mbps(Math.max(now.appliedBps, APPLY_RATE_FLOOR_BPS))} applied)`,
    );
  return out;
}

/** Apply falls behind the source: more WAL generated than confirmed, with a backlog worth naming. */
export function applyFallsBehind(now: LagFigures): boolean {
  return now.bytes > LAG_GROWTH.bytes && now.generatedBps > now.appliedBps * 1.1;
}
