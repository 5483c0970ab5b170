/**
 * Database-wide write freeze. `default_transaction_read_only` set on the database covers every role
 * for every new session; every existing session of the database is ended, whoever it belongs to,
 * because it may already be inside a writing transaction or have turned read-only off.
 */
import { DEFAULTS, errorMessage, FreezeFailedError, PreparedTransactionsPendingError } from '@pgferry/core';
import { type Db, ident, serverMajor, sleep } from './db';

export interface FreezeResult {
  sessionsEnded: number;
  /** First xid not yet assigned when the freeze took hold: any committed xid from here on is a write after the freeze. */
  xmax: string;
  /** The freeze's own transactions past xmax (its WAL flush): writesSince leaves them out. */
  ownXids: string[];
}

/** Client sessions of this database that are not pgferry's own (walsenders and background workers are spared). */
const OTHER_SESSIONS = `SELECT pid FROM pg_stat_activity
  WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
    AND application_name NOT LIKE 'pgferry:%'`;

export interface PreparedTransaction {
  gid: string;
  owner: string;
  database: string;
  ageMs: number;
}

/**
 * Prepared transactions (two-phase commit) of this database, or of every database with `all`, oldest
 * first. Any session may COMMIT PREPARED one, read-only or not.
 */
export async function preparedTransactions(db: Db, options: { all?: boolean } = {}): Promise<PreparedTransaction[]> {
  const rows = await db.query<PreparedTransaction & { ageMs: string }>(
    `SELECT gid, owner, database, (extract(epoch FROM clock_timestamp() - prepared) * 1000)::bigint AS "ageMs"
       FROM pg_prepared_xacts ${options.all ? '' : 'WHERE database = current_database()'} ORDER BY prepared`,
  );
  return rows.map((r) => ({ ...r, ageMs: Number(r.ageMs) }));
}

export function formatAge(ms: number): string {
  return ms < 120_000 ? `${Math.round(ms / 1000)} s` : `${Math.round(ms / 60_000)} min`;
}

/** `'gid' (owner x, prepared 7 min ago)`, with the database when `withDatabase`. */
export function describePrepared(p: PreparedTransaction, withDatabase = false): string {
  return `'${p.gid}' (owner ${p.owner}${withDatabase ? `, database ${p.database}` : ''}, prepared ${formatAge(p.ageMs)} ago)`;
}

export interface FreezeHazard {
  kind: 'role-setting' | 'prepared-transaction' | 'privilege';
  message: string;
}

/**
 * Why a freeze of this database would not stop every write, each saying what to do; empty when it
 * would. The catch-up gate stays closed on these, and freezeWrites refuses to start.
 * - A role's own default_transaction_read_only (ALTER ROLE … SET) overrides the database's.
 * - An orphaned prepared transaction (older than `preparedOrphanMs`: its transaction manager forgot
 *   it) could be committed by a read-only session at any time. Younger ones are in flight: the
 *   cutover waits for them after the freeze (waitPreparedTransactions).
 * - Without pg_signal_backend and pg_read_all_stats (or superuser), other roles' sessions can be
 *   neither seen (pg_stat_activity hides their backend_type) nor ended.
 */
export async function freezeHazards(db: Db, options: { preparedOrphanMs?: number } = {}): Promise<FreezeHazard[]> {
  const orphanMs = options.preparedOrphanMs ?? DEFAULTS.preparedOrphanMs;
  const out: FreezeHazard[] = [];
  const roles = await db.query<{ role: string; everywhere: boolean; setting: string }>(
    `SELECT r.rolname AS role, s.setdatabase = 0 AS everywhere, c AS setting
       FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole, unnest(s.setconfig) AS c
      WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
        -- A role's setting applies to its own logins only; RDS's internal roles (rdsadmin carries this
        -- very setting) are AWS's, and nobody else can change them.
        AND r.rolcanlogin AND r.rolname !~ '^rds(admin|repladmin|topmgr)$'
        AND lower(c) LIKE 'default_transaction_read_only=%'
        AND lower(split_part(c, '=', 2)) NOT IN ('on', 'true', 'yes', '1', 't', 'y')
      ORDER BY 1`,
  );
  for (const r of roles)
    out.push({
      kind: 'role-setting',
      message: `role ${r.role} has its own ${r.setting}, which overrides the freeze: its sessions could write after it. Until the migration is over, run ALTER ROLE ${ident(r.role)}${r.everywhere ? '' : ` IN DATABASE ${ident(db.database)}`} RESET default_transaction_read_only`,
    });
  for (const p of (await preparedTransactions(db)).filter((x) => x.ageMs >= orphanMs))
    out.push({
      kind: 'prepared-transaction',
      message: `prepared transaction ${describePrepared(p)} is older than ${formatAge(orphanMs)}: an orphan its transaction manager forgot, which anyone could still commit after the freeze (it would stay on the ${db.side}); COMMIT PREPARED or ROLLBACK PREPARED it, as its transaction manager's log says`,
    });
  const { ok } = await db.one<{ ok: boolean }>(
    `SELECT rolsuper OR (pg_has_role(current_user, 'pg_signal_backend', 'USAGE')
                         AND pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')) AS ok
       FROM pg_roles WHERE rolname = current_user`,
  );
  if (!ok)
    out.push({
      kind: 'privilege',
      message: `the ${db.side} role ${db.side === 'source' ? '(--source)' : '(--target)'} can neither see nor end other roles' sessions, so a freeze could not end a transaction that is writing: GRANT pg_signal_backend, pg_read_all_stats TO it (on RDS: GRANT rds_superuser)`,
    });
  return out;
}

