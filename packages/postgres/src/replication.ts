/** Publications, slots and subscriptions: named from the migration id, each created only if missing. */
import { PgferryError, sqlPrefix } from '@pgferry/core';
import type pg from 'pg';
import { publishedTables, type TableInfo } from './catalog';
import { connectClient, type Db, ident, libpqParams, literal, qualified, serverMajor, sleep } from './db';
import { describePrepared, preparedTransactions } from './freeze';

export async function publicationExists(db: Db, name: string): Promise<boolean> {
  return (await db.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [name])).length > 0;
}

/**
 * Create the publication of `tables`, or bring an existing one's table list up to date with them: a
 * table made since (before 13, a new partition is one) is carried too, and what it holds with it.
 */
export async function ensurePublication(
  db: Db,
  name: string,
  tables: TableInfo[],
  options: { viaRoot: boolean },
): Promise<void> {
  const published = publishedTables(tables, options.viaRoot);
  const list = published.map(qualified).join(', ');
  if (await publicationExists(db, name)) {
    const has = await db.query<{ oid: number }>(
      'SELECT r.prrelid::int AS oid FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid WHERE p.pubname = $1',
      [name],
    );
    const oids = new Set(has.map((r) => r.oid));
    if (list && (has.length !== published.length || published.some((t) => !oids.has(t.oid))))
      await db.query(`ALTER PUBLICATION ${ident(name)} SET TABLE ${list}`);
    return;
  }
  // An explicit table list (not FOR ALL TABLES) needs only ownership, which RDS roles have, and keeps
  // pgferry's own schema out. Partitions publish through their root so either side may re-partition;
  // or, with a source older than 13, leaf by leaf (see partitionsViaRoot).
  const forTables = list ? ` FOR TABLE ${list}` : '';
  const via = options.viaRoot ? ' WITH (publish_via_partition_root = true)' : '';
  await db.query(`CREATE PUBLICATION ${ident(name)}${forTables}${via}`);
}

/**
 * Whether this role may create a subscription here (the cutover creates the reverse one on the source):
 * a superuser, RDS's rds_superuser, or from PostgreSQL 16 on pg_create_subscription with CREATE on the
 * database.
 */
export async function canCreateSubscription(db: Db): Promise<boolean> {
  const { ok } = await db.one<{ ok: boolean }>(
    `SELECT r.rolsuper
         OR EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'rds_superuser' AND pg_has_role(current_user, g.oid, 'MEMBER'))
         OR (EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'pg_create_subscription' AND pg_has_role(current_user, g.oid, 'USAGE'))
             AND has_database_privilege(current_database(), 'CREATE')) AS ok
       FROM pg_roles r WHERE r.rolname = current_user`,
  );
  return ok;
}

export async function slotExists(db: Db, name: string): Promise<boolean> {
  return (await db.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [name])).length > 0;
}

/** Drop a slot, ending the walsender that holds it if needed. */
export async function dropSlot(db: Db, name: string): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    const rows = await db.query<{ active_pid: number | null }>(
      'SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1',
      [name],
    );
    if (rows.length === 0) return false;
    const pid = rows[0]?.active_pid;
    if (pid) {
      await db.query('SELECT pg_terminate_backend($1)', [pid]);
      await sleep(100);
      continue;
    }
    try {
      await db.query('SELECT pg_drop_replication_slot($1)', [name]);
      return true;
    } catch (err) {
      if (!/is active|does not exist/.test(String((err as Error).message))) throw err;
      await sleep(100);
    }
  }
  throw new PgferryError(`could not drop replication slot ${name}: it stays in use`, {
    hint: 'end the process using it and run `pgferry cleanup`',
  });
}

export interface ExportedSlot {
  client: pg.Client;
  slot: string;
  lsn: string;
  snapshot: string;
  /** Release the snapshot (the slot stays). */
  close(): Promise<void>;
}

