/**
 * Verify every table: row counts and per-chunk checksums on both sides, at matching points. The side the
 * application writes to (the live side: the source before the switch, the target after it) is read in
 * a snapshot taken first; its WAL position right after that snapshot covers every commit the read sees;
 * the other side (the replica) is read, while the live side still reads, once its subscription has
 * confirmed that position. So a difference is never just lag. A chunk that still differs (the replica may have applied newer writes by then) is read again
 * the same way, and last with the table's writes held; only then is it reported, by table and range.
 * A replica that does not reach the position in time makes the table "behind": not verified, which is
 * never a mismatch. Run during catch-up (before the switch: a wrong row is found while the application
 * can still stay where it is) and again after the switch, outside the write gap. Each side is read by up
 * to `jobs` readers at once: several tables, and a big table's heap in ranges whose readers all share
 * one snapshot of their side (verify-readers.ts).
 */
import {
  DEFAULTS,
  mib,
  objectNames,
  type VerifyOutcome,
  type VerifyResult,
  type VerifyTableResult,
} from '@pgferry/core';
import { copyableTables, listTables, type TableInfo } from '../catalog';
import { type Db, ident, qualified, type Side, serverMajor, tableLabel } from '../db';
import { flushWal, waitConfirmed } from '../freeze';
import { readLag } from '../lag';
import type { PhaseContext } from './context';
import { type Query, rowsOf, type SideRead, SideReaders } from './verify-readers';

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
  /** SQL true for the rows whose key (as keyExpr gives it) is in the text[] parameter $2. */
  keyMatch: string;
  /** Whether a bucket's label needs its lowest and highest key (hash buckets; a range labels itself). */
  keyBounds: boolean;
  /** A row's hash (bigint), the same on both sides for the same row: see rowHashSql. */
  rowHash: string;
  /** Parts each chunk is cut into (see partsPerChunk); 1 for a table without a key (its rows are not followed). */
  parts: number;
  /** A 64-bit hash of the row's key, as SQL, that picks its part (the same on both sides). */
  keyHash: string;
}

const INTEGER = new Set(['smallint', 'integer', 'bigint']);

/**
 * A table estimated to hold this many rows or more is not counted to plan its chunks: the count is a
 * whole read of the table, and the estimate sizes the chunks well enough (the checksums count the rows).
 */
const COUNTED_UP_TO = 1_000_000;

/**
 * How a table is read in chunks and parts. `converted`: the databases' encodings differ, so a key's
 * text is hashed as its UTF-8 bytes (the same on both sides), as the row's text is.
 */
async function plan(source: Db, t: TableInfo, rowHash: string, converted = false): Promise<Plan> {
  const key = t.identityColumns;
  const { n } =
    t.rowEstimate >= COUNTED_UP_TO
      ? { n: t.rowEstimate }
      : await source.one<{ n: number }>(`SELECT count(*)::bigint AS n FROM ONLY ${qualified(t)}`);
  const buckets = Math.max(1, Math.ceil(n / DEFAULTS.verifyChunkRows));
  const perChunk = key.length > 0 ? partsPerChunk(buckets) : 1;
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
        rowHash,
        parts: perChunk,
        rows: Number(n),
        bucketExpr: '0',
        where: 'true',
        label: () => 'all rows',
        keyBounds: false,
        keyExpr: `${k}::text`,
        keyHash: `hashint8extended(${k}::bigint, ${PART_SEED})`,
        keyMatch: `${k} = ANY($2::text[]::numeric[])`,
      };
    const [lo, hi] = [BigInt(r.lo), BigInt(r.hi)];
    const span = hi - lo + 1n;
    const parts = BigInt(buckets);
    const width = span / parts + (span % parts ? 1n : 0n);
    // Keys below the lowest or above the highest the source had when planned (new writes made while
    // we verify, or rows one side kept that the other deleted) are chunks of their own, -1 and
    // `buckets`: in scope, and never counted into chunk 0 or a range that does not hold them.
    const inside =
      lo > -(2n ** 62n) && hi < 2n ** 62n
        ? `((${k}::bigint - ${lo}) / ${width})::int` // bigint arithmetic: k - lo cannot overflow here
        : `floor((${k}::numeric - ${lo}) / ${width})::int`;
    const below = -1;
    const above = buckets;
    return {
      table: t,
      rowHash,
      parts: perChunk,
      rows: Number(n),
      bucketExpr: `(CASE WHEN ${k} < ${lo} THEN ${below} WHEN ${k} > ${hi} THEN ${above} ELSE ${inside} END)`,
      keyBounds: false,
      where: 'true',
      label: (b) => {
        if (b === below) return `${col.name} below ${lo}`;
        if (b === above) return `${col.name} above ${hi}`;
        const from = lo + BigInt(b) * width;
        const to = from + width - 1n;
        return `${col.name} ${from}..${to < hi ? to : hi}`;
      },
      keyExpr: `${k}::text`,
      // The integer's own hash: hashing its text cost a whole-table read 7 % more (pgbench, 5 M rows).
      keyHash: `hashint8extended(${k}::bigint, ${PART_SEED})`,
      // Compared as the key's own type, so that the key's index finds the rows.
      keyMatch: `${k} = ANY($2::text[]::${col.type}[])`,
      range: (b) => {
        if (b === below) return `${k} < ${lo}`;
        if (b === above) return `${k} > ${hi}`;
        const from = lo + BigInt(b) * width;
        return `${k} BETWEEN ${from} AND ${from + width - 1n}`;
      },
    };
  }
  const keyExpr = key.length > 0 ? `row(${key.map((c) => `t.${ident(c)}`).join(', ')})::text` : rowRecord(t);
  // (A non-ASCII key hashed as each server's own bytes fell in a different chunk and part on each side:
  // every such row followed one by one at every verify.)
  const hashed = converted ? `encode(convert_to(${keyExpr}, 'UTF8'), 'escape')` : keyExpr;
  return {
    table: t,
    rowHash,
    parts: perChunk,
    rows: Number(n),
    bucketExpr: `abs(hashtext(${hashed}) % ${buckets})`,
    where: 'true',
    label: (b, bucket) =>
      `bucket ${b} (${key.length ? `keys ${bucket?.lo ?? '?'}..${bucket?.hi ?? '?'}` : 'whole-row hash'})`,
    keyExpr,
    keyHash: `hashtextextended(${hashed}, ${PART_SEED})`,
    keyMatch: `${keyExpr} = ANY($2::text[])`,
    keyBounds: key.length > 0,
  };
}