export interface FreezeOptions {
  timeoutMs?: number;
  preparedOrphanMs?: number;
  /**
   * Freeze again a database an undo had unfrozen: no hazard check first (it must hold whatever they
   * are), and a database whose sessions do not end stays frozen (unfreezing it would let both sides write).
   */
  refreeze?: boolean;
}

export async function freezeWrites(db: Db, options: FreezeOptions = {}): Promise<FreezeResult> {
  if (!options.refreeze) {
    const hazards = await freezeHazards(db, options);
    if (hazards.length)
      throw new FreezeFailedError(
        `the ${db.side} cannot be frozen safely: ${hazards.map((h) => h.message).join('; ')}`,
        {
          phase: 'cutover',
          hint: 'nothing was frozen; fix the above and run the cutover again',
        },
      );
  }
  await db.query(`ALTER DATABASE ${ident(db.database)} SET default_transaction_read_only = on`);
  // Sessions that began after this are read-only from their start (they read the database's settings
  // as they connect): they are neither ended nor waited for. A pool that reconnects at once would
  // otherwise always have a session left, and the freeze could never finish.
  // The xid horizon is read at the same moment: a spared session that turns read-only off and writes
  // takes an xid at or past it, so writesSince counts it, however long the sessions below take to end.
  const major = await serverMajor(db);
  const { since, xmax } = await db.one<{ since: string; xmax: string }>(
    `SELECT clock_timestamp()::text AS since, ${nextXid(major)}::text AS xmax`,
  );
  const before = `${OTHER_SESSIONS} AND backend_start < $1::timestamptz`;
  const deadline = Date.now() + (options.timeoutMs ?? 5000);
  // (By pid: a backend still exiting is signalled again on the next pass.)
  const ended = new Set<number>();
  for (;;) {
    const rows = await db.query<{ pid: number; ok: boolean }>(
      `SELECT pid, pg_terminate_backend(pid) AS ok FROM (${before}) b`,
      [since],
    );
    for (const r of rows) if (r.ok) ended.add(r.pid);
    // pg_terminate_backend only signals: a backend in the middle of COMMIT may still write its commit
    // record. Wait until they are gone so the LSN read after this covers every acknowledged write.
    const left = await db.query(before, [since]);
    if (left.length === 0) break;
    if (Date.now() > deadline) {
      const what = `${left.length} session(s) on ${db.side} database ${db.database} did not end after pg_terminate_backend`;
      if (options.refreeze)
        throw new FreezeFailedError(`${what}; the ${db.side} stays read-only`, {
          hint: 'check for stuck backends in pg_stat_activity',
        });
      const unfrozen = await unfreezeWrites(db).then(
        () => `the ${db.side} was unfrozen again`,
        (err) => `unfreezing the ${db.side} again failed too (${errorMessage(err)}): it may still be read-only`,
      );
      throw new FreezeFailedError(`${what}; ${unfrozen}`, {
        phase: 'cutover',
        hint: 'check for stuck backends in pg_stat_activity',
      });
    }
    await sleep(5);
  }
  // So that the LSN read after the freeze covers commits acknowledged with synchronous_commit = off.
  // (Its own transaction is past xmax: not a write after the freeze.)
  const own = await flushWal(db, 'freeze');
  return { sessionsEnded: ended.size, xmax, ownXids: [own] };
}

