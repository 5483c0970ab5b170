/**
 * Verify every table: row counts and per-chunk checksums on both sides, at matching points. The side the
 * application writes to (the live side: the source before the switch, the target after it) is read in
 * a snapshot taken first; its WAL position right after that snapshot covers every commit the read sees;
 * the other side (the replica) is read, while the live side still reads, once its subscription has
 * confirmed that position. So a difference is never just lag. A chunk that still differs (the replica may have applied newer writes by then) is read again
 * the same way, and last with the table's writes held; only then is it reported, by table and range.
 * A replica that does not reach the position in time makes the table "behind": not verified, which is
 * never a mismatch. Run during catch-up (before the switch: a wrong row is found while the application
 * can still stay where it is) and again after the switch, outside the write gap.
 */
import {
  DEFAULTS,
  mib,
  objectNames,
  type VerifyOutcome,
  type VerifyResult,
  type VerifyTableResult,
} from '@pgferry/core';
import type pg from 'pg';
import { copyableTables, listTables, type TableInfo } from '../catalog';
import { type Db, ident, qualified, tableLabel } from '../db';
import { flushWal, waitConfirmed } from '../freeze';
import type { PhaseContext } from './context';

interface Bucket {
  n: number;
  h: string;
  lo: string | null;
  hi: string | null;
}

interface Plan {
  table: TableInfo;
  /** The source's row count when the plan was made (its estimate, for a table of COUNTED_UP_TO rows or more). */
  rows: number;
  bucketExpr: string;
  where: string;
  label: (b: number, bucket?: Bucket) => string;
  keyExpr: string;
  /** For integer keys: a chunk's key range as SQL, so that a recheck reads only that range (by the key's index). */
  range?: (b: number) => string;
}

const INTEGER = new Set(['smallint', 'integer', 'bigint']);

/**
 * A table estimated to hold this many rows or more is not counted to plan its chunks: the count is a
 * whole read of the table, and the estimate sizes the chunks well enough (the checksums count the rows).
 */
const COUNTED_UP_TO = 1_000_000;

async function plan(source: Db, t: TableInfo): Promise<Plan> {
  const key = t.identityColumns;
  const { n } =
    t.rowEstimate >= COUNTED_UP_TO
      ? { n: t.rowEstimate }
      : await source.one<{ n: number }>(`SELECT count(*)::bigint AS n FROM ONLY ${qualified(t)}`);
  const buckets = Math.max(1, Math.ceil(n / DEFAULTS.verifyChunkRows));
  const col = key.length === 1 ? t.columns.find((c) => c.name === key[0]) : undefined;
  if (col && INTEGER.has(col.type)) {
    const k = `t.${ident(col.name)}`;
    // As text, and BigInt here: keys past 2^53 do not survive a JS number (the range would miss rows).
    const r = await source.one<{ lo: string | null; hi: string | null }>(
      `SELECT min(${ident(col.name)})::text AS lo, max(${ident(col.name)})::text AS hi FROM ONLY ${qualified(t)}`,
    );
    if (r.lo === null || r.hi === null)
      return {
        table: t,
        rows: Number(n),
        bucketExpr: '0',
        where: 'true',
        label: () => 'all rows',
        keyExpr: `${k}::text`,
      };
    const [lo, hi] = [BigInt(r.lo), BigInt(r.hi)];
    const span = hi - lo + 1n;
    const parts = BigInt(buckets);
    const width = span / parts + (span % parts ? 1n : 0n);
    // Rows with keys above today's maximum are new writes made while we verify; they are not in scope.
    return {
      table: t,
      rows: Number(n),
      // numeric: k - lo overflows bigint when the keys span both signs.
      bucketExpr: `floor((${k}::numeric - ${lo}) / ${width})::int`,
      where: `${k} <= ${hi}`,
      label: (b) => {
        const from = lo + BigInt(b) * width;
        const to = from + width - 1n;
        return `${col.name} ${from}..${to < hi ? to : hi}`;
      },
      keyExpr: `${k}::text`,
      range: (b) => {
        const from = lo + BigInt(b) * width;
        return `${k} BETWEEN ${from} AND ${from + width - 1n}`;
      },
    };
  }
  const keyExpr = key.length > 0 ? `row(${key.map((c) => `t.${ident(c)}`).join(', ')})::text` : 't::text';
  return {
    table: t,
    rows: Number(n),
    bucketExpr: `abs(hashtext(${keyExpr}) % ${buckets})`,
    where: 'true',
    label: (b, bucket) =>
      `bucket ${b} (${key.length ? `keys ${bucket?.lo ?? '?'}..${bucket?.hi ?? '?'}` : 'whole-row hash'})`,
    keyExpr,
  };
}