/**
 * A row as text, its columns named in the source's order: not `t::text`, where `t` alone is a column
 * called t when the table has one (only it was hashed), nor `ROW(t.*)`, whose order is each side's own
 * (pg_dump puts an inheritance child's inherited columns first: every row differed).
 */
const rowRecord = (t: TableInfo) => `ROW(${t.columns.map((c) => `t.${ident(c.name)}`).join(', ')})::text`;

/** A row as text (rowRecord), the same on both sides: as UTF-8 bytes (escaped) when the database encodings differ. */
const rowText = (t: TableInfo, converted: boolean) =>
  converted ? `encode(convert_to(${rowRecord(t)}, 'UTF8'), 'escape')` : rowRecord(t);

/**
 * How a float reads as text in verify's sessions when one server is 11 or older: 11 prints it with 17
 * significant digits under the extra_float_digits our sessions set (3), 12+ the shortest exact form, so
 * 0.1 read 0.10000000000000001 on one side and 0.1 on the other: a row of a table with a float (a column,
 * an array, a domain, a composite, a key) was a false difference on every row, the cutover stopped. At 0,
 * both print 15 significant digits (a difference past the 15th goes unseen between such servers).
 */
const LEGACY_FLOAT_DIGITS = 0;

/**
 * The SQL-callable hash of a hashable column's type (ColumnInfo.hashable), seeded: the function its
 * hash opclass uses, or one as faithful, made whole where the type's own is not:
 * - bigint's hash folds the value to 32 bits (0 and 4294967297 hash alike): its high half is hashed
 *   too, seeded by the folded hash;
 * - numeric's hash ignores the sign (100 and -100 hash alike) and XORs the number's weight into its
 *   result (both columns of a row scaled by 10,000 hashed alike once XOR-combined), and returns its seed
 *   less one for zero, its seed for NaN: the sign picks the seed, and the result is mixed once more.
 * Types whose function SQL cannot call (date, timestamptz, bytea) are not here: they are hashed
 * together by hash_record_extended. time and timestamp keep their types' folded hash (see rowHashSql).
 */
const VALUE_HASH: Record<string, (value: string, seed: number) => string> = {
  int2: (v, s) => `hashint2extended(${v}, ${s})`,
  int4: (v, s) => `hashint4extended(${v}, ${s})`,
  int8: (v, s) => `hashint4extended((${v} >> 32)::int4, hashint8extended(${v}, ${s}))`,
  oid: (v, s) => `hashoidextended(${v}, ${s})`,
  bool: (v, s) => `hashint4extended(${v}::int, ${s})`,
  time: (v, s) => `time_hash_extended(${v}, ${s})`,
  timestamp: (v, s) => `timestamp_hash_extended(${v}, ${s})`,
  uuid: (v, s) => `uuid_hash_extended(${v}, ${s})`,
  numeric: (v, s) => `hashint4extended(0, hash_numeric_extended(${v}, CASE WHEN ${v} < 0 THEN ${s + 2} ELSE ${s} END))`,
  text: (v, s) => `hashtextextended(${v}, ${s})`,
  varchar: (v, s) => `hashtextextended(${v}, ${s})`,
  bpchar: (v, s) => `hashbpcharextended(${v}, ${s})`,
};

/** A column of a type not hashable by value: its text, byte-wise. */
const byText = (v: string, s: number) => `hashtextextended(${v}::text COLLATE "C", ${s})`;

/** Types whose own hash VALUE_HASH makes whole: hashed apart in a table of any width. */
const MADE_WHOLE = new Set(['numeric', 'int8']);

/**
 * The seed of the i-th column's hash: far apart, so that the constants a hash returns near its seed
 * (numeric's zero and NaN) are never another column's.
 */
const columnSeed = (i: number) => (i + 1) * 1000;

/**
 * Tables of more columns than this are hashed by hash_record_extended (numeric and bigint columns
 * apart, by VALUE_HASH, whose hashes are made whole there): a function call a column made the planner's
 * estimate pass jit_above_cost, and compiling the expression then cost more than it saved (1,600
 * integer columns × 50,000 rows: 2.7–3.4 s against 1.4 s); at 64 integer columns already a third
 * slower, at 32 and fewer no slower.
 */
const COLUMNS_HASHED_APART = 32;

/** `a # b # …` as a balanced tree: a table of a thousand columns nests ten deep, not a thousand. */
function xorAll(terms: string[]): string {
  if (terms.length === 1) return terms[0] as string;
  const half = Math.ceil(terms.length / 2);
  return `(${xorAll(terms.slice(0, half))} # ${xorAll(terms.slice(half))})`;
}

