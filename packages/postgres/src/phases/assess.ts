/**
 * Assess the source (and the target when given) before anything is created: blockers stop the
 * migration, warnings are recorded, info explains what pgferry will do. Read-only: it creates nothing.
 */
import { AssessmentBlockedError, DEFAULTS, objectNames } from '@pgferry/core';
import {
  copyableTables,
  hasReplicaIdentity,
  listSequences,
  listTables,
  SCHEDULER_EXTENSIONS,
  type TableInfo,
  userObjects,
} from '../catalog';
import rdsList from '../data/rds-extensions.json' with { type: 'json' };
import type { Db } from '../db';
import { describePrepared, formatAge, freezeHazards, isFrozen, preparedTransactions } from '../freeze';
import { longTransactions } from '../lag';
import { canCreateSubscription, upstreamSubscriptions } from '../replication';

export interface Finding {
  level: 'blocker' | 'warning' | 'info';
  code: string;
  message: string;
  object?: string;
  hint?: string;
}

export interface AssessmentReport {
  source: {
    version: number;
    versionText: string;
    database: string;
    sizeBytes: number;
    tables: { name: string; sizeBytes: number; rowEstimate: number }[];
  };
  target?: { version: number; versionText: string; database: string; isRds: boolean };
  findings: Finding[];
}

interface RdsExtensions {
  source: string;
  note: string;
  versions: Record<string, string[]>;
}

// Imported, not read from a path next to this file: the CLI runs as one bundled file.
const rdsExtensions = (): RdsExtensions => rdsList;

/** The oldest source pgferry migrates (hashtextextended for verify, primary keys on partitioned tables). */
export const MIN_SOURCE_MAJOR = 11;

const LONG_TRANSACTION_MS = 5 * 60_000;
const MiB = 1024 * 1024;

interface ServerFacts {
  version: number;
  versionText: string;
  walLevel: string;
  maxSlots: number;
  usedSlots: number;
  maxSenders: number;
  usedSenders: number;
  maxSlotWalKeep: string | null;
  superuser: boolean;
  replication: boolean;
  rdsRoles: string[];
  isRds: boolean;
  canCreateInDb: boolean;
  user: string;
  size: number;
}

async function facts(db: Db): Promise<ServerFacts> {
  const r = await db.one<{
    v: number;
    vt: string;
    wl: string;
    ms: number;
    us: number;
    mw: number;
    uw: number;
    keep: string | null;
    su: boolean;
    rep: boolean;
    rds: string[] | null;
    is_rds: boolean;
    can_create: boolean;
    usr: string;
    size: number;
  }>(
    `SELECT current_setting('server_version_num')::int / 10000 AS v, version() AS vt,
            current_setting('wal_level') AS wl,
            current_setting('max_replication_slots')::int AS ms, (SELECT count(*)::int FROM pg_replication_slots) AS us,
            current_setting('max_wal_senders')::int AS mw, (SELECT count(*)::int FROM pg_stat_replication) AS uw,
            current_setting('max_slot_wal_keep_size', true) AS keep,
            r.rolsuper AS su, r.rolreplication AS rep,
            (SELECT array_agg(x.rolname::text) FROM pg_roles x
              WHERE x.rolname IN ('rds_superuser', 'rds_replication', 'pg_create_subscription') AND pg_has_role(current_user, x.oid, 'MEMBER')) AS rds,
            EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_superuser') AS is_rds,
            has_database_privilege(current_database(), 'CREATE') AS can_create,
            current_user AS usr, pg_database_size(current_database()) AS size
       FROM pg_roles r WHERE r.rolname = current_user`,
  );
  return {
    version: r.v,
    versionText: r.vt,
    walLevel: r.wl,
    maxSlots: r.ms,
    usedSlots: r.us,
    maxSenders: r.mw,
    usedSenders: r.uw,
    maxSlotWalKeep: r.keep,
    superuser: r.su,
    replication: r.rep,
    rdsRoles: r.rds ?? [],
    isRds: r.is_rds,
    canCreateInDb: r.can_create,
    user: r.usr,
    size: r.size,
  };
}

