/**
 * A migration's whole lag series, kept by the store beside the migration's state (the state keeps
 * only its last samples: a day of samples is megabytes, past DynamoDB's 400 KB item limit). Its bound:
 * every sample of the last hour of sampling, and before that one point per minute (the minute's
 * peak), so a day of catch-up is at most an hour of samples and 1,440 points, whatever the interval.
 * Both stores keep it the same way: samples go into a bucket per minute; when a sample opens a new
 * bucket, the buckets more than an hour older than it are each replaced by their peak. No I/O here.
 */
import type { LagSample } from './model';

export const LAG_SERIES = {
  /** Every sample this recent (counted back from the newest sample) is kept. */
  fullMs: 60 * 60_000,
  /** Before that, one point per this long. */
  bucketMs: 60_000,
  /** Samples one minute's bucket takes at most (10 a second; the gate samples at most every 100 ms). */
  maxPerBucket: 600,
} as const;

/** The minute a sample falls in, as a sortable key (`2026-12-06T10:04`). */
export function lagBucket(at: string): string {
  return new Date(Date.parse(at)).toISOString().slice(0, 16);
}

/** Samples by the bucket they go in, and the newest one's time (what decides which buckets to thin). */
export function bucketed(samples: LagSample[]): { buckets: Map<string, LagSample[]>; newestAt?: string } {
  const buckets = new Map<string, LagSample[]>();
  let newestAt: string | undefined;
  for (const p of samples) {
    const b = lagBucket(p.at);
    buckets.set(b, [...(buckets.get(b) ?? []), p]);
    if (newestAt === undefined || Date.parse(p.at) > Date.parse(newestAt)) newestAt = p.at;
  }
  return { buckets, newestAt };
}

/** Buckets of `buckets` that are past the hour of full samples, counted back from `newestAt`. */
export function bucketsToThin(buckets: string[], newestAt: string): string[] {
  const cutoff = lagBucket(new Date(Date.parse(newestAt) - LAG_SERIES.fullMs).toISOString());
  return buckets.filter((b) => b < cutoff);
}

/** A minute's samples as one point: the highest lag in bytes and in time, at the minute's last sample. */
export function peakOfBucket(samples: LagSample[]): LagSample {
  const sorted = [...samples].sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
  const last = sorted.at(-1)!;
  return {
    ...last,
    bytes: Math.max(...sorted.map((p) => p.bytes)),
    ms: Math.max(...sorted.map((p) => p.ms)),
    of: sorted.reduce((n, p) => n + (p.of ?? 1), 0),
  };
}

/** Series (or parts of one) as one, oldest first, each sample once (by its time). */
export function mergeLagSeries(...parts: (LagSample[] | undefined)[]): LagSample[] {
  const byAt = new Map<string, LagSample>();
  for (const part of parts) for (const p of part ?? []) if (Number.isFinite(Date.parse(p.at))) byAt.set(p.at, p);
  return [...byAt.values()].sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
}

/** Samples of `after` newer than `since` (what an update of the state's recent samples added). */
export function samplesAfter(since: string | undefined, after: LagSample[] | undefined): LagSample[] {
  const t = since === undefined ? Number.NEGATIVE_INFINITY : Date.parse(since);
  return (after ?? []).filter((p) => Date.parse(p.at) > t);
}

/**
 * Where sampling stopped for a while: a break of more than this between two points is drawn as a gap,
 * never as a line (a resume after a day, a process killed). Longer than the thinned part's minute
 * and than the gate's slowest regular wait (a minute outside a cutover window), and than a few of the
 * migration's sample intervals.
 */
export function lagGapMs(sampleIntervalMs: number): number {
  return Math.max(150_000, 5 * sampleIntervalMs);
}

/** The series cut where sampling stopped for longer than `gapMs`: each part is drawn as one line. */
export function lagSegments(samples: LagSample[], gapMs: number): LagSample[][] {
  const parts: LagSample[][] = [];
  let last: number | undefined;
  for (const p of samples) {
    const t = Date.parse(p.at);
    if (last === undefined || t - last > gapMs) parts.push([]);
    parts.at(-1)!.push(p);
    last = t;
  }
  return parts;
}