/** A row as text, the same on both sides: as UTF-8 bytes (escaped) when the database encodings differ. */
const ROW_TEXT = { same: 't::text', converted: "encode(convert_to(t::text, 'UTF8'), 'escape')" };

type Query = Db['query'];

/** A dedicated connection's queries, as rows. */
const rowsOf =
  (client: pg.PoolClient): Query =>
  async (sql, params) =>
    (await client.query(sql, params)).rows;

async function checksums(query: Query, p: Plan, rowText: string, only?: number[]): Promise<Map<number, Bucket>> {
  const ranges = only && p.range && only.length <= 64 ? ` AND (${only.map((b) => p.range?.(b)).join(' OR ')})` : '';
  const filter = only ? ` AND ${p.bucketExpr} = ANY($1::int[])${ranges}` : '';
  const rows = await query<{ b: number; n: number; h: string; lo: string | null; hi: string | null }>(
    `SELECT b, count(*)::bigint AS n, sum(h)::text AS h, min(k) AS lo, max(k) AS hi FROM (
       SELECT ${p.bucketExpr} AS b, hashtextextended(${rowText}, 0)::numeric AS h, ${p.keyExpr} AS k
         FROM ONLY ${qualified(p.table)} AS t WHERE ${p.where}${filter}) x GROUP BY b`,
    only ? [only] : [],
  );
  return new Map(rows.map((r) => [r.b, { n: r.n, h: r.h, lo: r.lo, hi: r.hi }]));
}

function differing(a: Map<number, Bucket>, b: Map<number, Bucket>): number[] {
  const keys = new Set([...a.keys(), ...b.keys()]);
  return [...keys].filter((k) => a.get(k)?.n !== b.get(k)?.n || a.get(k)?.h !== b.get(k)?.h).sort((x, y) => x - y);
}

/** Put the chunks `again` read anew into each side's map; the chunks that still differ. */
function reread(
  again: number[],
  ...sides: [[Map<number, Bucket>, Map<number, Bucket>], [Map<number, Bucket>, Map<number, Bucket>]]
): number[] {
  for (const [all, fresh] of sides) {
    for (const b of again) {
      const bucket = fresh.get(b);
      if (bucket) all.set(b, bucket);
      else all.delete(b);
    }
  }
  return differing(sides[0][0], sides[1][0]);
}

/** The side the application writes to, the other one, and the slot that carries the changes between them. */
interface Stream {
  live: Db;
  replica: Db;
  slot: string;
  /** What to call the replication that feeds the replica, in messages. */
  name: string;
}

function streamOf(ctx: PhaseContext): Stream {
  const n = objectNames(ctx.config.id);
  return ctx.state.cutover?.switchAt
    ? { live: ctx.target, replica: ctx.source, slot: n.reverseSlot, name: 'reverse replication' }
    : { live: ctx.source, replica: ctx.target, slot: n.slot, name: 'replication' };
}

/** The live side's WAL insert position: past every commit a read that ended before it saw. */
async function insertLsn(db: Db): Promise<string> {
  return (await db.one<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')).lsn;
}

/** WAL the replica has not confirmed (0 when the slot is gone). */
async function behindBytes(s: Stream): Promise<number> {
  const [row] = await s.live.query<{ b: number }>(
    'SELECT greatest(0, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn))::bigint AS b FROM pg_replication_slots WHERE slot_name = $1',
    [s.slot],
  );
  return row?.b ?? 0;
}

/** Once one wait for the replica has failed, later tables wait this long at most (a final pass waits in full). */
const WAIT_AFTER_BEHIND_MS = 1_000;
/**
 * Tables in flight at once. Each side reads one table at a time; a table waiting for the replica to
 * pass its position waits without holding either, so a lagging replica does not stall the reads.
 */
const VERIFY_CONCURRENCY = 4;

/** One at a time, in order of asking. */
function oneAtATime() {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>): Promise<T> => {
    const run = tail.then(fn, fn);
    tail = run.catch(() => {});
    return run;
  };
}

