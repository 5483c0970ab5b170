/** Lag, retained WAL, open transactions and schema drift: what the cutover gate looks at. */

import { APPLY_RATE_FLOOR_BPS, type LagPoint, mbps, mib, predictDrainMs, sqlPrefix } from '@pgferry/core';
import { EXCLUDED_SCHEMAS, NOT_EXTENSION_MEMBER, USER_SCHEMA } from './catalog';
import { type Db, serverMajor } from './db';
import { currentLsn, waitConfirmed } from './freeze';

export interface LagReading {
  /** WAL the subscriber has not confirmed, including WAL not yet sent. */
  bytes: number;
  /** The source's WAL position and the slot's confirmed_flush_lsn, as bytes from 0/0 (see LagPoint). */
  point: LagPoint;
  /** WAL the slot keeps on the source's disk. */
  retainedBytes: number;
  active: boolean;
}

export async function readLag(source: Db, slot: string): Promise<LagReading | undefined> {
  const [row] = await source.query<{ current: number; confirmed: number; retained: number; active: boolean }>(
    `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') AS current,
            pg_wal_lsn_diff(s.confirmed_flush_lsn, '0/0') AS confirmed,
            pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained, s.active
       FROM pg_replication_slots s WHERE s.slot_name = $1`,
    [slot],
  );
  if (!row) return undefined;
  const point = { t: Date.now(), current: row.current, confirmed: row.confirmed ?? 0 };
  return {
    bytes: Math.max(0, point.current - point.confirmed),
    point,
    retainedBytes: Math.max(0, row.retained),
    active: row.active,
  };
}

/**
 * Likely causes of an apply that cannot keep up, named from both catalogs: tables whose UPDATE and DELETE
 * the subscriber must find by a scan of the whole table (REPLICA IDENTITY FULL with no index it can use;
 * from 16 on it uses any plain b-tree index), and transactions too large for the decoding memory (spilled
 * to disk or streamed: they arrive, or are applied, only at their commit).
 */
export async function applyBottlenecks(source: Db, target: Db, slot: string): Promise<string[]> {
  const out: string[] = [];
  const full = await source.query<{ t: string }>(
    `SELECT format('%I.%I', n.nspname, c.relname) AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND c.relreplident = 'f' AND ${USER_SCHEMA} AND ${NOT_EXTENSION_MEMBER}`,
    [EXCLUDED_SCHEMAS],
  );
  if (full.length) {
    const indexed =
      (await serverMajor(target)) >= 16
        ? new Set(
            (
              await target.query<{ t: string }>(
                `SELECT DISTINCT format('%I.%I', n.nspname, c.relname) AS t FROM pg_index x
                   JOIN pg_class c ON c.oid = x.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_am am ON am.oid = i.relam
                  WHERE am.amname IN ('btree', 'hash') AND x.indpred IS NULL AND x.indexprs IS NULL AND x.indisvalid`,
              )
            ).map((r) => r.t),
          )
        : new Set<string>();
    const scanned = full.map((r) => r.t).filter((t) => !indexed.has(t));
    if (scanned.length)
      out.push(
        `REPLICA IDENTITY FULL without an index the target can use on ${scanned.slice(0, 5).join(', ')}${scanned.length > 5 ? ` and ${scanned.length - 5} more` : ''} (each UPDATE/DELETE scans the table on the target: give it a primary key, or on a 16+ target an index)`,
      );
  }
  // (pg_stat_replication_slots is 14+: an older source cannot say.)
  const [spill] = await source
    .query<{ spilled: number; streamed: number }>(
      'SELECT spill_txns AS spilled, stream_txns AS streamed FROM pg_stat_replication_slots WHERE slot_name = $1',
      [slot],
    )
    .catch(() => []);
  if (spill && (spill.spilled > 0 || spill.streamed > 0))
    out.push(
      `large transactions (${spill.spilled} spilled to disk, ${spill.streamed} streamed on the source since the slot was made: each is applied only at its commit; a larger logical_decoding_work_mem on the source, or smaller transactions, help)`,
    );
  out.push(
    "a target too small for the write rate (each subscription applies with one worker, parallel only for streamed large transactions on 16+: its CPU and the target's disk bound the rate)",
  );
  return out;
}

export interface OpenTransaction {
  pid: number;
  user: string;
  application: string;
  ageMs: number;
  query: string;
}