/**
 * Create the logical slot over a replication connection and export its snapshot. The slot is
 * created before the copy so that the subscription later starts exactly where the snapshot ends:
 * every change committed after the snapshot is in the slot, every change before it is in the copy.
 * Creation waits for transactions already running with an xid, on every database of the server,
 * prepared ones (two-phase commit) included; those are named while we wait, up to `timeoutMs`.
 */
export async function createSlotWithSnapshot(
  db: Db,
  url: string,
  slot: string,
  options: { applicationName: string; timeoutMs: number; log: (m: string) => void; major: number },
): Promise<ExportedSlot> {
  const client = await connectClient(url, {
    side: 'source',
    applicationName: options.applicationName,
    replication: true,
  });
  const command =
    options.major >= 15
      ? `CREATE_REPLICATION_SLOT ${ident(slot)} LOGICAL pgoutput (SNAPSHOT 'export')`
      : `CREATE_REPLICATION_SLOT ${ident(slot)} LOGICAL pgoutput EXPORT_SNAPSHOT`;
  const started = Date.now();
  const pending = client.query(command);
  let done = false;
  const result = pending.finally(() => {
    done = true;
  });
  result.catch(() => {});
  let lastNamed = '';
  while (!done) {
    await Promise.race([result.catch(() => {}), sleep(1000)]);
    if (done) break;
    const blockers = await db.query<{
      pid: number;
      usename: string;
      application_name: string;
      xact_start: Date;
      state: string;
      query: string;
    }>(
      `SELECT pid, usename, application_name, xact_start, state, left(query, 200) AS query FROM pg_stat_activity
        WHERE backend_xid IS NOT NULL AND backend_type = 'client backend' AND pid <> pg_backend_pid()
          AND xact_start < now() - interval '1 second' ORDER BY xact_start`,
    );
    // A prepared transaction has no session: it is named by its gid until someone commits it.
    const prepared = (await preparedTransactions(db, { all: true })).filter((p) => p.ageMs >= 1000);
    const named = [
      ...blockers.map(
        (b) =>
          `pid ${b.pid} (user ${b.usename}${b.application_name ? `, ${b.application_name}` : ''}, ${b.state}, open since ${b.xact_start.toISOString()}: ${sqlPrefix(b.query)})`,
      ),
      ...prepared.map((p) => `prepared transaction ${describePrepared(p, true)}`),
    ].join('; ');
    const count = blockers.length + prepared.length;
    // (Said again when the transactions change, not when only their ages do.)
    const key = named.replace(/\d+ (s|min) ago/g, '');
    if (named && key !== lastNamed) {
      options.log(`creating slot ${slot}: waiting for ${count} open transaction(s) on the source to finish: ${named}`);
      lastNamed = key;
    }
    if (Date.now() - started > options.timeoutMs) {
      await client.end().catch(() => {});
      // The half-created slot is temporary until creation finishes, so it disappears with the connection.
      await sleep(200);
      await dropSlot(db, slot).catch(() => {});
      throw new PgferryError(
        `the replication slot could not be created within ${Math.round(options.timeoutMs / 1000)} s: ${count ? `open transaction(s) on the source hold it back: ${named}` : 'the source did not answer'}`,
        {
          phase: 'bulk-load',
          hint: `let those transactions finish (or end them with pg_terminate_backend${prepared.length ? '; a prepared one with COMMIT PREPARED or ROLLBACK PREPARED, as its transaction manager says' : ''}), then migrate again; nothing was left behind`,
        },
      );
    }
  }
  const row = (await result).rows[0] as { consistent_point: string; snapshot_name: string };
  return {
    client,
    slot,
    lsn: row.consistent_point,
    snapshot: row.snapshot_name,
    close: () => client.end(),
  };
}

/** Files on this machine: the server that runs a subscription cannot read them. */
const CLIENT_FILES = ['sslrootcert', 'sslcert', 'sslkey', 'sslcrl', 'sslcrldir', 'sslpassword'];

/**
 * Libpq keyword form understood by CREATE SUBSCRIPTION ... CONNECTION. The subscription connects
 * from the other server, so paths to this machine's certificate files are left out; a verify-ca /
 * verify-full that relied on such a CA file becomes `require` there (still encrypted).
 */