/**
 * A row's hash, as SQL. Where both servers have hash_record_extended (14+) and the same encoding, the
 * row is hashed field by field: a column whose type's hash is faithful to its value (ColumnInfo.hashable)
 * by that hash, any other by its text, byte-wise. Hashing values instead of the whole row's text form
 * spares formatting every timestamp and number, the larger part of what verify costs the servers. The
 * types' hash functions are the ones hash partitioning relies on, the same in every version. Otherwise
 * the whole row's text is hashed.
 *
 * Each column is hashed with a seed of its own (columnSeed), the hashes are combined by XOR, and the
 * combination is mixed once more, through the 64-bit seed of hashint4extended. Checksums add row hashes
 * up, so a row hash that is linear in its fields (hash_record_extended's is: 31 × the hash so far + the
 * field's) adds up the same when two rows of a part trade a value: a swap went unseen. Calling each
 * type's function, not building a record to hash, also costs the servers a third less (pgbench).
 *
 * Left as it was: time, timestamp, timestamptz and date go through their types' hashes, which fold the
 * 64-bit value to 32 bits, so two values whose halves XOR alike hash alike (0 µs and 4,294,967,297 µs
 * past midnight, say): rare pairs, which SQL has no cheap way to tell apart by their bits.
 */
function rowHashSql(t: TableInfo, byValue: boolean, converted: boolean): string {
  if (!byValue || t.columns.length === 0) return `hashtextextended(${rowText(t, converted)}, 0)`;
  const apart = t.columns.length <= COLUMNS_HASHED_APART;
  const terms: string[] = [];
  const together: string[] = [];
  t.columns.forEach((c, i) => {
    const v = `t.${ident(c.name)}`;
    const seeded =
      apart || MADE_WHOLE.has(c.hashable ?? '') ? (c.hashable ? VALUE_HASH[c.hashable] : byText) : undefined;
    if (!seeded) together.push(c.hashable ? v : `${v}::text COLLATE "C"`);
    // Every column, NOT NULL or not: the target's may lack the constraint, and a NULL term would void the row's hash.
    else terms.push(`coalesce(${seeded(v, columnSeed(i))}, 0)`);
  });
  // NULL hashes as 0 inside the record, as a NULL column hashes 0 above.
  if (together.length) terms.push(`hash_record_extended(ROW(${together.join(', ')}), 0)`);
  return `hashint4extended(0, ${xorAll(terms)})`;
}

/** For integer keys, the chunks' key ranges as SQL (so that the key's index finds their rows); '' otherwise. */
function keyRanges(p: Plan, chunks: number[]): string {
  return p.range && chunks.length <= 64 ? ` AND (${chunks.map((b) => p.range?.(b)).join(' OR ')})` : '';
}

/** Heap pages [from, to) of one side's table (to undefined: to its end); what one reader of a split read reads. */
interface Blocks {
  from: number;
  to?: number;
}

/** Per chunk, or (`byPart`) per part of a chunk (keyed by partExpr). */
async function checksums(
  query: Query,
  p: Plan,
  only?: number[],
  blocks?: Blocks,
  byPart = false,
): Promise<Map<number, Bucket>> {
  const ranges = only ? keyRanges(p, only) : '';
  const filter = only ? ` AND ${p.bucketExpr} = ANY($1::int[])${ranges}` : '';
  // A TID range scan (14+) reads only these pages.
  const heap = blocks
    ? ` AND t.ctid >= '(${blocks.from},0)'::tid${blocks.to !== undefined ? ` AND t.ctid < '(${blocks.to},0)'::tid` : ''}`
    : '';
  const rows = await query<{ b: number; n: number; h: string; lo: string | null; hi: string | null }>(
    // sum(bigint) adds in 128 bits; min/max of the key as text only where a label needs them, byte-wise
    // (so that the bounds of a table read in parts combine the same way: mergeChecksums).
    `SELECT b, count(*)::bigint AS n, sum(h)::text AS h, ${p.keyBounds ? 'min(k COLLATE "C") AS lo, max(k COLLATE "C") AS hi' : 'NULL AS lo, NULL AS hi'} FROM (
       SELECT ${byPart ? partExpr(p) : p.bucketExpr} AS b, ${p.rowHash} AS h${p.keyBounds ? `, ${p.keyExpr} AS k` : ''}
         FROM ONLY ${qualified(p.table)} AS t WHERE ${p.where}${filter}${heap}) x GROUP BY b`,
    only ? [only] : [],
  );
  return new Map(rows.map((r) => [r.b, { n: r.n, h: r.h, lo: r.lo, hi: r.hi }]));
}

/**
 * The checksums of a table read in parts (ranges of its heap, in one snapshot), as one read of the
 * whole would give them: counts and hash sums add up (as BigInt: a sum of 64-bit hashes is past 2^53),
 * key bounds are the lowest and highest byte-wise. With `key`, buckets are added up under key(b) (the
 * parts of a chunk into the chunk).
 */
function mergeChecksums(parts: Map<number, Bucket>[], key?: (b: number) => number): Map<number, Bucket> {
  if (parts.length === 1 && !key) return parts[0] as Map<number, Bucket>;
  const lower = (a: string | null, b: string | null) => (a === null ? b : b === null || a <= b ? a : b);
  const higher = (a: string | null, b: string | null) => (a === null ? b : b === null || a >= b ? a : b);
  const all = new Map<number, Bucket>();
  for (const part of parts)
    for (const [k, x] of part) {
      const b = key ? key(k) : k;
      const y = all.get(b);
      all.set(
        b,
        y
          ? {
              n: Number(y.n) + Number(x.n),
              h: (BigInt(y.h) + BigInt(x.h)).toString(),
              lo: lower(y.lo, x.lo),
              hi: higher(y.hi, x.hi),
            }
          : x,
      );
    }
  return all;
}