/** How long a last recheck waits to hold a table's writes (the table's writers queue behind it meanwhile). */
const HOLD_LOCK_TIMEOUT_MS = 200;
/** How long replication may take, under the hold, to bring over what was written just before it. */
const HOLD_DRAIN_MS = 300;
/** The most the reads under the hold may take (each side). */
const HOLD_READ_TIMEOUT_MS = 2_000;
/** At most this many chunks (of verifyChunkRows) are read under the hold. */
const HOLD_MAX_CHUNKS = 4;

/**
 * The last recheck of chunks that still differ: a row every transaction updates (a counter, a balance)
 * is never the same on both sides at two moments, so plain rechecks report it however well it
 * replicates. Here replication is drained first; then the table's writes are held on the live side
 * (`LOCK … IN SHARE MODE`: readers pass, writers of this one table wait), WAL is flushed and the other
 * side brought up to it, and both sides are read at that one point. The hold is bounded: the lock is
 * given up when not granted within HOLD_LOCK_TIMEOUT_MS or when replication does not catch up within
 * HOLD_DRAIN_MS, and only up to HOLD_MAX_CHUNKS chunks read by key range (or a table that small) are
 * read under it, each read within HOLD_READ_TIMEOUT_MS. Whenever it is given up the chunks are reported
 * as the plain rechecks found them, and the log says why.
 */
async function heldChecksums(
  ctx: PhaseContext,
  s: Stream,
  p: Plan,
  rowText: string,
  only: number[],
): Promise<{ src: Map<number, Bucket>; tgt: Map<number, Bucket>; heldMs: number } | undefined> {
  const bounded = p.range ? only.length <= HOLD_MAX_CHUNKS : p.rows <= HOLD_MAX_CHUNKS * DEFAULTS.verifyChunkRows;
  if (!bounded) return undefined;
  const { live, replica: other, slot } = s;
  const giveUp = (why: string) => {
    ctx.log(`verify: ${tableLabel(p.table)}: no last recheck with its writes held: ${why}`);
    return undefined;
  };
  // Everything committed so far on the live side (asynchronous commits included: WAL flushed first)
  // confirmed by the other side within `ms`.
  const caughtUp = async (ms: number) => {
    await flushWal(live, 'verify');
    return waitConfirmed(live, slot, await insertLsn(live), ms);
  };
  // Drained before the hold, so that under it only the last moment's writes are waited for.
  if (!(await caughtUp(5_000))) return giveUp('replication is more than 5 s behind');
  return await live.withClient(async (client) => {
    await client.query('BEGIN');
    try {
      await client.query(`SET LOCAL lock_timeout = ${HOLD_LOCK_TIMEOUT_MS}`);
      await client.query(`SET LOCAL statement_timeout = ${HOLD_READ_TIMEOUT_MS}`);
      await client.query(`LOCK TABLE ONLY ${qualified(p.table)} IN SHARE MODE`);
      const held = performance.now();
      // Every write of the table was committed before the lock.
      if (!(await caughtUp(HOLD_DRAIN_MS))) return giveUp(`replication did not catch up within ${HOLD_DRAIN_MS} ms`);
      const [l, o] = await Promise.all([
        checksums(rowsOf(client), p, rowText, only),
        other.withClient(async (c) => {
          await c.query(`SET statement_timeout = ${HOLD_READ_TIMEOUT_MS}`);
          try {
            return await checksums(rowsOf(c), p, rowText, only);
          } finally {
            await c.query('RESET statement_timeout');
          }
        }),
      ]);
      const heldMs = Math.round(performance.now() - held);
      return live === ctx.target ? { src: o, tgt: l, heldMs } : { src: l, tgt: o, heldMs };
    } catch (err) {
      // Not granted in time, not allowed, or a read too slow: the plain rechecks' answer stands.
      return giveUp((err as Error).message);
    } finally {
      await client.query('ROLLBACK').catch(() => {});
    }
  });
}