export function conninfo(url: string): string {
  const u = new URL(url);
  const parts: Record<string, string> = {
    host: decodeURIComponent(u.hostname.replace(/^\[|\]$/g, '')),
    port: u.port || '5432',
    dbname: decodeURIComponent(u.pathname.slice(1)),
    user: decodeURIComponent(u.username),
  };
  if (u.password) parts.password = decodeURIComponent(u.password);
  for (const [k, v] of libpqParams(u)) if (!CLIENT_FILES.includes(k)) parts[k] = v;
  if (u.searchParams.has('sslrootcert') && /^verify-/.test(parts.sslmode ?? '')) parts.sslmode = 'require';
  return Object.entries(parts)
    .filter(([, v]) => v !== '')
    .map(([k, v]) => `${k}='${v.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`)
    .join(' ');
}

/**
 * The database's enabled subscriptions that are not pgferry's: it replicates from another server. Their
 * apply workers write through a freeze (default_transaction_read_only does not hold them back).
 */
export async function upstreamSubscriptions(db: Db): Promise<string[]> {
  const rows = await db.query<{ name: string }>(
    `SELECT subname AS name FROM pg_subscription
      WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND subenabled
        AND subname !~ '^pgferry_' ORDER BY 1`,
  );
  return rows.map((r) => r.name);
}

export async function subscriptionExists(db: Db, name: string): Promise<boolean> {
  return (
    (
      await db.query(
        'SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())',
        [name],
      )
    ).length > 0
  );
}

/** What makes a subscription's apply faster, where both servers and the tables' types allow it. */
export interface ApplyTuning {
  /** Rows travel in binary (14+ on both sides): no text output and input of every value. */
  binary: boolean;
  /** Large transactions are sent while in progress (14+): `parallel` applies them as they arrive (16+ subscriber). */
  streaming: 'off' | 'on' | 'parallel';
}

export const NO_TUNING: ApplyTuning = { binary: false, streaming: 'off' };

/**
 * The apply options for a subscription on `subscriber` to a publisher of major `publisherMajor` carrying
 * `tables`. Binary only when every column's type is one binary COPY would send (built in, not reg*, not
 * tsquery, not an enum): in binary an array or composite names its element type by OID, and a
 * user-defined type's OID differs on the other server. A 16+ subscriber asking a 14/15 publisher for
 * `parallel` streaming gets plain streaming.
 */
export async function applyTuning(
  subscriber: Db,
  publisherMajor: number,
  tables: { columns: { binary: boolean; generated: boolean }[] }[],
): Promise<ApplyTuning> {
  const v = await serverMajor(subscriber);
  if (v < 14 || publisherMajor < 14) return NO_TUNING;
  return {
    binary: tables.every((t) => t.columns.every((c) => c.binary || c.generated)),
    streaming: v >= 16 ? 'parallel' : 'on',
  };
}

function tuningOptions(t: ApplyTuning): string {
  if (t.streaming === 'off' && !t.binary) return '';
  return `, binary = ${t.binary}, streaming = ${t.streaming}`;
}

/** Subscribe at an existing slot without copying: replication starts exactly at the slot's position. */
export async function createSubscription(
  db: Db,
  name: string,
  publisherUrl: string,
  publication: string,
  slot: string,
  options: { copyData?: boolean; createSlot?: boolean; tuning?: ApplyTuning } = {},
): Promise<void> {
  if (await subscriptionExists(db, name)) {
    await db.query(`ALTER SUBSCRIPTION ${ident(name)} ENABLE`);
    return;
  }
  await db.query(
    `CREATE SUBSCRIPTION ${ident(name)} CONNECTION ${literal(conninfo(publisherUrl))} PUBLICATION ${ident(publication)}
       WITH (slot_name = ${literal(slot)}, synchronous_commit = 'on', create_slot = ${options.createSlot ? 'true' : 'false'}, copy_data = ${options.copyData ? 'true' : 'false'}, enabled = true${tuningOptions(options.tuning ?? NO_TUNING)})`,
  );
}

