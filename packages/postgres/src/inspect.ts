/**
 * What is live on the servers for one migration, for `pgferry status`: the state file says what
 * pgferry last did, the servers say what is true now. After a crash that is what matters: a slot
 * nobody reads retains WAL on the source until its disk fills, a database left frozen refuses the
 * application's writes. Everything here only reads.
 */
import { formatBytes, type MigrationState, objectNames } from '@pgferry/core';
import { type Db, type Side, serverMajor } from './db';
import { isFrozen } from './freeze';
import { beforeCutoverText } from './phases/catch-up';

export interface SlotLive {
  name: string;
  /** A walsender is reading it (a subscription is replicating). */
  active: boolean;
  /** WAL the slot keeps on this server's disk. */
  retainedBytes: number;
  /** pg_replication_slots.wal_status (13+; null before): `lost` means the slot can no longer replicate. */
  walStatus: string | null;
}

export interface SubscriptionLive {
  name: string;
  enabled: boolean;
  /** An apply worker is running for it right now. */
  workerRunning: boolean;
  /** Apply errors since the subscription was created (PostgreSQL 15+; null before). */
  applyErrors: number | null;
  /** Disabled and without a slot: made ahead of a cutover, not started yet. */
  prepared: boolean;
}

export interface SideLive {
  side: Side;
  /** Why this side could not be checked (nothing else is set then). */
  error?: string;
  /** The database refuses writes (default_transaction_read_only set on it by a freeze). */
  frozen?: boolean;
  /** Sessions of a pgferry process working on this migration (its own, pg_dump's, pg_restore's). */
  sessions?: number;
  slots: SlotLive[];
  publications: string[];
  subscriptions: SubscriptionLive[];
}

export interface LiveStatus {
  at: string;
  source: SideLive;
  target: SideLive;
  /**
   * The cutover gate's catalog checks (catch-up.ts catalogChecks), read by status itself once the load is
   * done and while forward replication carries the application's writes (nothing samples the gate after
   * `migrate --cutover manual` returns): absent otherwise, or when a side did not answer.
   */
  catalog?: LiveCatalog;
  /** What someone has to act on, most urgent first, each saying what to run. */
  attention: string[];
}

/** What status read of both catalogs (see LiveStatus.catalog). */
export interface LiveCatalog {
  /** How the two schemas differ (lag.ts schemaDrift). */
  drift: string[];
  /** Tables on both sides that replication does not carry, each with its remedy. */
  unreplicated: string[];
  /** What only the cutover needs and a person must put right (freeze hazards, its prerequisites). */
  beforeCutover: string[];
  /** Why the catalogs could not be compared (nothing else is set then). */
  error?: string;
}

/**
 * Drift that fails the target's apply at the next write to its table (as schemaDrift words it): a
 * column the target lacks, or one of another type there. Other drift (an index, a constraint, a
 * column dropped on the source) keeps the gate closed while replication goes on.
 */
export const driftStopsApply = (d: string) =>
  /^column .+ \(.+\) exists on the source but not on the target$|^column .+ is .+ on the source but .+ on the target$/.test(
    d,
  );

/**
 * Why forward replication does not carry the source's writes to the target now, as status tells it
 * (undefined: nothing shows it stopped). Before the switch only: afterwards the application writes to
 * the target. A subscription with apply errors and a worker running again is not counted: the count
 * is since its creation, and a worker restarted after a server came back says nothing is wrong now.
 */
export function forwardStopped(state: MigrationState, live: LiveStatus): string | undefined {
  if (state.cutover?.switchAt || state.cutover?.switchStartedAt || live.target.error) return undefined;
  const names = objectNames(state.id);
  const sub = live.target.subscriptions.find((x) => x.name === names.subscription);
  if (!sub) return `subscription ${names.subscription} is not on the target`;
  if (!sub.enabled) return `subscription ${names.subscription} on the target is disabled`;
  if (!sub.workerRunning) return `no apply worker runs for subscription ${names.subscription} on the target`;
  return undefined;
}