function differing(a: Map<number, Bucket>, b: Map<number, Bucket>): number[] {
  const keys = new Set([...a.keys(), ...b.keys()]);
  return [...keys].filter((k) => a.get(k)?.n !== b.get(k)?.n || a.get(k)?.h !== b.get(k)?.h).sort((x, y) => x - y);
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
  return (await readLag(s.live, s.slot))?.bytes ?? 0;
}

/** Once one wait for the replica has failed, later tables wait this long at most (a final pass waits in full). */
const WAIT_AFTER_BEHIND_MS = 1_000;
/**
 * Tables in flight at once, at least (twice `jobs` with more readers). Each side has `jobs` readers
 * (verify-readers.ts); a table waiting for the replica to pass its position waits without holding a
 * reader of either side, so a lagging replica does not stall the reads.
 */
const VERIFY_CONCURRENCY = 4;

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
async function heldReads<T>(
  ctx: PhaseContext,
  s: Stream,
  table: TableInfo,
  read: (query: Query) => Promise<T>,
  /** extra_float_digits the reads need (LEGACY_FLOAT_DIGITS), on the live side's transaction and the other's read. */
  floatDigits?: number,
): Promise<{ live: T; replica: T; heldMs: number } | undefined> {
  const { live, replica, slot } = s;
  const giveUp = (why: string) => {
    ctx.log(`verify: ${tableLabel(table)}: no last recheck with its writes held: ${why}`);
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
      if (floatDigits !== undefined) await client.query(`SET LOCAL extra_float_digits = ${floatDigits}`);
      await client.query(`LOCK TABLE ONLY ${qualified(table)} IN SHARE MODE`);
      const held = performance.now();
      // Every write of the table was committed before the lock.
      if (!(await caughtUp(HOLD_DRAIN_MS))) return giveUp(`replication did not catch up within ${HOLD_DRAIN_MS} ms`);
      const [l, o] = await Promise.all([
        read(rowsOf(client, live.side)),
        replica.withClient(async (c) => {
          await c.query(`SET statement_timeout = ${HOLD_READ_TIMEOUT_MS}`);
          if (floatDigits !== undefined) await c.query(`SET extra_float_digits = ${floatDigits}`);
          try {
            return await read(rowsOf(c, replica.side));
          } finally {
            await c.query('RESET statement_timeout');
            // (The pool's session goes back to the settings it was opened with.)
            if (floatDigits !== undefined) await c.query('RESET extra_float_digits');
          }
        }),
      ]);
      return { live: l, replica: o, heldMs: Math.round(performance.now() - held) };
    } catch (err) {
      // Not granted in time, not allowed, or a read too slow: the plain rechecks' answer stands.
      return giveUp((err as Error).message);
    } finally {
      await client.query('ROLLBACK').catch(() => {});
    }
  });
}

/** Key (as text) → hash of the row, for one side. */
type RowHashes = Map<string, string>;

/** The rows of some chunks (and, given, only those keys): key and row hash. */
async function rowHashes(query: Query, p: Plan, chunks: number[], keys?: string[]): Promise<RowHashes> {
  const ranges = keyRanges(p, chunks);
  const byKey = keys ? ` AND ${p.keyMatch}` : '';
  const rows = await query<{ k: string; h: string }>(
    `SELECT ${p.keyExpr} AS k, ${p.rowHash}::text AS h
       FROM ONLY ${qualified(p.table)} AS t WHERE ${p.where} AND ${p.bucketExpr} = ANY($1::int[])${ranges}${byKey}`,
    keys ? [chunks, keys] : [chunks],
  );
  return new Map(rows.map((r) => [r.k, r.h]));
}

/**
 * The most parts a chunk of a table with a key is cut into: the first read's checksums are by part
 * (a hash of the key within the chunk), so that a chunk that differs has only the rows of its parts
 * that differ read one by one. A busy table differs in every chunk at every read by a few rows, and
 * reading each such chunk's 50,000 rows into this process cost pgbench under load seconds of verify and
 * of the event loop and its garbage collector.
 */
const CHUNK_PARTS = 256;
/** The most parts a table's first read returns a side (a table of more chunks has fewer parts a chunk). */
const TABLE_PARTS = 65_536;
/** Parts a chunk is cut into for a table of `chunks` chunks: CHUNK_PARTS, fewer past TABLE_PARTS in all. */
const partsPerChunk = (chunks: number) =>
  Math.max(1, Math.min(CHUNK_PARTS, Math.floor(TABLE_PARTS / Math.max(1, chunks))));
/** Keys of rows shown to differ that a table's result names, at most. */
const SHOWN_KEYS = 10;
/** Rows read one by one at once, at most (about: parts hold verifyChunkRows / parts rows each). */
const ROW_READ_ROWS = 8 * DEFAULTS.verifyChunkRows;

/**
 * The seed of a part's hash of the key. Not 0: with seed 0 the low 32 bits of hashtextextended are
 * hashtext itself, which already chose the chunk of a table without an integer key, so the part would
 * repeat the chunk's bits (a table of 256 such chunks: 2 parts of its 256 holding rows, each 128 times
 * the rows a part should hold).
 */
const PART_SEED = 1_000_003;

/** A row's part, as SQL: its chunk times p.parts plus a hash of its key (the same on both sides). */
const partExpr = (p: Plan) =>
  p.parts > 1 ? `((${p.bucketExpr}) * ${p.parts} + abs(${p.keyHash} % ${p.parts})::int)` : p.bucketExpr;

/** The chunk a part (partExpr) is of. */
const chunkOf = (p: Plan, part: number) => Math.floor(part / p.parts);