/**
 * Create a subscription that does not run yet: disabled, without a slot, its table list fetched from
 * the publisher and recorded now. Starting it (`startPreparedSubscription`) is then two catalog
 * updates: the cutover prepares reverse replication this way before the freeze, because CREATE
 * SUBSCRIPTION's table fetch took 219 ms of the write gap for 5,000 tables. One left by an earlier
 * attempt is made again, so that it carries today's credentials and tables.
 */
export async function prepareSubscription(
  db: Db,
  name: string,
  publisherUrl: string,
  publication: string,
  tuning: ApplyTuning = NO_TUNING,
) {
  await dropSubscription(db, name, { keepSlot: true });
  await db.query(
    `CREATE SUBSCRIPTION ${ident(name)} CONNECTION ${literal(conninfo(publisherUrl))} PUBLICATION ${ident(publication)}
       WITH (slot_name = NONE, synchronous_commit = 'on', create_slot = false, copy_data = false, enabled = false${tuningOptions(tuning)})`,
  );
}

/** The names of the tables of `pg_class c` / `pg_namespace n`, in one order on any server (as text: `name` takes no collation before 12). */
const TABLE_NAMES = `coalesce(string_agg(format('%I.%I', n.nspname, c.relname), ',' ORDER BY n.nspname::text COLLATE "C", c.relname::text COLLATE "C"), '')`;

/**
 * Whether a subscription's recorded tables are its publication's (explicit table list) now: names
 * compared in one collation on both servers.
 */

export async function subscriptionMatchesPublication(
  subscriber: Db,
  subscription: string,
  publisher: Db,
  publication: string,
): Promise<boolean> {
  const [sub, pub] = await Promise.all([
    subscriber.one<{ d: string }>(
      `SELECT ${TABLE_NAMES} AS d
         FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
         JOIN pg_class c ON c.oid = r.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())`,
      [subscription],
    ),
    publisher.one<{ d: string }>(
      `SELECT ${TABLE_NAMES} AS d
         FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
         JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE p.pubname = $1`,
      [publication],
    ),
  ]);
  return sub.d === pub.d && sub.d !== '';
}

/**
 * Give a subscription its publisher's current credentials (a rotated password): a catalog update,
 * no connection made; the apply worker restarts and connects with them. False when there is none.
 */
export async function updateSubscriptionConnection(db: Db, name: string, publisherUrl: string): Promise<boolean> {
  if (!(await subscriptionExists(db, name))) return false;
  await db.query(`ALTER SUBSCRIPTION ${ident(name)} CONNECTION ${literal(conninfo(publisherUrl))}`);
  return true;
}

/** Start a prepared subscription at an existing slot. */
export async function startPreparedSubscription(db: Db, name: string, slot: string) {
  await db.query(`ALTER SUBSCRIPTION ${ident(name)} SET (slot_name = ${literal(slot)})`);
  await db.query(`ALTER SUBSCRIPTION ${ident(name)} ENABLE`);
}

/**
 * Drop a subscription. When the publisher side is gone or its slot should stay, detach the slot
 * first so DROP does not try to reach it.
 */
export async function dropSubscription(db: Db, name: string, options: { keepSlot?: boolean } = {}): Promise<boolean> {
  if (!(await subscriptionExists(db, name))) return false;
  await db.query(`ALTER SUBSCRIPTION ${ident(name)} DISABLE`);
  if (options.keepSlot) await db.query(`ALTER SUBSCRIPTION ${ident(name)} SET (slot_name = NONE)`);
  try {
    await db.query(`DROP SUBSCRIPTION ${ident(name)}`);
  } catch {
    await db.query(`ALTER SUBSCRIPTION ${ident(name)} SET (slot_name = NONE)`);
    await db.query(`DROP SUBSCRIPTION ${ident(name)}`);
  }
  return true;
}

export async function dropPublication(db: Db, name: string): Promise<boolean> {
  const exists = await db.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [name]);
  if (exists.length === 0) return false;
  await db.query(`DROP PUBLICATION ${ident(name)}`);
  return true;
}