/** Time spent reading, and bytes of table read, on one side. */
interface SideReads {
  ms: number;
  bytes: number;
}

export async function verifyTables(ctx: PhaseContext): Promise<VerifyResult> {
  const started = performance.now();
  const s = streamOf(ctx);
  const tables = copyableTables(await listTables(ctx.source, { sizes: false }));
  const encoding = 'SELECT pg_encoding_to_char(encoding) AS e FROM pg_database WHERE datname = current_database()';
  const [se, te] = await Promise.all([
    ctx.source.one<{ e: string }>(encoding),
    ctx.target.one<{ e: string }>(encoding),
  ]);
  const rowText = se.e === te.e ? ROW_TEXT.same : ROW_TEXT.converted;
  // Heap sizes on each side, once: what the reads cover, for the throughput figures.
  const sizeSql = `SELECT format('%s.%s', n.nspname, c.relname) AS t, pg_relation_size(c.oid)::bigint AS b
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'`;
  const sizes = async (db: Db) => new Map((await db.query<{ t: string; b: number }>(sizeSql)).map((r) => [r.t, r.b]));
  const [srcSizes, tgtSizes] = await Promise.all([sizes(ctx.source), sizes(ctx.target)]);
  const reads: Record<'source' | 'target', SideReads> = { source: { ms: 0, bytes: 0 }, target: { ms: 0, bytes: 0 } };
  const turn = { source: oneAtATime(), target: oneAtATime() };
  const timed = <T>(db: Db, read: () => Promise<T>): Promise<T> =>
    turn[db.side](async () => {
      const t0 = performance.now();
      try {
        return await read();
      } finally {
        reads[db.side].ms += performance.now() - t0;
      }
    });
  let waitMs = ctx.config.verifyWaitMs;

  /**
   * The live side read in a snapshot taken first, and the replica read once it has confirmed the live
   * side's WAL position taken just after that snapshot (so it has every commit the live read sees):
   * both sides read at once, not one after the other. Undefined when the replica did not get there in time.
   */
  const atMatchingPoints = async (p: Plan, only?: number[]) => {
    let replica: Promise<Map<number, Bucket> | undefined> = Promise.resolve(undefined);
    const live = await timed(s.live, () =>
      s.live.withClient(async (client) => {
        await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
        try {
          // The snapshot is taken by this first statement, the position read during it: after the snapshot.
          const { rows } = await client.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn');
          const lsn = rows[0]?.lsn as string;
          replica = (async () => {
            if (!(await waitConfirmed(s.live, s.slot, lsn, waitMs))) {
              waitMs = Math.min(waitMs, WAIT_AFTER_BEHIND_MS);
              return undefined;
            }
            return timed(s.replica, () => checksums(s.replica.query, p, rowText, only));
          })();
          replica.catch(() => {}); // (awaited below)
          return await checksums(rowsOf(client), p, rowText, only);
        } finally {
          await client.query('COMMIT').catch(() => {});
        }
      }),
    );
    const other = await replica;
    if (!other) return undefined;
    return s.live === ctx.source ? { src: live, tgt: other } : { src: other, tgt: live };
  };

  const verifyOne = async (t: TableInfo): Promise<VerifyTableResult> => {
    const p = await plan(ctx.source, t);
    const label = tableLabel(t);
    reads.source.bytes += srcSizes.get(label) ?? 0;
    reads.target.bytes += tgtSizes.get(label) ?? 0;
    const behind = async (): Promise<VerifyTableResult> => ({
      table: label,
      sourceRows: p.rows,
      targetRows: 0,
      chunks: 0,
      mismatchedRanges: [],
      outcome: 'behind',
      behindBytes: await behindBytes(s),
    });
    const first = await atMatchingPoints(p);
    if (!first) return behind();
    const { src, tgt } = first;
    let bad = differing(src, tgt);
    for (let i = 0; i < DEFAULTS.verifyRechecks && bad.length > 0; i++) {
      const again = await atMatchingPoints(p, bad);
      if (!again) return behind();
      bad = reread(bad, [src, again.src], [tgt, again.tgt]);
    }
    if (bad.length > 0) {
      const held = await heldChecksums(ctx, s, p, rowText, bad);
      if (held) {
        const before = bad.length;
        bad = reread(bad, [src, held.src], [tgt, held.tgt]);
        ctx.log(
          `verify: ${label}: ${before} chunk(s) that kept changing read again with its writes held for ${held.heldMs} ms: ${bad.length ? `${bad.length} still differ` : 'they match'}`,
        );
      }
    }
    const count = (m: Map<number, Bucket>) => [...m.values()].reduce((n, b) => n + Number(b.n), 0);
    return {
      table: label,
      sourceRows: count(src),
      targetRows: count(tgt),
      chunks: Math.max(src.size, tgt.size),
      mismatchedRanges: bad.map((b) => p.label(b, src.get(b) ?? tgt.get(b))),
      outcome: bad.length ? 'mismatch' : 'ok',
    };
  };

  const results: VerifyTableResult[] = new Array(tables.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < tables.length; i = next++) results[i] = await verifyOne(tables[i] as TableInfo);
  };
  await Promise.all(Array.from({ length: Math.min(VERIFY_CONCURRENCY, tables.length) }, worker));
  // A replica that was behind may have caught up since: those tables once more, with the full wait.
  const late = results.flatMap((r, i) => (r.outcome === 'behind' ? [i] : []));
  if (late.length) {
    waitMs = ctx.config.verifyWaitMs;
    for (const i of late) results[i] = await verifyOne(tables[i] as TableInfo);
  }
  const outcome: VerifyOutcome = results.some((r) => r.outcome === 'mismatch')
    ? 'mismatch'
    : results.some((r) => r.outcome === 'behind')
      ? 'behind'
      : 'ok';
  const ms = Math.round(performance.now() - started);
  const rate = (r: SideReads) => (r.ms > 0 ? Math.round((r.bytes / 1024 / 1024 / (r.ms / 1000)) * 10) / 10 : 0);
  return {
    ok: outcome === 'ok',
    outcome,
    stage: s.live === ctx.source ? 'before-switch' : 'after-switch',
    behindBytes: outcome === 'behind' ? Math.max(...results.map((r) => r.behindBytes ?? 0)) : undefined,
    replication: s.name,
    tables: results,
    ms,
    sourceBytes: reads.source.bytes,
    targetBytes: reads.target.bytes,
    sourceMiBps: rate(reads.source),
    targetMiBps: rate(reads.target),
    at: new Date().toISOString(),
  };
}