/** The rows of some chunks (and, given, only of those parts): key → [chunk, row hash, part]. */
async function rowHashesByChunk(
  query: Query,
  p: Plan,
  chunks: number[],
  parts?: number[],
): Promise<Map<string, [number, string, number]>> {
  const ranges = keyRanges(p, chunks);
  const inParts = parts ? ` AND x = ANY($2::int[])` : '';
  const rows = await query<{ b: number; k: string; h: string; x: number }>(
    `SELECT b, k, h, x FROM (SELECT ${p.bucketExpr} AS b, ${partExpr(p)} AS x, ${p.keyExpr} AS k, ${p.rowHash}::text AS h
       FROM ONLY ${qualified(p.table)} AS t WHERE ${p.where}${ranges}) AS r WHERE b = ANY($1::int[])${inParts}`,
    parts ? [chunks, parts] : [chunks],
  );
  return new Map(rows.map((r) => [r.k, [r.b, r.h, r.x]]));
}

/** Bytes of table read on one side, and its time reading them (at least one reader reading). */
interface SideReads {
  ms: number;
  bytes: number;
}

/** A table's heap on one side: its bytes, and its pages (as the ranges split it). */
interface Heap {
  bytes: number;
  pages: number;
}

/**
 * The page ranges a side's readers read a table in: one per `partBytes` of heap, at most `readers`,
 * and only on PostgreSQL 14+ (before, a ctid range is a scan of the whole table, each part the cost of
 * the whole). The last range is open-ended: rows may live past the page count read before.
 */