/**
 * pgoutput's message kinds (protocol version 1: the first byte of each binary change, an ASCII letter)
 * that the counts below read: a change to a table's rows (Insert, Update, Delete, Truncate; Begin,
 * Commit and Relation are not one), and Origin (a transaction applied by a subscription).
 */
const PGOUTPUT_KIND = { insert: 'I', update: 'U', delete: 'D', truncate: 'T', origin: 'O' } as const;
const kindByte = (kind: string) => kind.charCodeAt(0);
/** The row-change kinds as SQL's list for `get_byte(data, 0) IN (…)`: `73, 85, 68, 84`. */
const ROW_CHANGE_KINDS = [PGOUTPUT_KIND.insert, PGOUTPUT_KIND.update, PGOUTPUT_KIND.delete, PGOUTPUT_KIND.truncate]
  .map(kindByte)
  .join(', ');
const ORIGIN_KIND = kindByte(PGOUTPUT_KIND.origin);

/**
 * Changes to published tables in `slot` past what its subscriber confirmed, read without consuming
 * them (peek). The subscription must be disabled: the walsender still holding the slot is ended.
 * A peek decodes from the slot's restart point, which trails by up to ~15 s of WAL (more while a
 * transaction stays open anywhere on the server): with `maxDecodeBytes` or `timeoutMs` set, a look
 * that would take longer is not taken, and `undefined` says so.
 */
export async function unappliedChanges(
  source: Db,
  slot: string,
  publication: string,
  bounds: { maxDecodeBytes?: number; timeoutMs?: number; excludeOrigins?: boolean } = {},
): Promise<number | undefined> {
  if (bounds.maxDecodeBytes !== undefined) {
    const [row] = await source.query<{ behind: number }>(
      'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS behind FROM pg_replication_slots WHERE slot_name = $1',
      [slot],
    );
    if (!row || row.behind > bounds.maxDecodeBytes) return undefined;
  }
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      return await source.withClient(async (c) => {
        await c.query('BEGIN');
        try {
          if (bounds.timeoutMs) await c.query(`SET LOCAL statement_timeout = ${Math.round(bounds.timeoutMs)}`);
          // Changes to rows (ROW_CHANGE_KINDS). With excludeOrigins, transactions that carry an Origin
          // message (applied by a subscription, the reverse one after the switch) do not count either.
          // (A CTE calling a volatile function is read once without MATERIALIZED, which a source older
          // than 12 lacks.)
          const { rows } = await c.query<{ n: number }>(
            `WITH m AS (
               SELECT xid, get_byte(data, 0) AS kind FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
                      'proto_version', '1', 'publication_names', $2))
             SELECT count(*)::int AS n FROM m
              WHERE kind IN (${ROW_CHANGE_KINDS}) AND NOT ($3 AND xid IN (SELECT xid FROM m WHERE kind = ${ORIGIN_KIND}))`,
            [slot, publication, !!bounds.excludeOrigins],
          );
          return rows[0]?.n ?? 0;
        } finally {
          await c.query('ROLLBACK').catch(() => {});
        }
      });
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === '57014') return undefined; // statement_timeout: it would have taken too long
      // 55006: the slot is still held by the walsender of the subscription just disabled, which can take
      // most of a second to notice: ended now (its subscriber is gone already).
      if (code !== '55006' || Date.now() > deadline) throw err;
      await source.query(
        'SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL',
        [slot],
      );
      await sleep(2);
    }
  }
}

/**
 * A temporary logical slot (pgoutput) on the source, held by a session of its own, with a publication of
 * its own: it decodes every change to the watched tables committed after it was made. The DMS cutover
 * makes one before the freeze, so that a change to a replicated table committed after the freeze (by a
 * session that turned read-only off) can be told from what else takes an xid on the server: another
 * database's transactions, autovacuum's ANALYZE. The slot is temporary (it goes with its session, even
 * on a crash); the publication is dropped by `close()` (and by clean-up and rollback, after a crash).
 * Only tables with a replica identity may be watched: publishing updates of one without makes the
 * application's UPDATE and DELETE on it fail.
 */