function replicationSettings(side: 'source' | 'target', f: ServerFacts, add: (f: Finding) => void) {
  if (f.walLevel !== 'logical') {
    add({
      level: 'blocker',
      code: `${side}-wal-level`,
      message: `${side} wal_level is '${f.walLevel}'${side === 'target' ? ' (reverse replication, the way back after cutover, needs logical)' : ''}`,
      hint: 'set wal_level = logical (RDS: rds.logical_replication = 1 in the parameter group) and restart the server',
    });
  }
  if (f.usedSlots >= f.maxSlots) {
    add({
      level: 'blocker',
      code: `${side}-replication-slots`,
      message: `${side} has no free replication slot (${f.usedSlots} of max_replication_slots = ${f.maxSlots} in use)`,
      hint: 'raise max_replication_slots (restart needed) or drop unused slots',
    });
  }
  if (f.usedSenders >= f.maxSenders) {
    add({
      level: 'blocker',
      code: `${side}-wal-senders`,
      message: `${side} has no free WAL sender (${f.usedSenders} of max_wal_senders = ${f.maxSenders} in use)`,
      hint: 'raise max_wal_senders (restart needed)',
    });
  }
  if (side === 'source' && (f.maxSlotWalKeep === '-1' || f.maxSlotWalKeep === null)) {
    add({
      level: 'warning',
      code: 'source-wal-keep-unbounded',
      message: `source ${f.maxSlotWalKeep === null ? `PostgreSQL ${f.version} cannot bound the WAL a slot keeps (max_slot_wal_keep_size is 13+)` : 'max_slot_wal_keep_size is -1'}: a stalled slot could retain WAL until the disk fills`,
      hint: `pgferry watches the retained WAL and drops its slot past the abort limit${f.maxSlotWalKeep === null ? '' : '; consider setting max_slot_wal_keep_size'}`,
    });
  }
}

/** A source too old to migrate, as a blocker naming its version and what is supported; undefined otherwise. */
export function sourceVersionFinding(version: number, versionText: string): Finding | undefined {
  if (version >= MIN_SOURCE_MAJOR) return undefined;
  const release = /PostgreSQL (\S+)/.exec(versionText)?.[1] ?? String(version);
  return {
    level: 'blocker',
    code: 'source-version',
    message: `source runs PostgreSQL ${release}: pgferry migrates sources of PostgreSQL ${MIN_SOURCE_MAJOR} or newer (nothing else was checked)`,
    hint: `upgrade the source to PostgreSQL ${MIN_SOURCE_MAJOR} or newer first (pg_upgrade), or move this database with pg_dump/pg_restore during a maintenance window`,
  };
}

/**
 * Two-phase commit. A transaction manager (JTA/XA, .NET TransactionScope) always has a few prepared
 * transactions in flight: the slot's creation and the cutover wait for those. One older than
 * `orphanMs` is an orphan its coordinator forgot; slot creation waits for every prepared transaction
 * of the server (whatever its database), and anyone could commit one of this database after the freeze.
 */
async function preparedFindings(db: Db, orphanMs: number, add: (f: Finding) => void) {
  const all = await preparedTransactions(db, { all: true });
  for (const p of all.filter((x) => x.ageMs >= orphanMs)) {
    const here = p.database === db.database;
    add({
      level: 'blocker',
      code: 'prepared-transaction-orphan',
      object: p.gid,
      message: `prepared transaction ${describePrepared(p, !here)} is older than ${formatAge(orphanMs)}: an orphan its transaction manager forgot. The replication slot cannot be created while it is pending${here ? ", and anyone could still commit it after the cutover's freeze" : ' (it holds back slot creation for every database of the server)'}`,
      hint: `COMMIT PREPARED '${p.gid}' or ROLLBACK PREPARED '${p.gid}'${here ? '' : ` in database ${p.database}`}, as its transaction manager's log says`,
    });
  }
  const inFlight = all.filter((x) => x.ageMs < orphanMs && x.database === db.database);
  if (inFlight.length)
    add({
      level: 'info',
      code: 'prepared-transactions',
      message: `${inFlight.length} prepared transaction(s) in flight (${inFlight.map((p) => describePrepared(p)).join(', ')}): a transaction manager's two-phase commits. Slot creation waits for them, and the cutover, once frozen, waits for them to be committed or rolled back (--max-prepared-wait-ms) before it reads the LSN to drain to`,
    });
}

/**
 * Another pgferry migration's objects, or a database left read-only: the source of a migration that
 * cut over stays frozen while reverse replication applies into it. A second migration of it would
 * fight the first (its undo could unfreeze that source under reverse replication).
 */