function heapParts(heap: Heap | undefined, partBytes: number, readers: number, major: number): Blocks[] {
  const n = heap && major >= 14 ? Math.min(readers, Math.floor(heap.bytes / partBytes)) : 1;
  if (!heap || n < 2) return [{ from: 0 }];
  const step = Math.max(1, Math.ceil(heap.pages / n));
  const parts: Blocks[] = [];
  for (let from = 0; from < heap.pages; from += step)
    parts.push(from + step >= heap.pages ? { from } : { from, to: from + step });
  return parts;
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
  const oldest = Math.min(await serverMajor(ctx.source), await serverMajor(ctx.target));
  const converted = se.e !== te.e;
  const floatDigits = oldest < 12 ? LEGACY_FLOAT_DIGITS : undefined;
  // No parallel plans: verify runs its own readers, up to jobs a side, each a range of a big table's heap.
  // Left to the planner, a row hash of several function calls was costed past the parallel threshold:
  // each reader then ran a parallel sequential scan of the whole table (its ctid range a filter, not a
  // TID range scan) and sorted its groups on disk, 2 workers each, and orders' verify took 2.5 times as long.
  const readerSetup = [
    'SET max_parallel_workers_per_gather = 0',
    ...(floatDigits !== undefined ? [`SET extra_float_digits = ${floatDigits}`] : []),
  ].join('; ');
  const byValue = se.e === te.e && oldest >= 14;
  // Heap sizes on each side, once: what the reads cover, for the throughput figures, and how a big
  // table is split among a side's readers.
  const sizeSql = `SELECT format('%s.%s', n.nspname, c.relname) AS t, pg_relation_size(c.oid)::bigint AS b,
                          pg_relation_size(c.oid) / current_setting('block_size')::int AS p
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'`;
  const sizes = async (db: Db) =>
    new Map(
      (await db.query<{ t: string; b: number; p: number }>(sizeSql)).map((r) => [r.t, { bytes: r.b, pages: r.p }]),
    );
  const [srcSizes, tgtSizes] = await Promise.all([sizes(ctx.source), sizes(ctx.target)]);
  const heaps: Record<Side, Map<string, Heap>> = { source: srcSizes, target: tgtSizes };
  const majors: Record<Side, number> = { source: await serverMajor(ctx.source), target: await serverMajor(ctx.target) };
  const jobs = ctx.config.jobs;
  const app = `${objectNames(ctx.config.id).applicationName}:verify`;
  const point = ctx.faults?.verifyReader?.bind(ctx.faults);
  const readers: Record<Side, SideReaders> = {
    source: new SideReaders(ctx.source, jobs, app, point, ctx.faults?.verifyLockWaitMs, readerSetup),
    target: new SideReaders(ctx.target, jobs, app, point, ctx.faults?.verifyLockWaitMs, readerSetup),
  };
  const reads: Record<Side, SideReads> = { source: { ms: 0, bytes: 0 }, target: { ms: 0, bytes: 0 } };
  let waitMs = ctx.config.verifyWaitMs;

  /** What one side reads of a table: `read` by one reader, or for a whole table's checksums, by parts. */
  type Reading<T> = (db: Db) => SideRead<T> & { merge(parts: T[]): T };
  const once =
    <T>(t: TableInfo, read: (query: Query) => Promise<T>): Reading<T> =>
    (db) => ({
      parts: [read],
      label: tableLabel(t),
      relation: qualified(t),
      live: db === s.live,
      merge: (r) => r[0] as T,
    });
  /** A whole table's checksums, by part (partExpr: by chunk for a table without a key). */
  const wholeChecksums =
    (p: Plan): Reading<Map<number, Bucket>> =>
    (db) => ({
      parts: heapParts(heaps[db.side].get(tableLabel(p.table)), ctx.config.verifyPartBytes, jobs, majors[db.side]).map(
        (blocks, _, all) => (q: Query) => checksums(q, p, undefined, all.length > 1 ? blocks : undefined, true),
      ),
      label: tableLabel(p.table),
      relation: qualified(p.table),
      live: db === s.live,
      merge: mergeChecksums,
    });

  /**
   * The read on the live side in a snapshot taken first, and on the replica once it has confirmed the
   * live side's WAL position read just after that snapshot (so it has every commit the live read sees; a
   * difference is never lag): both sides read at once, not one after the other. Each side's readers of
   * one read share one snapshot (the replica's taken once it has confirmed the position). Undefined
   * when the replica did not get there in time.
   */
  const atMatchingPoints = async <T>(reading: Reading<T>) => {
    let replica: Promise<T | undefined> = Promise.resolve(undefined);
    const liveRead = reading(s.live);
    const live = liveRead.merge(
      // (Called once, when every live reader holds its lock in the snapshot the position was read in.)
      await readers[s.live.side].atOnePoint(liveRead, (lsn) => {
        replica = (async () => {
          if (!(await waitConfirmed(s.live, s.slot, lsn, waitMs))) {
            waitMs = Math.min(waitMs, WAIT_AFTER_BEHIND_MS);
            return undefined;
          }
          const replicaRead = reading(s.replica);
          return replicaRead.merge(await readers[s.replica.side].atOnePoint(replicaRead));
        })();
        replica.catch(() => {}); // (awaited below)
      }),
    );
    const other = await replica;
    return other === undefined ? undefined : { live, replica: other };
  };
  const sides = <T>(r: { live: T; replica: T }) =>
    s.live === ctx.source ? { src: r.live, tgt: r.replica } : { src: r.replica, tgt: r.live };

  const verifyOne = async (t: TableInfo): Promise<VerifyTableResult> => {
    const p = await plan(ctx.source, t, rowHashSql(t, byValue, converted), converted);
    const label = tableLabel(t);
    reads.source.bytes += srcSizes.get(label)?.bytes ?? 0;
    reads.target.bytes += tgtSizes.get(label)?.bytes ?? 0;
    const behind = async (): Promise<VerifyTableResult> => ({
      table: label,
      sourceRows: p.rows,
      targetRows: 0,
      chunks: 0,
      mismatchedRanges: [],
      outcome: 'behind',
      behindBytes: await behindBytes(s),
    });
    const byPart = await atMatchingPoints(wholeChecksums(p));
    if (!byPart) return behind();
    const toChunks = (m: Map<number, Bucket>) => (p.parts > 1 ? mergeChecksums([m], (x) => chunkOf(p, x)) : m);
    const first = { live: toChunks(byPart.live), replica: toChunks(byPart.replica) };
    const { src, tgt } = sides(first);
    const bad = differing(src, tgt);
    const settled =
      bad.length === 0
        ? { proven: [], unsettled: [], keys: [], followed: 0 }
        : t.identityColumns.length > 0
          ? await settleRows(p, differing(byPart.live, byPart.replica))
          : await settleChunks(p, bad, first);
    if (settled === undefined) return behind();
    const count = (m: Map<number, Bucket>) => [...m.values()].reduce((n, b) => n + Number(b.n), 0);
    const labels = (chunks: number[]) => chunks.map((b) => p.label(b, src.get(b) ?? tgt.get(b)));
    return {
      table: label,
      sourceRows: count(src),
      targetRows: count(tgt),
      chunks: Math.max(src.size, tgt.size),
      mismatchedRanges: labels(settled.proven),
      mismatchedKeys: settled.keys.length ? settled.keys.slice(0, SHOWN_KEYS) : undefined,
      unsettledRanges: settled.unsettled.length ? labels(settled.unsettled) : undefined,
      rowsFollowed: settled.followed || undefined,
      outcome: settled.proven.length ? 'mismatch' : settled.unsettled.length ? 'behind' : 'ok',
    };
  };

  /**
   * Differing parts of a table with a key (the first read's checksums are by part), followed row by
   * row: the rows (key, hash) of the parts that differ read at matching points, then only the
   * differing rows again, until each is settled. A row is proven
   * different when the live side read it the same before and after a replica read that came once the
   * replica had applied past the first read (nothing changed it meanwhile, so the replica had to show
   * exactly that); it is settled equal when both sides read the same. Rows the application changed at
   * every read are read once more with the table's writes held; if that cannot be done, they stay
   * unsettled: not shown to differ, not shown to match.
   *
   * At most `verifyOpenRows` rows are followed at once: the parts whose differing rows did not fit
   * (an insert-only table that took more than that between the two sides' reads) are read again, once
   * the rows taken before them are settled, in as many rounds as that takes. A round takes at least
   * one part whole, so the rounds end; a round stops reading at the first part that does not fit, and
   * the parts of a chunk already proven different are not read again (the chunk is reported), so that
   * a table the target lost most of is not read once a round. Only the proven chunks, a count and the
   * first keys are kept; the table's writes are held once at most.
   */
  /** A row followed one by one: its chunk, and its hash as each side read it last (none: not there). */
  type Open = { chunk: number; live?: string; replica?: string };
  const settleRows = async (p: Plan, parts: number[]) => {
    const limit = ctx.config.verifyOpenRows;
    const provenChunks = new Set<number>();
    const provenKeys: string[] = [];
    const prove = (k: string, chunk: number) => {
      provenChunks.add(chunk);
      if (provenKeys.length < SHOWN_KEYS) provenKeys.push(k);
    };
    const unsettled = new Set<number>();
    let followed = 0;
    let rounds = 0;
    let heldOnce = false;
    const count = <T>(r: { live: Map<string, T>; replica: Map<string, T> }) => {
      followed += r.live.size + r.replica.size;
    };
    // The rows of many parts per read, so that a table whose every chunk the application touches
    // waits for the replica a few times, not once per chunk.
    const partsPerRead = Math.max(1, Math.floor(ROW_READ_ROWS / Math.max(1, DEFAULTS.verifyChunkRows / p.parts)));
    let queue = parts;
    while (queue.length > 0) {
      rounds++;
      const open = new Map<string, Open>();
      /** The open rows' keys, and the chunks they are in (what a read of only those rows names). */
      const openRows = () => ({ keys: [...open.keys()], chunks: [...new Set([...open.values()].map((o) => o.chunk))] });
      const later: number[] = [];
      let j = 0;
      let lost = false;
      for (; j < queue.length && open.size < limit && later.length === 0; j += partsPerRead) {
        const some = queue.slice(j, j + partsPerRead);
        const their = [...new Set(some.map((x) => chunkOf(p, x)))];
        const r = await atMatchingPoints(
          once(p.table, (q) => rowHashesByChunk(q, p, their, p.parts > 1 ? some : undefined)),
        );
        if (!r) {
          if (!provenChunks.size) return undefined;
          // (The table is a mismatch already: what could not be read is said to be unsettled.)
          for (const x of queue) unsettled.add(chunkOf(p, x));
          lost = true;
          break;
        }
        count(r);
        // The differing rows by part, in the order the parts were asked for.
        const byPart = new Map<number, [string, Open][]>();
        const add = (k: string, x: number, o: Open) => {
          const rows = byPart.get(x);
          if (rows) rows.push([k, o]);
          else byPart.set(x, [[k, o]]);
        };
        for (const [k, [b, live, x]] of r.live) {
          const replica = r.replica.get(k)?.[1];
          if (live !== replica) add(k, x, { chunk: b, live, replica });
        }
        for (const [k, [b, replica, x]] of r.replica) if (!r.live.has(k)) add(k, x, { chunk: b, replica });
        for (const x of some) {
          const rows = byPart.get(x);
          if (!rows) continue;
          if (open.size > 0 && open.size + rows.length > limit) later.push(x);
          else for (const [k, o] of rows) open.set(k, o);
        }
      }
      // Parts not read this round, and those that did not fit; none of a chunk proven different meanwhile.
      queue = lost ? [] : [...later, ...queue.slice(j)];
      for (let i = 0; i < DEFAULTS.verifyRechecks && open.size > 0; i++) {
        const before = open.size;
        const { keys, chunks } = openRows();
        const r = await atMatchingPoints(once(p.table, (q) => rowHashes(q, p, chunks, keys)));
        if (!r) {
          if (provenChunks.size) break;
          return undefined;
        }
        count(r);
        for (const [k, prev] of open) {
          const [live, replica] = [r.live.get(k), r.replica.get(k)];
          // (Still different now as well: a row that came and went, or a value changed and changed back,
          // reads the same live twice without having stood still in between.)
          if (live === prev.live && prev.replica !== prev.live && replica !== live) {
            prove(k, prev.chunk);
            open.delete(k);
          } else if (live === replica) open.delete(k);
          else open.set(k, { chunk: prev.chunk, live, replica });
        }
        // Rows the application rewrites all the time do not settle by reading again (each read of a
        // bloated, churning table is a scan): when a recheck settled less than half, go to the hold.
        if (open.size > before / 2) break;
      }
      if (open.size > 0 && !heldOnce) {
        heldOnce = true;
        const { keys, chunks } = openRows();
        const held = await heldReads(ctx, s, p.table, (q) => rowHashes(q, p, chunks, keys), floatDigits);
        if (held) {
          count(held);
          const before = open.size;
          let differ = 0;
          for (const [k, o] of open)
            if (held.live.get(k) !== held.replica.get(k)) {
              prove(k, o.chunk);
              differ++;
            }
          open.clear();
          ctx.log(
            `verify: ${tableLabel(p.table)}: ${before} row(s) that kept changing read again with its writes held for ${held.heldMs} ms: ${differ ? `${differ} differ` : 'they match'}`,
          );
        }
      }
      for (const o of open.values()) unsettled.add(o.chunk);
      if (provenChunks.size) queue = queue.filter((x) => !provenChunks.has(chunkOf(p, x)));
    }
    if (rounds > 1)
      ctx.log(
        `verify: ${tableLabel(p.table)}: more than ${limit} row(s) differed at one read (rows arriving between the two sides' reads): followed in ${rounds} rounds`,
      );
    const chunksOf = (ks: Iterable<number>) => [...new Set(ks)].sort((x, y) => x - y);
    return {
      proven: chunksOf(provenChunks),
      unsettled: chunksOf([...unsettled].filter((b) => !provenChunks.has(b))),
      keys: provenKeys,
      followed,
    };
  };

  /**
   * Differing chunks of a table without a key (its rows cannot be told apart): the chunks read again at
   * matching points; proven different as rows are above (the same live read before and after), then
   * once more with the table's writes held when few enough chunks are left.
   */
  const settleChunks = async (
    p: Plan,
    bad: number[],
    first: { live: Map<number, Bucket>; replica: Map<number, Bucket> },
  ) => {
    const same = (a?: Bucket, b?: Bucket) => a?.n === b?.n && a?.h === b?.h;
    const last = { live: new Map(first.live), replica: new Map(first.replica) };
    const proven = new Set<number>();
    let open = bad;
    for (let i = 0; i < DEFAULTS.verifyRechecks && open.length > 0; i++) {
      const only = open;
      const r = await atMatchingPoints(once(p.table, (q) => checksums(q, p, only)));
      if (!r) {
        if (proven.size) break;
        return undefined;
      }
      const next: number[] = [];
      for (const b of open) {
        const [prevLive, prevReplica] = [last.live.get(b), last.replica.get(b)];
        const [live, replica] = [r.live.get(b), r.replica.get(b)];
        if (same(live, prevLive) && !same(prevReplica, prevLive)) proven.add(b);
        else if (!same(live, replica)) next.push(b);
        last.live.set(b, live as Bucket);
        last.replica.set(b, replica as Bucket);
      }
      open = next;
    }
    if (open.length > 0 && p.rows <= HOLD_MAX_CHUNKS * DEFAULTS.verifyChunkRows) {
      const only = open;
      const held = await heldReads(ctx, s, p.table, (q) => checksums(q, p, only), floatDigits);
      if (held) {
        const still = only.filter((b) => !same(held.live.get(b), held.replica.get(b)));
        for (const b of still) proven.add(b);
        ctx.log(
          `verify: ${tableLabel(p.table)}: ${only.length} chunk(s) that kept changing read again with its writes held for ${held.heldMs} ms: ${still.length ? `${still.length} still differ` : 'they match'}`,
        );
        open = [];
      }
    }
    return { proven: [...proven].sort((x, y) => x - y), unsettled: open, keys: [] as string[], followed: 0 };
  };

  const results: VerifyTableResult[] = new Array(tables.length);
  // Largest first (by the source's heap), as the load does: a big table's parts are not left for last.
  const order = tables
    .map((t, i) => ({ i, bytes: srcSizes.get(tableLabel(t))?.bytes ?? 0 }))
    .sort((a, b) => b.bytes - a.bytes)
    .map((x) => x.i);
  let next = 0;
  const worker = async () => {
    for (let i = order[next++]; i !== undefined; i = order[next++])
      results[i] = await verifyOne(tables[i] as TableInfo);
  };
  try {
    await Promise.all(Array.from({ length: Math.min(Math.max(VERIFY_CONCURRENCY, 2 * jobs), tables.length) }, worker));
    // A replica that was behind may have caught up since: those tables once more, with the full wait.
    const late = results.flatMap((r, i) => (r.outcome === 'behind' ? [i] : []));
    if (late.length) {
      waitMs = ctx.config.verifyWaitMs;
      for (const i of late) results[i] = await verifyOne(tables[i] as TableInfo);
    }
  } finally {
    await Promise.all([readers.source.close(), readers.target.close()]);
  }
  reads.source.ms = readers.source.busyMs;
  reads.target.ms = readers.target.busyMs;
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
    behindBytes: outcome === 'behind' ? Math.max(0, ...results.map((r) => r.behindBytes ?? 0)) : undefined,
    replication: s.name,
    tables: results,
    ms,
    sourceBytes: reads.source.bytes,
    targetBytes: reads.target.bytes,
    sourceMiBps: rate(reads.source),
    targetMiBps: rate(reads.target),
    readers: { source: readers.source.peak, target: readers.target.peak },
    at: new Date().toISOString(),
  };
}

