import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, inject } from 'vitest';
import type { ServerInfo, ServerSet } from './global-setup';
import { workerIndex } from './workers';

export type TargetVersion = 15 | 16 | 17;
export type SourceVersion = 11 | 12 | 15;

/** The servers of this test file's worker (one set per worker when several PostgreSQL files run at once). */
export function testServers(): ServerSet {
  const sets = inject('servers');
  return sets[workerIndex(sets.length)] as ServerSet;
}

export function serverUrl(s: ServerInfo, database = 'postgres', user = 'postgres', password = s.password) {
  return `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${s.port}/${encodeURIComponent(database)}`;
}

export async function sql<R extends pg.QueryResultRow = pg.QueryResultRow>(
  url: string,
  text: string,
  params?: unknown[],
) {
  // The test's own checks must work on a database pgferry froze read-only.
  const client = new pg.Client({ connectionString: url, options: '-c default_transaction_read_only=off' });
  await client.connect();
  try {
    return (await client.query<R>(text, params)).rows;
  } finally {
    await client.end();
  }
}

/**
 * One session per server on its `postgres` database for the harness's own bookkeeping (making and
 * dropping each test's databases, looking for leftovers): opening a connection (a backend forked, a
 * SCRAM exchange) for each of those statements cost more than the statements. Tests' own checks keep
 * a session each (`sql`), so that no session of the harness sits in a database a test inspects.
 */
const adminSessions = new Map<number, Promise<pg.Client>>();

afterAll(async () => {
  const sessions = [...adminSessions.values()];
  adminSessions.clear();
  await Promise.allSettled(sessions.map(async (s) => (await s).end()));
});

async function admin<R extends pg.QueryResultRow = pg.QueryResultRow>(
  server: ServerInfo,
  text: string,
  params?: unknown[],
): Promise<R[]> {
  for (let attempt = 1; ; attempt++) {
    let session = adminSessions.get(server.port);
    if (!session) {
      const client = new pg.Client({
        connectionString: serverUrl(server),
        options: '-c default_transaction_read_only=off',
      });
      // A session a test ended (or a lost connection) is replaced by the next statement.
      const forget = () => {
        if (adminSessions.get(server.port) === session) adminSessions.delete(server.port);
      };
      client.on('error', forget);
      client.on('end', forget);
      session = client.connect().then(() => client);
      session.catch(forget);
      adminSessions.set(server.port, session);
    }
    try {
      return (await (await session).query<R>(text, params)).rows;
    } catch (err) {
      // Once more on a new session when this one was gone; an error of the statement itself is the caller's.
      if (attempt > 1 || adminSessions.get(server.port) === session) throw err;
    }
  }
}

/** Disable and drop a database's subscriptions (and let go of their slots), so that nothing reconnects to a peer. */
async function dropSubscriptions(server: ServerInfo, db: string) {
  const subs = await admin<{ subname: string }>(
    server,
    'SELECT subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid WHERE d.datname = $1',
    [db],
  );
  if (subs.length === 0) return;
  const client = new pg.Client({
    connectionString: serverUrl(server, db),
    options: '-c default_transaction_read_only=off',
  });
  client.on('error', () => {});
  await client.connect();
  try {
    for (const { subname } of subs) {
      const sub = pg.escapeIdentifier(subname);
      await client.query(`ALTER SUBSCRIPTION ${sub} DISABLE`).catch(() => {});
      await client.query(`ALTER SUBSCRIPTION ${sub} SET (slot_name = NONE)`).catch(() => {});
      await client.query(`DROP SUBSCRIPTION IF EXISTS ${sub}`).catch(() => {});
    }
  } finally {
    await client.end().catch(() => {});
  }
}