async function otherMigrationFindings(db: Db, migrationId: string | undefined, add: (f: Finding) => void) {
  const own = migrationId ? [objectNames(migrationId).slot, objectNames(migrationId).reverseSlot] : [];
  const found = await db.query<{ what: string }>(
    `SELECT 'replication slot ' || slot_name AS what FROM pg_replication_slots
      WHERE database = current_database() AND slot_name LIKE 'pgferry\\_%' AND slot_name::text <> ALL ($1::text[])
     UNION ALL
     SELECT 'publication ' || pubname FROM pg_publication WHERE pubname LIKE 'pgferry\\_%' AND pubname::text <> ALL ($1::text[])
     UNION ALL
     SELECT 'subscription ' || subname FROM pg_subscription
      WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND subname LIKE 'pgferry\\_%' AND subname::text <> ALL ($1::text[])
     ORDER BY 1`,
    [own],
  );
  if (found.length)
    add({
      level: 'blocker',
      code: `${db.side}-other-migration`,
      message: `${db.side} database ${db.database} holds another pgferry migration's ${found.map((r) => r.what).join(', ')}: that migration is not over (after a cutover its reverse replication still applies into the old source)`,
      hint: 'finish that migration first (`pgferry cleanup --id <its id>` once it is over), or migrate a database no migration uses',
    });
  if (db.side === 'source' && (await isFrozen(db)))
    add({
      level: 'blocker',
      code: 'source-frozen',
      message: `source database ${db.database} is read-only (default_transaction_read_only is set on it): frozen by another migration's cutover, or by its DBA, so the application does not write to it`,
      hint: 'migrate the database the application writes to now; if this one should take writes, find out who froze it first',
    });
}