/** One line for a verify result: what it found, how long it took, how fast each side was read. */
export function verifySummary(r: VerifyResult): string {
  const rows = r.tables.reduce((n, t) => n + t.sourceRows, 0);
  const speed = `in ${(r.ms / 1000).toFixed(1)} s (source ${mib(r.sourceBytes)} at ${r.sourceMiBps} MiB/s, target ${mib(r.targetBytes)} at ${r.targetMiBps} MiB/s)`;
  if (r.outcome === 'ok') return `${r.tables.length} tables, ${rows} rows: counts and checksums match ${speed}`;
  if (r.outcome === 'behind') {
    const late = r.tables.filter((t) => t.outcome === 'behind').map((t) => t.table);
    return `NOT VERIFIED: ${r.replication} ${mib(r.behindBytes ?? 0)} behind; ${late.length} table(s) could not be compared (${late.slice(0, 3).join(', ')}${late.length > 3 ? ', …' : ''}); every other table matches ${speed}`;
  }
  const bad = r.tables.filter((t) => t.outcome === 'mismatch');
  return `MISMATCH in ${bad.length} table(s): ${bad.map((t) => `${t.table} [${t.mismatchedRanges.slice(0, 3).join(', ')}${t.mismatchedRanges.length > 3 ? ', …' : ''}]`).join('; ')} ${speed}`;
}

/** Phase "Verify" (after the switch). Re-running it simply verifies again. */
export async function verify(ctx: PhaseContext): Promise<string> {
  const result = await verifyTables(ctx);
  await ctx.update((s) => {
    s.verify = result;
  });
  return verifySummary(result);
}
