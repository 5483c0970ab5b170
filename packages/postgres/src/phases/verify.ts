/**
 * Verify every table: row counts and per-chunk checksums on both sides, computed after the switch so
 * the write gap does not grow. Chunks are key ranges for integer keys (hash buckets otherwise); a
 * chunk that differs is checked again after replication has drained, and reported by table and range.
 */
import { DEFAULTS, objectNames, type VerifyTableResult } from '@pgferry/core';
import type pg from 'pg';
import { copyableTables, listTables, type TableInfo } from '../catalog';
import { type Db, ident, qualified, sleep, tableLabel } from '../db';
import { currentLsn, flushWal, waitConfirmed } from '../freeze';
import type { PhaseContext } from './context';

interface Bucket {
  n: number;
  h: string;
  lo: string | null;
  hi: string | null;
}

interface Plan {
  table: TableInfo;
  /** The source's row count when the plan was made. */
  rows: number;
  bucketExpr: string;
  where: string;
  label: (b: number, bucket?: Bucket) => string;
  keyExpr: string;
  /** For integer keys: a chunk's key range as SQL, so that a recheck reads only that range (by the key's index). */
  range?: (b: number) => string;
}

const INTEGER = new Set(['smallint', 'integer', 'bigint']);

async function plan(source: Db, t: TableInfo): Promise<Plan | undefined> {
  const key = t.identityColumns;
  const { n } = await source.one<{ n: number }>(`SELECT count(*)::bigint AS n FROM ONLY ${qualified(t)}`);
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

/**
 * The side the application writes to, the other one, and the slot that carries the changes between
 * them; undefined when that slot is not being read (nothing replicates, so no difference shrinks).
 */
async function stream(ctx: PhaseContext): Promise<{ live: Db; other: Db; slot: string } | undefined> {
  const n = objectNames(ctx.config.id);
  const reverse = !!ctx.state.cutover?.switchAt;
  const live = reverse ? ctx.target : ctx.source;
  const slot = reverse ? n.reverseSlot : n.slot;
  const [row] = await live.query<{ active: boolean }>('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [
    slot,
  ]);
  return row?.active ? { live, other: reverse ? ctx.source : ctx.target, slot } : undefined;
}

/** Wait until whatever the live side wrote has reached the other side; false when nothing replicates. */
async function drain(ctx: PhaseContext): Promise<boolean> {
  const s = await stream(ctx);
  return !!s && (await waitConfirmed(s.live, s.slot, await currentLsn(s.live), 5_000));
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
  p: Plan,
  rowText: string,
  only: number[],
): Promise<{ src: Map<number, Bucket>; tgt: Map<number, Bucket>; heldMs: number } | undefined> {
  const bounded = p.range ? only.length <= HOLD_MAX_CHUNKS : p.rows <= HOLD_MAX_CHUNKS * DEFAULTS.verifyChunkRows;
  if (!bounded) return undefined;
  const s = await stream(ctx);
  if (!s) return undefined;
  const { live, other, slot } = s;
  const giveUp = (why: string) => {
    ctx.log(`verify: ${tableLabel(p.table)}: no last recheck with its writes held: ${why}`);
    return undefined;
  };
  // Everything committed so far on the live side (asynchronous commits included: WAL flushed first)
  // confirmed by the other side within `ms`.
  const caughtUp = async (ms: number) => {
    await flushWal(live, 'verify');
    return waitConfirmed(live, slot, await currentLsn(live), ms);
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

export async function verifyTables(ctx: PhaseContext): Promise<{ ok: boolean; tables: VerifyTableResult[] }> {
  const tables = copyableTables(await listTables(ctx.source, { sizes: false }));
  const encoding = 'SELECT pg_encoding_to_char(encoding) AS e FROM pg_database WHERE datname = current_database()';
  const [se, te] = await Promise.all([
    ctx.source.one<{ e: string }>(encoding),
    ctx.target.one<{ e: string }>(encoding),
  ]);
  const rowText = se.e === te.e ? ROW_TEXT.same : ROW_TEXT.converted;
  const results: VerifyTableResult[] = [];
  for (const t of tables) {
    const p = await plan(ctx.source, t);
    if (!p) continue;
    const [src, tgt] = await Promise.all([
      checksums(ctx.source.query, p, rowText),
      checksums(ctx.target.query, p, rowText),
    ]);
    let bad = differing(src, tgt);
    for (let i = 0; i < DEFAULTS.verifyRechecks && bad.length > 0; i++) {
      const replicating = await drain(ctx);
      if (!replicating && i > 0) break;
      await sleep(100 * (i + 1));
      const [s2, t2] = await Promise.all([
        checksums(ctx.source.query, p, rowText, bad),
        checksums(ctx.target.query, p, rowText, bad),
      ]);
      bad = reread(bad, [src, s2], [tgt, t2]);
    }
    if (bad.length > 0) {
      const held = await heldChecksums(ctx, p, rowText, bad);
      if (held) {
        const before = bad.length;
        bad = reread(bad, [src, held.src], [tgt, held.tgt]);
        ctx.log(
          `verify: ${tableLabel(p.table)}: ${before} chunk(s) that kept changing read again with its writes held for ${held.heldMs} ms: ${bad.length ? `${bad.length} still differ` : 'they match'}`,
        );
      }
    }
    const count = (m: Map<number, Bucket>) => [...m.values()].reduce((s, b) => s + Number(b.n), 0);
    results.push({
      table: tableLabel(t),
      sourceRows: count(src),
      targetRows: count(tgt),
      chunks: Math.max(src.size, tgt.size),
      mismatchedRanges: bad.map((b) => p.label(b, src.get(b) ?? tgt.get(b))),
    });
  }
  return { ok: results.every((r) => r.mismatchedRanges.length === 0), tables: results };
}

/** Phase "Verify". Re-running it simply verifies again. */
export async function verify(ctx: PhaseContext): Promise<string> {
  const result = await verifyTables(ctx);
  await ctx.update((s) => {
    s.verify = { ...result, at: new Date().toISOString() };
  });
  const rows = result.tables.reduce((s, t) => s + t.sourceRows, 0);
  if (result.ok) return `${result.tables.length} tables, ${rows} rows: counts and checksums match`;
  const bad = result.tables.filter((t) => t.mismatchedRanges.length > 0);
  return `MISMATCH in ${bad.length} table(s): ${bad.map((t) => `${t.table} [${t.mismatchedRanges.slice(0, 3).join(', ')}${t.mismatchedRanges.length > 3 ? ', …' : ''}]`).join('; ')}`;
}