async function sourceFindings(db: Db, f: ServerFacts, add: (f: Finding) => void, preparedOrphanMs: number) {
  replicationSettings('source', f, add);
  const replicates =
    f.superuser || f.replication || f.rdsRoles.includes('rds_replication') || f.rdsRoles.includes('rds_superuser');
  if (!replicates) {
    add({
      level: 'blocker',
      code: 'source-replication-privilege',
      message: `source role ${f.user} has neither the REPLICATION attribute nor membership in rds_replication`,
      hint: `ALTER ROLE ${f.user} REPLICATION (RDS: GRANT rds_replication TO ${f.user})`,
    });
  }
  const tables = await listTables(db);
  const unreadable = await db.query<{ t: string }>(
    `SELECT format('%s.%s', n.nspname, c.relname) AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND c.oid = ANY ($1::oid[]) AND NOT has_table_privilege(c.oid, 'SELECT') ORDER BY 1`,
    [tables.map((t) => t.oid)],
  );
  if (unreadable.length > 0) {
    add({
      level: 'blocker',
      code: 'source-select-privilege',
      message: `source role ${f.user} cannot read ${unreadable.length} table(s): ${unreadable.map((r) => r.t).join(', ')}`,
      hint: `GRANT SELECT ON those tables TO ${f.user}`,
    });
  }
  if (!f.superuser && !f.rdsRoles.includes('rds_superuser')) {
    const notOwned = await db.query<{ t: string }>(
      `SELECT format('%s.%s', n.nspname, c.relname) AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = ANY ($1::oid[]) AND NOT pg_has_role(c.relowner, 'USAGE') ORDER BY 1`,
      [tables.map((t) => t.oid)],
    );
    if (notOwned.length > 0) {
      add({
        level: 'blocker',
        code: 'source-publication-ownership',
        message: `source role ${f.user} does not own ${notOwned.length} table(s) it must publish: ${notOwned
          .slice(0, 10)
          .map((r) => r.t)
          .join(', ')}`,
        hint: 'migrate as the tables’ owner or a superuser (RDS: a member of rds_superuser)',
      });
    }
  }
  for (const t of tables) {
    const name = `${t.schema}.${t.name}`;
    if (t.kind !== 'partitioned' && !t.unlogged && !hasReplicaIdentity(t)) {
      add({
        level: 'blocker',
        code: 'table-without-identity',
        object: name,
        message: `table ${name} has no primary key and no usable replica identity: once published, UPDATE and DELETE on it would fail on the source`,
        hint: `add a primary key, or ALTER TABLE ${name} REPLICA IDENTITY FULL`,
      });
    } else if (t.replicaIdentity === 'full' || t.replicaIdentity === 'index') {
      add({
        level: 'info',
        code: 'table-replica-identity',
        object: name,
        message: `table ${name} replicates with REPLICA IDENTITY ${t.replicaIdentity === 'full' ? 'FULL' : `USING INDEX (${t.identityColumns.join(', ')})`}`,
      });
    }
    if (t.unlogged) {
      add({
        level: 'warning',
        code: 'unlogged-table',
        object: name,
        message: `table ${name} is UNLOGGED: logical replication cannot carry it, so its rows are neither copied nor replicated`,
        hint: `ALTER TABLE ${name} SET LOGGED before migrating if its contents matter`,
      });
    }
    if (t.kind === 'partitioned' && !t.root) {
      add({
        level: 'info',
        code: 'partitioned-table',
        object: name,
        message: `table ${name} is partitioned: ${f.version >= 13 ? 'published through its root' : 'its partitions published one by one (PostgreSQL 13 publishes through the root)'}, copied partition by partition`,
      });
    }
    const generated = t.columns.filter((c) => c.generated).map((c) => c.name);
    if (generated.length) {
      add({
        level: 'info',
        code: 'generated-columns',
        object: name,
        message: `table ${name} has generated column(s) ${generated.join(', ')}: computed on the target, not copied`,
      });
    }
    const identity = t.columns.filter((c) => c.identity).map((c) => c.name);
    if (identity.length) {
      add({
        level: 'info',
        code: 'identity-columns',
        object: name,
        message: `table ${name} has identity column(s) ${identity.join(', ')}: their sequences are synced at cutover`,
      });
    }
    if (t.extension) {
      add({
        level: 'info',
        code: 'extension-configuration-table',
        object: name,
        message: `table ${name} is a configuration table of extension ${t.extension}: copied whole and replicated, so the rows the target's extension made are replaced by the source's`,
      });
    }
  }
  const [lo] = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_largeobject_metadata');
  if ((lo?.n ?? 0) > 0) {
    add({
      level: 'blocker',
      code: 'large-objects',
      message: `source database holds ${lo?.n} large object(s): logical replication does not carry large objects, so writes to them would be lost`,
      hint: 'move them into bytea columns, or migrate this database with pg_dump/pg_restore during a maintenance window',
    });
  }
  for (const m of await db.query<{ v: string }>(
    "SELECT format('%s.%s', schemaname, matviewname) AS v FROM pg_matviews WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
  )) {
    add({
      level: 'warning',
      code: 'materialized-view',
      object: m.v,
      message: `materialized view ${m.v} is not replicated: it is created on the target and must be refreshed there after cutover`,
      hint: `REFRESH MATERIALIZED VIEW ${m.v} on the target after cutover`,
    });
  }
  const sequences = await listSequences(db);
  const unreadableSeqs = sequences.filter((x) => !x.readable).map((x) => `${x.schema}.${x.name}`);
  if (unreadableSeqs.length > 0) {
    add({
      level: 'blocker',
      code: 'source-sequence-privilege',
      message: `source role ${f.user} cannot read ${unreadableSeqs.length} sequence(s): ${unreadableSeqs.join(', ')}; they must be synced at cutover`,
      hint: `GRANT SELECT ON ALL SEQUENCES IN SCHEMA <schema> TO ${f.user}`,
    });
  }
  for (const s of sequences.filter((x) => !x.ownedBy)) {
    add({
      level: 'info',
      code: 'unowned-sequence',
      object: `${s.schema}.${s.name}`,
      message: `sequence ${s.schema}.${s.name} is not owned by any column: it is synced at cutover like the others`,
    });
  }
  for (const t of await longTransactions(db, LONG_TRANSACTION_MS)) {
    add({
      level: 'warning',
      code: 'long-transaction',
      object: `pid ${t.pid}`,
      message: `transaction pid ${t.pid} (user ${t.user}${t.application ? `, ${t.application}` : ''}) has been open for ${Math.round(t.ageMs / 60_000)} min: the replication slot cannot be created until it ends`,
      hint: 'let it finish, or end it with pg_terminate_backend',
    });
  }
  await preparedFindings(db, preparedOrphanMs, add);
  for (const sub of await upstreamSubscriptions(db)) {
    add({
      level: 'warning',
      code: 'source-subscription',
      object: sub,
      message: `the source subscribes to another server (subscription ${sub}): what it applies is copied and replicated like the application's writes, but its apply writes through the cutover's freeze, so the cutover is refused while it is enabled`,
      hint: `at the cutover, move it to the target: ALTER SUBSCRIPTION ${sub} DISABLE on the source, \`pgferry cutover\`, then subscribe the target from its slot (copy_data = false)`,
    });
  }
  for (const e of await db.query<{ evtname: string }>('SELECT evtname FROM pg_event_trigger ORDER BY 1')) {
    add({
      level: 'warning',
      code: 'event-trigger',
      object: e.evtname,
      message: `event trigger ${e.evtname} is recreated on the target with the schema (creating it there needs superuser; on RDS rds_superuser); it fires on DDL run on the target, not on replicated changes`,
      hint: 'check it behaves on the target; if the target role cannot create it, the schema step fails and names it',
    });
  }
  const roles = await db.query<{ rolname: string }>(
    `SELECT DISTINCT r.rolname FROM pg_roles r WHERE r.rolname !~ '^(pg_|rds)' AND r.oid >= 16384 AND (
        EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND (c.relowner = r.oid
                   OR EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = r.oid)))
        OR EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspowner = r.oid AND n.nspname NOT LIKE 'pg_%'))
      ORDER BY 1`,
  );
  if (roles.length > 0) {
    add({
      level: 'info',
      code: 'roles',
      message: `roles that own objects or hold grants: ${roles.map((r) => r.rolname).join(', ')}; they are created on the target without passwords or superuser (set passwords there)`,
    });
  }
  return tables;
}