export interface ChangeWatch {
  readonly slot: string;
  /**
   * From now on, read (and consume) what the slot decodes every `everyMs`, counting changes in
   * transactions whose xid is `xmax` (with its epoch, as the freeze read it) or later: the count at the
   * end is then decoded from a short tail, whatever the server wrote meanwhile.
   */
  follow(xmax: string, everyMs?: number): void;
  /**
   * Changes (insert, update, delete, truncate) to the watched tables in transactions from `xmax` on,
   * everything decoded so far included; undefined when the last read took over `timeoutMs`.
   */
  changesFrom(xmax: string, timeoutMs: number): Promise<number | undefined>;
  close(): Promise<void>;
}

export async function watchChanges(
  db: Db,
  name: string,
  tables: TableInfo[],
  options: { applicationName: string; timeoutMs: number; viaRoot: boolean },
): Promise<ChangeWatch> {
  // Made (or remade) with exactly these tables, before the slot: pgoutput reads it as of each change.
  await dropPublication(db, name);
  const list = publishedTables(tables, options.viaRoot).map(qualified).join(', ');
  await db.query(
    list
      ? `CREATE PUBLICATION ${ident(name)} FOR TABLE ${list}${options.viaRoot ? ' WITH (publish_via_partition_root = true)' : ''}`
      : `CREATE PUBLICATION ${ident(name)}`,
  );
  let client: pg.Client | undefined;
  try {
    client = await connectClient(db.url, { side: 'source', applicationName: options.applicationName });
    // Creation waits for every transaction on the server that holds an xid: bounded, as it comes
    // before the freeze and an open transaction elsewhere must not hold the cutover back.
    await client.query(`SET statement_timeout = ${Math.round(options.timeoutMs)}`);
    await client.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput', true)", [name]);
    await client.query('SET statement_timeout = 0');
  } catch (err) {
    await client?.end().catch(() => {});
    await dropPublication(db, name).catch(() => {});
    throw err;
  }
  const session = client;
  let counted = 0;
  let running: Promise<void> = Promise.resolve();
  let following = false;
  let timer: NodeJS.Timeout | undefined;
  // One read at a time on the one session: consumed changes are counted exactly once.
  const read = (xmax: string, timeoutMs: number) => {
    const next = running.then(async () => {
      await session.query(`SET statement_timeout = ${Math.round(timeoutMs)}`);
      try {
        // Changes to rows (ROW_CHANGE_KINDS); the peek's xid is 32 bits: at or after xmax's low 32
        // bits, in wraparound order.
        const { rows } = await session.query<{ n: number }>(
          `SELECT count(*) FILTER (WHERE get_byte(data, 0) IN (${ROW_CHANGE_KINDS})
                    AND (xid::text::bigint - $3::bigint % 4294967296 + 4294967296) % 4294967296 < 2147483648)::int AS n
             FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)`,
          [name, name, xmax],
        );
        counted += rows[0]?.n ?? 0;
      } finally {
        await session.query('SET statement_timeout = 0').catch(() => {});
      }
    });
    running = next.catch(() => {});
    return next;
  };
  const stop = () => {
    following = false;
    if (timer) clearTimeout(timer);
  };
  return {
    slot: name,
    follow(xmax, everyMs = 1000) {
      following = true;
      const tick = () => {
        timer = setTimeout(() => {
          // A read that fails consumed nothing: the last one reads it again.
          read(xmax, 60_000).then(
            () => following && tick(),
            () => following && tick(),
          );
        }, everyMs);
      };
      tick();
    },
    async changesFrom(xmax, timeoutMs) {
      stop();
      try {
        await read(xmax, timeoutMs);
        return counted;
      } catch (err) {
        if ((err as { code?: string }).code === '57014') return undefined;
        throw err;
      }
    },
    async close() {
      stop();
      await running;
      await session.end().catch(() => {});
      await dropPublication(db, name).catch(() => {});
    },
  };
}