/**
 * A `pg_stat_activity` row of another session working on migration $1 (its application_name, with $2 the
 * migration's `inspectApplicationName`): pgferry's own (`pgferry:<id>`), its copy streams, slot
 * connection, pg_dump and pg_restore (`pgferry:<id>:…`), but no `status` inspection.
 */
const OTHER_PGFERRY_SESSION = `pid <> pg_backend_pid() AND application_name <> $2
  AND (application_name = $1 OR left(application_name, length($1) + 1) = $1 || ':')`;

/** application_name of the sessions `inspectSide` itself opens (not counted as a pgferry process). */
export const inspectApplicationName = (id: string) => `${objectNames(id).applicationName}:status`;

/**
 * End the sessions a pgferry process that is gone left working on migration `id`: pg_restore and
 * pg_dump outlive a `kill -9` of their parent and would go on writing into tables a resume truncates
 * and loads again. Only for a command holding the migration's claim (no other pgferry process works
 * on it then); `status` sessions are spared. Returns how many were ended.
 */
export async function endOrphanSessions(db: Db, id: string): Promise<number> {
  const app = objectNames(id).applicationName;
  const rows = await db.query<{ ok: boolean }>(
    `SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
      WHERE ${OTHER_PGFERRY_SESSION} AND application_name <> $1`,
    [app, inspectApplicationName(id)],
  );
  return rows.filter((r) => r.ok).length;
}