async function targetFindings(
  db: Db,
  f: ServerFacts,
  source: ServerFacts,
  extensions: string[],
  migrationId: string | undefined,
  add: (f: Finding) => void,
) {
  if (f.version < source.version) {
    add({
      level: 'blocker',
      code: 'target-version',
      message: `target runs PostgreSQL ${f.version}, older than the source's ${source.version}`,
      hint: `use a target of version ${source.version} or newer`,
    });
  }
  replicationSettings('target', f, add);
  const canSubscribe =
    f.superuser || f.rdsRoles.includes('rds_superuser') || f.rdsRoles.includes('pg_create_subscription');
  if (!canSubscribe) {
    add({
      level: 'blocker',
      code: 'target-subscription-privilege',
      message: `target role ${f.user} cannot create subscriptions`,
      hint: `connect as a superuser (RDS: a member of rds_superuser${f.version >= 16 ? `; or GRANT pg_create_subscription TO ${f.user}` : ''})`,
    });
  }
  if (!f.canCreateInDb && !f.superuser) {
    add({
      level: 'blocker',
      code: 'target-create-privilege',
      message: `target role ${f.user} lacks CREATE on database ${db.database}`,
      hint: `GRANT CREATE ON DATABASE ${db.database} TO ${f.user}`,
    });
  }
  const existing = await userObjects(db, 3);
  if (existing.length > 0) {
    const { t } = await db.one<{ t: string | null }>("SELECT to_regclass('pgferry.migration')::text AS t");
    const ours =
      t && migrationId
        ? (await db.query('SELECT 1 FROM pgferry.migration WHERE id = $1', [migrationId])).length > 0
        : false;
    if (!ours) {
      add({
        level: 'blocker',
        code: 'target-not-empty',
        message: `target database ${db.database} is not empty (${existing.slice(0, 3).join(', ')}${existing.length > 3 ? ', …' : ''}); pgferry needs an empty target database, because a rollback empties it`,
        hint: 'create a new empty database on the target and point --target at it',
      });
    }
  }
  const available = new Set(
    (await db.query<{ name: string }>('SELECT name FROM pg_available_extensions')).map((r) => r.name),
  );
  for (const ext of extensions) {
    if (!available.has(ext)) {
      add({
        level: 'blocker',
        code: 'extension-unavailable',
        object: ext,
        message: `extension ${ext} is installed on the source but not available on the target`,
        hint: `install ${ext} on the target server, or drop it from the source if unused`,
      });
    }
  }
}

/**
 * The schema restore creates each extension at the target's default version, whatever the source
 * runs: say so where they differ, the more loudly for an extension whose configuration tables are
 * copied (their columns must match on both sides, or the cutover gate stays closed on the drift).
 */