/** Client sessions with an open transaction matching `where` (other than this session), oldest first. */
async function openTransactions(db: Db, where: string, params: unknown[] = []): Promise<OpenTransaction[]> {
  const rows = await db.query<{ pid: number; usename: string; application_name: string; age: number; query: string }>(
    `SELECT pid, usename, application_name, (extract(epoch FROM now() - xact_start) * 1000)::bigint AS age, left(query, 200) AS query
       FROM pg_stat_activity
      WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND ${where}
      ORDER BY xact_start`,
    params,
  );
  return rows.map((r) => ({
    pid: r.pid,
    user: r.usename,
    application: r.application_name,
    ageMs: r.age,
    query: sqlPrefix(r.query),
  }));
}

/** Transactions on the source database open longer than `olderThanMs` (other than pgferry's own). */
export function longTransactions(source: Db, olderThanMs: number): Promise<OpenTransaction[]> {
  return openTransactions(
    source,
    "datname = current_database() AND application_name NOT LIKE 'pgferry:%' AND xact_start < now() - make_interval(secs => $1 / 1000.0)",
    [olderThanMs],
  );
}

/** Columns of every published table, as "schema.table: col type, ..." lines, for drift detection. */
async function fingerprint(db: Db): Promise<Map<string, Map<string, string>>> {
  const rows = await db.query<{ tbl: string; col: string; typ: string }>(
    `SELECT format('%s.%s', n.nspname, c.relname) AS tbl, a.attname AS col, format_type(a.atttypid, a.atttypmod) AS typ
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      WHERE c.relkind IN ('r', 'p') AND ${USER_SCHEMA}
        AND ${NOT_EXTENSION_MEMBER}`,
    [EXCLUDED_SCHEMAS],
  );
  const map = new Map<string, Map<string, string>>();
  for (const r of rows) {
    const cols = map.get(r.tbl) ?? new Map<string, string>();
    cols.set(r.col, r.typ);
    map.set(r.tbl, cols);
  }
  return map;
}

/**
 * Indexes and constraints of the same tables, as "kind name on table" → state. Names and kinds, not
 * definitions: pg_get_indexdef's text may differ between major versions, a name does not.
 */
async function keys(db: Db): Promise<Map<string, string>> {
  const rows = await db.query<{ what: string; state: string }>(
    `SELECT format('%s %I.%I on %s', CASE WHEN x.indisunique THEN 'unique index' ELSE 'index' END,
                   n.nspname, ic.relname, format('%s.%s', n.nspname, c.relname)) AS what,
            CASE WHEN x.indisvalid THEN 'valid' ELSE 'invalid' END AS state
       FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND ${USER_SCHEMA}
     UNION ALL
     SELECT format('%s %I on %s', CASE k.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique constraint'
                     WHEN 'f' THEN 'foreign key' WHEN 'c' THEN 'check constraint' WHEN 'x' THEN 'exclusion constraint'
                     ELSE 'constraint trigger' END, k.conname, format('%s.%s', n.nspname, c.relname)),
            CASE WHEN k.convalidated THEN 'valid' ELSE 'not valid' END
       FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND k.contype IN ('p', 'u', 'f', 'c', 'x', 't')
        AND ${USER_SCHEMA}`,
    [EXCLUDED_SCHEMAS],
  );
  return new Map(rows.map((r) => [r.what, r.state]));
}

/**
 * DDL run on the source after the schema was copied is not replicated. Compare tables, columns,
 * indexes and constraints on both sides and name every difference; an empty list means they agree.
 * `validating`: foreign keys (as named here) the load added NOT VALID and catch-up is validating, not
 * valid on the target for that reason alone.
 * A missing unique index or constraint would let the target accept rows the source refuses; a
 * missing index, slow queries the moment the application arrives.
 */