/** Drop a database's replication slots, then the database, whatever state a test left. */
async function dropSlotsAndDatabase(server: ServerInfo, db: string) {
  // Slots of this database (ours, or a peer's subscription's) go first, or DROP DATABASE refuses.
  for (let i = 0; i < 50; i++) {
    await admin(
      server,
      'SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL',
      [db],
    );
    await admin(
      server,
      'SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active',
      [db],
    ).catch(() => {});
    const left = await admin(server, 'SELECT 1 FROM pg_replication_slots WHERE database = $1', [db]);
    if (left.length === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (server.version >= 13) {
    await admin(server, `DROP DATABASE IF EXISTS ${pg.escapeIdentifier(db)} WITH (FORCE)`);
    return;
  }
  // Before 13, no FORCE: its sessions are ended first (a writer may still be reconnecting).
  for (let i = 0; ; i++) {
    await admin(
      server,
      'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
      [db],
    );
    try {
      await admin(server, `DROP DATABASE IF EXISTS ${pg.escapeIdentifier(db)}`);
      return;
    } catch (err) {
      if ((err as { code?: string }).code !== '55006' || i >= 50) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export interface Pair {
  sourceServer: ServerInfo;
  targetServer: ServerInfo;
  sourceDb: string;
  targetDb: string;
  sourceUrl: string;
  targetUrl: string;
  /** Superuser URLs for the test's own checks. */
  source(text: string, params?: unknown[]): Promise<pg.QueryResultRow[]>;
  target(text: string, params?: unknown[]): Promise<pg.QueryResultRow[]>;
  drop(): Promise<void>;
}

/** Fresh, empty databases on the shared source (PG 15 unless asked) and the target of the given version. */
export async function freshPair(
  targetVersion: TargetVersion = 15,
  label = 'db',
  sourceVersion: SourceVersion = 15,
): Promise<Pair> {
  const servers = testServers();
  const sourceServer = servers[`source${sourceVersion}`];
  const targetServer = servers[`target${targetVersion}`];
  const suffix = randomBytes(4).toString('hex');
  const sourceDb = `src_${label}_${suffix}`;
  const targetDb = `tgt_${label}_${suffix}`;
  await Promise.all([
    admin(sourceServer, `CREATE DATABASE ${pg.escapeIdentifier(sourceDb)}`),
    admin(targetServer, `CREATE DATABASE ${pg.escapeIdentifier(targetDb)}`),
  ]);
  const sourceUrl = serverUrl(sourceServer, sourceDb);
  const targetUrl = serverUrl(targetServer, targetDb);
  return {
    sourceServer,
    targetServer,
    sourceDb,
    targetDb,
    sourceUrl,
    targetUrl,
    source: (text, params) => sql(sourceUrl, text, params),
    target: (text, params) => sql(targetUrl, text, params),
    async drop() {
      const t = Date.now();
      // Both sides at once: first every subscription (forward and reverse), so that no apply worker
      // reconnects to a slot about to be dropped, then the slots and the databases.
      const sides: [ServerInfo, string][] = [
        [sourceServer, sourceDb],
        [targetServer, targetDb],
      ];
      await Promise.all(sides.map(([server, db]) => dropSubscriptions(server, db)));
      await Promise.all(sides.map(([server, db]) => dropSlotsAndDatabase(server, db)));
      if (process.env.PGFERRY_TIMING) console.error(`drop: ${Date.now() - t} ms`);
    },
  };
}

/** Replication slots and publications left on a server for a database: what clean-up must remove. */
export async function leftovers(pair: Pair) {
  const slots = (server: ServerInfo, db: string) =>
    admin<{ slot_name: string }>(server, 'SELECT slot_name FROM pg_replication_slots WHERE database = $1', [db]);
  // (pg_subscription is shared by the server's databases; pg_publication is each database's own.)
  const subs = (server: ServerInfo, db: string) =>
    admin<{ subname: string }>(
      server,
      'SELECT subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid WHERE d.datname = $1',
      [db],
    );
  const [sourceSlots, targetSlots, pubs, targetPubs, sourceSubs, targetSubs] = await Promise.all([
    slots(pair.sourceServer, pair.sourceDb),
    slots(pair.targetServer, pair.targetDb),
    pair.source('SELECT pubname FROM pg_publication'),
    pair.target('SELECT pubname FROM pg_publication'),
    subs(pair.sourceServer, pair.sourceDb),
    subs(pair.targetServer, pair.targetDb),
  ]);
  return [
    ...sourceSlots.map((r) => `source slot ${r.slot_name}`),
    ...targetSlots.map((r) => `target slot ${r.slot_name}`),
    ...pubs.map((r) => `source publication ${r.pubname}`),
    ...targetPubs.map((r) => `target publication ${r.pubname}`),
    ...sourceSubs.map((r) => `source subscription ${r.subname}`),
    ...targetSubs.map((r) => `target subscription ${r.subname}`),
  ];
}

/** Indexes, constraints and triggers of a database's own tables: what post-data must rebuild, exactly. */
export async function schemaShape(url: string) {
  const own = "NOT IN ('pg_catalog', 'information_schema', 'pgferry') AND n.nspname NOT LIKE 'pg_toast%'";
  const indexes = await sql(
    url,
    `SELECT n.nspname || '.' || c.relname AS name, pg_get_indexdef(c.oid) AS def, x.indisvalid AS valid
       FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname ${own} ORDER BY 1`,
  );
  const constraints = await sql(
    url,
    `SELECT k.conrelid::regclass::text AS "table", k.conname AS name, pg_get_constraintdef(k.oid) AS def, k.convalidated AS valid
       FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
      WHERE n.nspname ${own} ORDER BY 1, 2`,
  );
  const triggers = await sql(
    url,
    `SELECT t.tgrelid::regclass::text AS "table", t.tgname AS name, pg_get_triggerdef(t.oid) AS def
       FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE NOT t.tgisinternal AND n.nspname ${own} ORDER BY 1, 2`,
  );
  return { indexes, constraints, triggers };
}