async function extensionVersionFindings(
  db: Db,
  installed: Array<{ extname: string; extversion: string }>,
  tables: TableInfo[],
  add: (f: Finding) => void,
) {
  if (installed.length === 0) return;
  const rows = await db.query<{ name: string; version: string; target: string | null }>(
    `SELECT e.name, e.version, a.default_version AS target
       FROM unnest($1::text[], $2::text[]) AS e(name, version) JOIN pg_available_extensions a ON a.name = e.name
      WHERE a.default_version IS DISTINCT FROM e.version ORDER BY 1`,
    [installed.map((x) => x.extname), installed.map((x) => x.extversion)],
  );
  for (const r of rows) {
    const config = tables.filter((t) => t.extension === r.name).map((t) => `${t.schema}.${t.name}`);
    add({
      level: 'warning',
      code: 'extension-version',
      object: r.name,
      message: `extension ${r.name} is version ${r.version} on the source; the schema restore creates version ${r.target} on the target${config.length ? `. Its configuration tables (${config.join(', ')}) are copied and replicated: if the versions' columns differ, the copy fails or the cutover gate stays closed on the drift` : ''}`,
      hint: `bring both to one version first: ALTER EXTENSION ${r.name} UPDATE TO '${r.target}' on the source, if that version is installed there`,
    });
  }
}

/**
 * Which database of which server `db` is, whatever the URL calls it (localhost or 127.0.0.1, another
 * user, a DNS alias): the cluster's system_identifier and the database's oid. pg_control_system()
 * may be refused to a role without the privilege; then the postmaster's start time (to the
 * microsecond), which two servers do not share in practice, stands in for the cluster.
 */
async function databaseIdentity(db: Db): Promise<{ oid: number; started: string; system?: string }> {
  const [d] = await db.query<{ oid: number; started: string }>(
    `SELECT d.oid::int AS oid, pg_postmaster_start_time()::text AS started
       FROM pg_database d WHERE d.datname = current_database()`,
  );
  const system = await db
    .query<{ id: string }>('SELECT system_identifier::text AS id FROM pg_control_system()')
    .then((r) => r[0]?.id)
    .catch(() => undefined);
  return { oid: d?.oid ?? 0, started: d?.started ?? '', system };
}

/** The same database under another spelling would be migrated onto itself: a slot and a subscription to itself. */
async function sameDatabase(source: Db, target: Db): Promise<boolean> {
  const [s, t] = await Promise.all([databaseIdentity(source), databaseIdentity(target)]);
  if (s.oid !== t.oid) return false;
  return s.system && t.system ? s.system === t.system : s.started === t.started;
}

export async function assess(
  source: Db,
  target?: Db,
  options: { migrationId?: string; preparedOrphanMs?: number } = {},
): Promise<AssessmentReport> {
  const findings: Finding[] = [];
  const add = (f: Finding) => findings.push(f);
  const src = await facts(source);
  // Before anything that reads the source's catalogs: an older one lacks what they read.
  const tooOld = sourceVersionFinding(src.version, src.versionText);
  if (tooOld) return { source: sourceReport(source, src, []), findings: [tooOld] };
  const tables = await sourceFindings(source, src, add, options.preparedOrphanMs ?? DEFAULTS.preparedOrphanMs);
  await otherMigrationFindings(source, options.migrationId, add);
  if (target) await otherMigrationFindings(target, options.migrationId, add);
  // What would keep the cutover's freeze from holding (prepared transactions are a finding of their own).
  for (const h of await freezeHazards(source, options))
    if (h.kind !== 'prepared-transaction')
      add({
        level: 'warning',
        code: `freeze-${h.kind}`,
        message: `the cutover gate will stay closed until this is fixed: ${h.message}`,
      });
  if (!(await canCreateSubscription(source)))
    add({
      level: 'warning',
      code: 'reverse-subscription-privilege',
      message:
        'the cutover gate will stay closed until this is fixed: the source role may not create the reverse subscription (the way back after cutover)',
      hint: 'superuser, rds_superuser on RDS, or from PostgreSQL 16 on pg_create_subscription and CREATE on the database',
    });
  const installed = await source.query<{ extname: string; extversion: string }>(
    "SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
  );
  const extensions = installed.map((r) => r.extname);
  for (const x of installed.filter((e) => SCHEDULER_EXTENSIONS.includes(e.extname))) {
    add({
      level: 'warning',
      code: 'scheduler-extension',
      object: x.extname,
      message: `the jobs of extension ${x.extname} are not migrated: copied, the target's scheduler would run them too while the source still does`,
      hint: `after the cutover, schedule them on the target (for pg_cron: SELECT jobname, schedule, command FROM cron.job on the source, then cron.schedule(...) on the target)`,
    });
  }
  let tgt: ServerFacts | undefined;
  if (target && (await sameDatabase(source, target))) {
    add({
      level: 'blocker',
      code: 'same-database',
      message: `--source and --target name the same database (${source.database} on the same server, under another host name, port or user)`,
      hint: 'point --target at the new server: a migration onto itself would replicate the database into itself',
    });
  }
  if (target) {
    tgt = await facts(target);
    await targetFindings(target, tgt, src, extensions, options.migrationId, add);
    await extensionVersionFindings(target, installed, tables, add);
  }
  // An RDS target answers for itself (pg_available_extensions above); otherwise check the RDS list.
  if (!tgt?.isRds) {
    const major = String(tgt?.version ?? src.version);
    const list = rdsExtensions();
    const supported = new Set(list.versions[major] ?? []);
    for (const ext of extensions) {
      if (!supported.has(ext)) {
        add({
          level: 'blocker',
          code: 'extension-not-on-rds',
          object: ext,
          message: `extension ${ext} is not supported by RDS for PostgreSQL ${major}`,
          hint: `drop it from the source or replace it; list: ${list.source}`,
        });
      }
    }
  }
  const order = { blocker: 0, warning: 1, info: 2 } as const;
  findings.sort((a, b) => order[a.level] - order[b.level]);
  return {
    source: sourceReport(source, src, tables),
    target:
      tgt && target
        ? { version: tgt.version, versionText: tgt.versionText, database: target.database, isRds: tgt.isRds }
        : undefined,
    findings,
  };
}