/** Keys a summary names a table's differing rows by (all of them, up to SHOWN_KEYS, are in the result). */
const SUMMARY_KEYS = 5;

/** One line for a verify result: what it found, how long it took, how fast each side was read. */

export function verifySummary(r: VerifyResult): string {
  const rows = r.tables.reduce((n, t) => n + t.sourceRows, 0);
  const by = !r.readers
    ? ''
    : r.readers.source === r.readers.target
      ? `; ${r.readers.source} reader(s) a side`
      : `; ${r.readers.source} source reader(s), ${r.readers.target} target reader(s)`;
  const speed = `in ${(r.ms / 1000).toFixed(1)} s (source ${mib(r.sourceBytes)} at ${r.sourceMiBps} MiB/s, target ${mib(r.targetBytes)} at ${r.targetMiBps} MiB/s${by})`;
  if (r.outcome === 'ok') return `${r.tables.length} tables, ${rows} rows: counts and checksums match ${speed}`;
  if (r.outcome === 'behind') {
    const list = (ts: VerifyTableResult[]) =>
      `${ts.length} table(s) (${ts
        .slice(0, 3)
        .map((t) => t.table)
        .join(', ')}${ts.length > 3 ? ', …' : ''})`;
    const late = r.tables.filter((t) => t.outcome === 'behind' && !t.unsettledRanges);
    const changing = r.tables.filter((t) => t.outcome === 'behind' && t.unsettledRanges);
    const why = [
      late.length ? `${r.replication} ${mib(r.behindBytes ?? 0)} behind: ${list(late)} could not be compared` : '',
      changing.length
        ? `${list(changing)} changed at every read and could not be held still long enough to compare`
        : '',
    ].filter(Boolean);
    return `NOT VERIFIED: ${why.join('; ')}; every other table matches ${speed}`;
  }
  const bad = r.tables.filter((t) => t.outcome === 'mismatch');
  // Each table's ranges, and the keys of the rows proven different where the table has a key.
  const keys = (t: VerifyTableResult) =>
    t.mismatchedKeys?.length
      ? ` key${t.mismatchedKeys.length > 1 ? 's' : ''} ${t.mismatchedKeys.slice(0, SUMMARY_KEYS).join(', ')}${t.mismatchedKeys.length > SUMMARY_KEYS ? ', …' : ''}`
      : '';
  return `MISMATCH in ${bad.length} table(s): ${bad.map((t) => `${t.table} [${t.mismatchedRanges.slice(0, 3).join(', ')}${t.mismatchedRanges.length > 3 ? ', …' : ''}]${keys(t)}`).join('; ')} ${speed}`;
}

/** Phase "Verify" (after the switch). Re-running it simply verifies again. */
export async function verify(ctx: PhaseContext): Promise<string> {
  const result = await verifyTables(ctx);
  await ctx.update((s) => {
    s.verify = result;
  });
  return verifySummary(result);
}
