/**
 * Verify every table: row counts and per-chunk checksums on both sides, computed after the switch so
 * the write gap does not grow. Chunks are key ranges for integer keys (hash buckets otherwise); a
 * chunk that differs is checked again after replication has drained, and reported by table and range.
 */
import { DEFAULTS, objectNames, type VerifyTableResult } from '@pgferry/core';
import { copyableTables, listTables, type TableInfo } from '../catalog';
import { type Db, ident, qualified, sleep, tableLabel } from '../db';
import { currentLsn, waitConfirmed } from '../freeze';
import type { PhaseContext } from './context';

interface Bucket {
  n: number;
  h: string;
  lo: string | null;
  hi: string | null;
}

interface Plan {
  table: TableInfo;
  bucketExpr: string;
  where: string;
  label: (b: number, bucket?: Bucket) => string;
  keyExpr: string;
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
      return { table: t, bucketExpr: '0', where: 'true', label: () => 'all rows', keyExpr: `${k}::text` };
    const [lo, hi] = [BigInt(r.lo), BigInt(r.hi)];
    const span = hi - lo + 1n;
    const n = BigInt(buckets);
    const width = span / n + (span % n ? 1n : 0n);
    // Rows with keys above today's maximum are new writes made while we verify; they are not in scope.
    return {
      table: t,
      // numeric: k - lo overflows bigint when the keys span both signs.
      bucketExpr: `floor((${k}::numeric - ${lo}) / ${width})::int`,
      where: `${k} <= ${hi}`,
      label: (b) => {
        const from = lo + BigInt(b) * width;
        const to = from + width - 1n;
        return `${col.name} ${from}..${to < hi ? to : hi}`;
      },
      keyExpr: `${k}::text`,
    };
  }
  const keyExpr = key.length > 0 ? `row(${key.map((c) => `t.${ident(c)}`).join(', ')})::text` : 't::text';
  return {
    table: t,
    bucketExpr: `abs(hashtext(${keyExpr}) % ${buckets})`,
    where: 'true',
    label: (b, bucket) =>
      `bucket ${b} (${key.length ? `keys ${bucket?.lo ?? '?'}..${bucket?.hi ?? '?'}` : 'whole-row hash'})`,
    keyExpr,
  };
}

/** A row as text, the same on both sides: as UTF-8 bytes (escaped) when the database encodings differ. */
const ROW_TEXT = { same: 't::text', converted: "encode(convert_to(t::text, 'UTF8'), 'escape')" };

async function checksums(db: Db, p: Plan, rowText: string, only?: number[]): Promise<Map<number, Bucket>> {
  const filter = only ? ` AND ${p.bucketExpr} = ANY($1::int[])` : '';
  const rows = await db.query<{ b: number; n: number; h: string; lo: string | null; hi: string | null }>(
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

/**
 * Wait until whatever the live side wrote has reached the other side. False when nothing replicates
 * (no active slot), in which case a difference cannot shrink by waiting.
 */
async function drain(ctx: PhaseContext): Promise<boolean> {
  const n = objectNames(ctx.config.id);
  const reverse = !!ctx.state.cutover?.switchAt;
  const live = reverse ? ctx.target : ctx.source;
  const slot = reverse ? n.reverseSlot : n.slot;
  const [row] = await live.query<{ active: boolean }>('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [
    slot,
  ]);
  if (!row?.active) return false;
  return waitConfirmed(live, slot, await currentLsn(live), 5_000);
}

export async function verifyTables(ctx: PhaseContext): Promise<{ ok: boolean; tables: VerifyTableResult[] }> {
  const tables = copyableTables(await listTables(ctx.source));
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
    const [src, tgt] = await Promise.all([checksums(ctx.source, p, rowText), checksums(ctx.target, p, rowText)]);
    let bad = differing(src, tgt);
    for (let i = 0; i < DEFAULTS.verifyRechecks && bad.length > 0; i++) {
      const replicating = await drain(ctx);
      if (!replicating && i > 0) break;
      await sleep(100 * (i + 1));
      const [s2, t2] = await Promise.all([
        checksums(ctx.source, p, rowText, bad),
        checksums(ctx.target, p, rowText, bad),
      ]);
      for (const b of bad) {
        src.delete(b);
        tgt.delete(b);
        if (s2.has(b)) src.set(b, s2.get(b)!);
        if (t2.has(b)) tgt.set(b, t2.get(b)!);
      }
      bad = differing(src, tgt);
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