/**
 * After the freeze, wait until no prepared transaction of the database is left. A transaction manager
 * commits what it prepared before the freeze with COMMIT PREPARED, which a read-only database accepts
 * (from a new session, when the freeze ended its own); a drain LSN read before that commit would miss
 * it, so the LSN is read only once there is none. Past `timeoutMs`, throws naming them (the caller
 * unfreezes and tries again later, as after a drain timeout).
 */
export async function waitPreparedTransactions(db: Db, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = await preparedTransactions(db);
    if (left.length === 0) return;
    if (Date.now() >= deadline)
      throw new PreparedTransactionsPendingError(
        `${left.length} prepared transaction(s) of the ${db.side} database were neither committed nor rolled back within ${timeoutMs} ms of the freeze: ${left.map((p) => describePrepared(p)).join(', ')}`,
        {
          hint: 'pgferry returns to catch-up and tries again; if they stay, ask their transaction manager why (or raise --max-prepared-wait-ms)',
        },
      );
    await sleep(5);
  }
}

/**
 * A commit acknowledged with synchronous_commit = off may still sit in the WAL buffers, past
 * pg_current_wal_lsn(), where a drain would not wait for it. A synchronous commit of our own that
 * wrote WAL (a transactional logical message, which subscriptions ignore; a bare xid would commit
 * asynchronously) flushes every record before it: an LSN read afterwards covers them. `local`: flushed
 * here, without waiting for a synchronous standby (one that is down would stall the write gap).
 */
export async function flushWal(db: Db, tag: 'freeze' | 'verify'): Promise<string> {
  const current = (await serverMajor(db)) >= 13 ? 'pg_current_xact_id()' : 'txid_current()';
  return db.withClient(async (c) => {
    await c.query('BEGIN');
    try {
      await c.query('SET LOCAL synchronous_commit = local');
      const r = await c.query<{ xid: string }>(
        `SELECT ${current}::text AS xid FROM pg_logical_emit_message(true, 'pgferry', '${tag}')`,
      );
      await c.query('COMMIT');
      return r.rows[0]?.xid as string;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    }
  });
}

export async function unfreezeWrites(db: Db): Promise<void> {
  await db.query(`ALTER DATABASE ${ident(db.database)} RESET default_transaction_read_only`);
}

export async function isFrozen(db: Db): Promise<boolean> {
  const rows = await db.query(
    `SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
      WHERE d.datname = current_database() AND s.setrole = 0 AND 'default_transaction_read_only=on' = ANY (s.setconfig)`,
  );
  return rows.length > 0;
}

/** The first xid not yet assigned, with its epoch (before 13: the txid_* functions, which count the same way). */
const nextXid = (major: number) =>
  major >= 13 ? 'pg_snapshot_xmax(pg_current_snapshot())' : 'txid_snapshot_xmax(txid_current_snapshot())';

/**
 * Transactions that committed with an xid assigned at or after `xmax`: writes after the freeze
 * (a session that turned read-only off), but for `own` (the freeze's). Autovacuum's ANALYZE also takes
 * xids, so this may count it.
 */
export async function writesSince(db: Db, xmax: string, own: string[] = []): Promise<number> {
  const major = await serverMajor(db);
  const { n } = await db.one<{ n: number }>(
    `SELECT count(*)::int AS n FROM generate_series($1::text::bigint, ${nextXid(major)}::text::bigint - 1) x
      WHERE ${major >= 13 ? 'pg_xact_status(x::text::xid8)' : 'txid_status(x)'} = 'committed'
        AND x <> ALL($2::bigint[])`,
    [xmax, own],
  );
  return n;
}

export async function currentLsn(db: Db): Promise<string> {
  return (await db.one<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn')).lsn;
}

/**
 * Wait until the slot's consumer has confirmed `lsn`; false on timeout. Polled every 2 ms at first (a
 * drain inside the write gap is over in tens of ms), less often the longer it takes (verify may wait
 * seconds for a replica).
 */
export async function waitConfirmed(db: Db, slot: string, lsn: string, timeoutMs: number): Promise<boolean> {
  const start = Date.now();
  const deadline = start + timeoutMs;
  for (;;) {
    const [row] = await db.query<{ ok: boolean }>(
      'SELECT confirmed_flush_lsn >= $2::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = $1',
      [slot, lsn],
    );
    if (row?.ok) return true;
    const now = Date.now();
    if (now > deadline) return false;
    await sleep(Math.min(20, 2 + Math.floor((now - start) / 50), deadline - now + 1));
  }
}