export async function schemaDrift(source: Db, target: Db, validating: Set<string> = new Set()): Promise<string[]> {
  const [src, tgt, srcKeys, tgtKeys] = await Promise.all([
    fingerprint(source),
    fingerprint(target),
    keys(source),
    keys(target),
  ]);
  const drift: string[] = [];
  for (const [what, state] of srcKeys) {
    const other = tgtKeys.get(what);
    if (other === undefined) drift.push(`${what} exists on the source but not on the target`);
    else if (other !== state && !(validating.has(what) && other === 'not valid'))
      drift.push(`${what} is ${state} on the source but ${other} on the target`);
  }
  for (const what of tgtKeys.keys())
    if (!srcKeys.has(what)) drift.push(`${what} exists on the target but was dropped on the source`);
  for (const [tbl, cols] of src) {
    const other = tgt.get(tbl);
    if (!other) {
      drift.push(`table ${tbl} exists on the source but not on the target`);
      continue;
    }
    for (const [col, typ] of cols) {
      const t = other.get(col);
      if (t === undefined) drift.push(`column ${tbl}.${col} (${typ}) exists on the source but not on the target`);
      else if (t !== typ) drift.push(`column ${tbl}.${col} is ${typ} on the source but ${t} on the target`);
    }
    for (const col of other.keys())
      if (!cols.has(col)) drift.push(`column ${tbl}.${col} exists on the target but was dropped on the source`);
  }
  for (const tbl of tgt.keys())
    if (!src.has(tbl)) drift.push(`table ${tbl} exists on the target but not on the source (dropped?)`);
  return drift;
}

/**
 * Write transactions open on the target (other than replication workers). Creating the reverse slot
 * during the cutover waits for every one of them, inside the write gap, so they close the gate.
 */
export function targetWriteTransactions(target: Db): Promise<OpenTransaction[]> {
  return openTransactions(target, 'backend_xid IS NOT NULL');
}

/** What a catch-up just before a freeze says about the drain the freeze would start. */
export interface DrainForecast {
  /** The replication slot exists (without it there is nothing to forecast: predictedMs is Infinity). */
  slotFound: boolean;
  /** The subscriber confirmed the position taken at the start within the wait. */
  caughtUp: boolean;
  /** Unconfirmed WAL after the catch-up. */
  bytes: number;
  /** Bytes per second the prediction uses: measured on the catch-up, or the fallback (never below the floor). */
  appliedBps: number;
  /** appliedBps was measured on this catch-up; false when too little was confirmed to measure a rate. */
  measured: boolean;
  predictedMs: number;
}

/** Below this many bytes confirmed during the catch-up, a rate measured on it is noise. */
const MEASURABLE_BYTES = 256 * 1024;

/**
 * Catch up once (wait until the subscriber of `slot` confirms the position taken now, for at most
 * `waitMs`) and predict the drain a freeze would start from the rate measured on this very catch-up.
 * When too little was confirmed to measure one, `fallbackBps` stands in (the cutover passes the rate
 * its gate last saw), never below APPLY_RATE_FLOOR_BPS. The cutover and the rollback both decide
 * whether to freeze from this one forecast, so their predictions cannot drift apart.
 */
export async function forecastDrain(
  live: Db,
  slot: string,
  waitMs: number,
  fallbackBps = APPLY_RATE_FLOOR_BPS,
): Promise<DrainForecast> {
  const before = await readLag(live, slot);
  const caughtUp = await waitConfirmed(live, slot, await currentLsn(live), waitMs);
  const after = await readLag(live, slot);
  if (!before || !after)
    return {
      slotFound: false,
      caughtUp: false,
      bytes: 0,
      appliedBps: 0,
      measured: false,
      predictedMs: Number.POSITIVE_INFINITY,
    };
  const elapsed = (after.point.t - before.point.t) / 1000;
  const confirmed = after.point.confirmed - before.point.confirmed;
  const measured = elapsed > 0 && confirmed >= MEASURABLE_BYTES;
  const appliedBps = measured ? confirmed / elapsed : Math.max(fallbackBps, APPLY_RATE_FLOOR_BPS);
  return {
    slotFound: true,
    caughtUp,
    bytes: after.bytes,
    appliedBps,
    measured,
    predictedMs: predictDrainMs(after.bytes, appliedBps),
  };
}

/** A forecast's figures for a person: "12.0 MiB unconfirmed, the target applying 3.1 MB/s". */
export function describeDrainForecast(f: DrainForecast, applier: string): string {
  const rate = f.measured
    ? mbps(f.appliedBps)
    : `${mbps(f.appliedBps)} assumed (too little was applied during the catch-up to measure a rate)`;
  return `${mib(f.bytes)} unconfirmed, ${applier} applying ${rate}`;
}