/** One side's objects of migration `id` and whether a pgferry process has sessions there. */
export async function inspectSide(db: Db, id: string): Promise<SideLive> {
  const names = objectNames(id);
  const ours = [names.slot, names.reverseSlot];
  const [slots, publications, subscriptions, sessions, frozen] = await Promise.all([
    db.query<SlotLive>(
      `SELECT slot_name AS name, active, ${(await serverMajor(db)) >= 13 ? 'wal_status' : 'NULL'} AS "walStatus",
              greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint AS "retainedBytes"
         FROM pg_replication_slots WHERE slot_name = ANY($1) ORDER BY slot_name`,
      [ours],
    ),
    db.query<{ name: string }>('SELECT pubname AS name FROM pg_publication WHERE pubname = ANY($1) ORDER BY 1', [ours]),
    db.query<{ name: string; enabled: boolean; worker: boolean; prepared: boolean }>(
      `SELECT s.subname AS name, s.subenabled AS enabled, NOT s.subenabled AND s.subslotname IS NULL AS prepared,
              EXISTS (SELECT 1 FROM pg_stat_subscription w WHERE w.subid = s.oid AND w.pid IS NOT NULL) AS worker
         FROM pg_subscription s WHERE s.subname = ANY($1) ORDER BY 1`,
      [ours],
    ),
    // Every backend named after this migration (copy streams, the slot's connection, pg_dump and
    // pg_restore, which pgferry names too) but the ones this inspection opened.
    db.one<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE ${OTHER_PGFERRY_SESSION}`,
      [names.applicationName, inspectApplicationName(id)],
    ),
    isFrozen(db),
  ]);
  const errors = new Map<string, number>();
  // pg_stat_subscription_stats exists from PostgreSQL 15 on.
  const { has } = await db.one<{ has: boolean }>(
    "SELECT to_regclass('pg_catalog.pg_stat_subscription_stats') IS NOT NULL AS has",
  );
  if (has && subscriptions.length) {
    for (const r of await db.query<{ name: string; n: number }>(
      'SELECT subname AS name, apply_error_count::int AS n FROM pg_stat_subscription_stats WHERE subname = ANY($1)',
      [ours],
    ))
      errors.set(r.name, r.n);
  }
  return {
    side: db.side,
    frozen,
    sessions: sessions.n,
    slots: slots.map((s) => ({ ...s, retainedBytes: Number(s.retainedBytes) })),
    publications: publications.map((p) => p.name),
    subscriptions: subscriptions.map((s) => ({
      name: s.name,
      enabled: s.enabled,
      workerRunning: s.worker,
      applyErrors: has ? (errors.get(s.name) ?? 0) : null,
      prepared: s.prepared,
    })),
  };
}

export const unreachable = (side: Side, error: string): SideLive => ({
  side,
  error,
  slots: [],
  publications: [],
  subscriptions: [],
});

/** A failed undo, as recorded: what failed, what it may have left, and the one command that ends it. */
export function describeUndoFailure(state: MigrationState): string {
  const u = state.undoFailed!;
  const n = objectNames(state.id);
  const left =
    u.of === 'cutover'
      ? `the source database may be read-only (frozen) and slot ${n.slot} on the source retains WAL while forward replication is stopped`
      : `the target database, which the application uses, may be read-only (frozen) and the source writable, with reverse replication (slot ${n.reverseSlot} on the target) stopped`;
  return `${u.message} (at ${u.at}): ${left}. \`${u.command}\` ends it`;
}

/**
 * What needs someone's attention, judged from the state and what the servers show. Each line says
 * what is wrong and which command puts it right.
 */
export function liveAttention(
  state: MigrationState,
  source: SideLive,
  target: SideLive,
  more: {
    /** The gate's catalog checks, when status read them (LiveStatus.catalog). */
    catalog?: LiveCatalog;
    /** What stopped the last pgferry process, when it recorded that (a signal): said instead of guessing. */
    stoppedBy?: string;
  } = {},
): string[] {
  const id = state.id;
  const out: string[] = [];
  const catalog = more.catalog;
  if (catalog?.error)
    out.push(
      `could not compare the two catalogs (${catalog.error}): status cannot tell whether DDL on the source, a table not replicated or what the cutover needs keeps the cutover gate closed`,
    );
  // DDL run on the source alone keeps the gate closed; only some of it stops the apply meanwhile.
  const drift = catalog?.drift ?? [];
  if (drift.length)
    out.push(
      `the source's schema changed and the target's did not: ${drift.join('; ')}. The cutover gate stays closed until the two match${drift.some(driftStopsApply) ? '; until then a write to a table with a column the target lacks (or has of another type) stops replication to the target: its apply fails, and retries' : ''}. Run the same DDL on the target (a table made on the source alone then needs adding to the publication, which status names); replication goes on from where it was, nothing is lost meanwhile (the slot keeps the WAL)`,
    );
  out.push(...(catalog?.unreplicated ?? []));
  if (catalog?.beforeCutover.length) out.push(beforeCutoverText(catalog.beforeCutover));
  const working = (source.sessions ?? 0) + (target.sessions ?? 0) > 0;
  // A failed undo says, from the servers, what it left, with its one command (then not repeated below).
  const undo = state.undoFailed;
  if (undo) {
    const left = [source, target].flatMap((side) => [
      ...(side.frozen ? [`the ${side.side} database is read-only`] : []),
      ...side.slots
        .filter((s) => !s.active)
        .map((s) => `slot ${s.name} on the ${side.side} retains ${formatBytes(s.retainedBytes)} of WAL, unread`),
    ]);
    out.push(
      `the undo of the ${undo.of} failed at ${undo.at} (${undo.message}): ${left.length ? left.join('; ') : 'no frozen database and no unread slot show now'}; \`${undo.command}\` ends it`,
    );
  }
  // A switch that began counts as done: the application may already write to the target.
  const switched = !!state.cutover?.switchAt || !!state.cutover?.switchStartedAt;
  const rolledBack = !!state.rollback?.switchAt || state.status === 'rolled-back';
  const names = objectNames(id);
  // Until the subscription exists nothing reads the slot: the copy is running, if its process is.
  const copying = working && !target.subscriptions.some((sub) => sub.name === names.subscription);
  const next = state.unfrozenWithoutTargetAt
    ? `\`pgferry cleanup --id ${id}\` (the source was made writable without the target: no rollback or resume)`
    : !state.cutover?.switchAt && state.cutover?.switchStartedAt
      ? `\`pgferry resume --id ${id}\` (finishes the switch)`
      : switched
        ? `\`pgferry resume --id ${id}\` (goes on), \`pgferry rollback --id ${id}\` (switches back) or \`pgferry cleanup --id ${id}\` (ends reverse replication)`
        : `\`pgferry resume --id ${id}\` (goes on) or \`pgferry rollback --id ${id}\` (drops it)`;
  for (const side of [source, target]) {
    if (side.error) out.push(`could not check the ${side.side}: ${side.error}`);
    for (const slot of side.slots) {
      if (slot.walStatus === 'lost') {
        out.push(
          `replication slot ${slot.name} on the ${side.side} has lost WAL it needed (max_slot_wal_keep_size) and can no longer replicate: \`pgferry rollback --id ${id}\`, then migrate again`,
        );
        continue;
      }
      if (slot.active || (copying && slot.name === names.slot) || undo) continue;
      out.push(
        `replication slot ${slot.name} on the ${side.side} is not being read and retains ${formatBytes(slot.retainedBytes)} of WAL, more with every write, until ${next}`,
      );
    }
    for (const sub of side.subscriptions) {
      // Reverse replication a cutover prepared before its freeze starts in the write gap (or goes with an undo).
      if (sub.prepared && sub.name === names.reverseSubscription && !switched) continue;
      if (!sub.enabled) out.push(`subscription ${sub.name} on the ${side.side} is disabled: nothing replicates`);
      else if (!sub.workerRunning || (sub.applyErrors ?? 0) > 0)
        out.push(
          `subscription ${sub.name} on the ${side.side}: ${sub.workerRunning ? 'apply worker running' : 'no apply worker running'}${sub.applyErrors ? `, ${sub.applyErrors} apply error(s) so far` : ''} (the ${side.side}'s server log says why)`,
        );
    }
  }
  // After the switch the source stays read-only, after a rollback the target does. The database the
  // application writes to frozen with no pgferry process at work is an interrupted freeze.
  const writable = switched && !rolledBack ? target : source;
  if (writable.frozen && !working && !undo) {
    const fix =
      writable === target
        ? state.cutover?.switchAt
          ? `a rollback was interrupted: \`pgferry rollback --id ${id}\` finishes it`
          : `a cutover stopped while switching: \`pgferry resume --id ${id}\` finishes the switch`
        : rolledBack
          ? `\`ALTER DATABASE … RESET default_transaction_read_only\` on it reopens it`
          : state.cutover?.freezeAt
            ? `a cutover was interrupted: \`pgferry resume --id ${id}\` finishes or undoes it, \`pgferry rollback --id ${id}\` unfreezes the source`
            : // pgferry records its freeze before it freezes: none recorded, none of this migration's.
              `not frozen by this migration (it recorded no freeze), so pgferry leaves it so: whoever froze it (another migration's cutover, a DBA) reopens it, with \`ALTER DATABASE … RESET default_transaction_read_only\``;
    out.push(
      `the ${writable.side} database, which the application writes to, is read-only (default_transaction_read_only) and no pgferry process is working on it: ${fix}`,
    );
  }
  // Killed after the switch back was recorded (kill -9): the application is on the source, the state not yet rolled back.
  if (state.rollback?.switchAt && !working && !['rolled-back', 'cleaned-up'].includes(state.status))
    out.push(
      `a rollback switched the application back to the source at ${state.rollback.switchAt} and stopped before it finished (the state still says ${state.status}): \`pgferry rollback --id ${id}\` finishes it`,
    );
  if (!working && !source.error && !target.error && state.status === 'running' && !undo)
    out.push(
      `no pgferry process is connected to either server, but the state says ${state.phase} is running: ${more.stoppedBy ? `the process was ${more.stoppedBy}` : 'the process stopped (crash, kill, lost machine)'}; \`pgferry resume --id ${id}\` goes on`,
    );
  return out;
}