function sourceReport(db: Db, f: ServerFacts, tables: TableInfo[]): AssessmentReport['source'] {
  return {
    version: f.version,
    versionText: f.versionText,
    database: db.database,
    sizeBytes: f.size,
    tables: copyableTables(tables).map((t) => ({
      name: `${t.schema}.${t.name}`,
      sizeBytes: t.sizeBytes,
      rowEstimate: t.rowEstimate,
    })),
  };
}

export function blockers(report: AssessmentReport): Finding[] {
  return report.findings.filter((f) => f.level === 'blocker');
}

export function assertNoBlockers(report: AssessmentReport, migrationId?: string): void {
  const b = blockers(report);
  if (b.length === 0) return;
  throw new AssessmentBlockedError(
    `assessment found ${b.length} blocker(s); nothing was created:\n${b.map((f) => `  - ${f.message}${f.hint ? `\n    fix: ${f.hint}` : ''}`).join('\n')}`,
    b.map((f) => ({ code: f.code, message: f.message, object: f.object })),
    { migrationId, phase: 'assess', hint: 'fix the blockers above and run the command again' },
  );
}

export function formatReport(report: AssessmentReport): string {
  const s = report.source;
  const lines = [
    `source: PostgreSQL ${s.version}, database ${s.database}, ${(s.sizeBytes / MiB).toFixed(1)} MiB, ${s.tables.length} tables`,
  ];
  if (report.target)
    lines.push(
      `target: PostgreSQL ${report.target.version}, database ${report.target.database}${report.target.isRds ? ' (RDS)' : ''}`,
    );
  const largest = [...s.tables].sort((a, b) => b.sizeBytes - a.sizeBytes).slice(0, 10);
  if (largest.length) {
    lines.push('largest tables:');
    for (const t of largest)
      lines.push(`  ${t.name.padEnd(40)} ${(t.sizeBytes / MiB).toFixed(1).padStart(10)} MiB  ~${t.rowEstimate} rows`);
  }
  for (const level of ['blocker', 'warning', 'info'] as const) {
    const fs = report.findings.filter((f) => f.level === level);
    if (!fs.length) continue;
    lines.push(`${level === 'blocker' ? 'BLOCKERS' : level === 'warning' ? 'warnings' : 'info'} (${fs.length}):`);
    for (const f of fs) lines.push(`  - ${f.message}${f.hint ? `\n    fix: ${f.hint}` : ''}`);
  }
  const b = blockers(report).length;
  lines.push(b ? `${b} blocker(s): fix them before migrating` : 'no blockers: ready to migrate');
  return lines.join('\n');
}
