/**
 * All SQL goes through this door: timeouts and application_name are set on every connection,
 * connections are always released, errors keep their cause and never carry a password.
 */
import { ConnectionFailedError, DEFAULTS, PgferryError, redactText, redactUrl, SSL_MODES } from '@pgferry/core';
import pg from 'pg';
import { parse as parseUrl, toClientConfig } from 'pg-connection-string';

// int8 and numeric as JS numbers where they fit is what every caller here wants (counts, bytes, LSN diffs).
pg.types.setTypeParser(20, (v) => Number(v));
pg.types.setTypeParser(1700, (v) => Number(v));

export type Side = 'source' | 'target';

export interface DbOptions {
  side: Side;
  applicationName: string;
  max?: number;
  statementTimeoutMs?: number;
  lockTimeoutMs?: number;
}

export interface Db {
  readonly side: Side;
  readonly url: string;
  readonly database: string;
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<R[]>;
  one<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<R>;
  /** A dedicated connection for a transaction or a COPY; always released. */
  withClient<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T>;
  end(): Promise<void>;
}

const FIELD: Record<Side, string> = { source: '--source', target: '--target' };

/** Turn a driver error on connect into a message that names the field and what to do. */
export function connectionError(side: Side, url: string, err: unknown): PgferryError {
  const e = err as { code?: string; message?: string };
  const field = FIELD[side];
  const where = redactUrl(url);
  let message = `cannot connect to the ${side} (${field} ${where}): ${redactText(e.message ?? String(err))}`;
  let hint = `check ${field}: host, port, user, password and database`;
  switch (e.code) {
    case '28P01':
      message = `the ${side} rejected the password for ${field} ${where}`;
      hint = `fix the password in ${field}`;
      break;
    case '28000':
      message = `the ${side} has no pg_hba.conf entry or rejected authentication for ${field} ${where}`;
      hint = 'allow this client in pg_hba.conf (RDS: the security group and parameter group)';
      break;
    case '3D000':
      message = `the database named in ${field} does not exist on the ${side} (${where})`;
      hint = `create the database or fix the /<database> part of ${field}`;
      break;
    case 'ECONNREFUSED':
    case 'ENOTFOUND':
    case 'EHOSTUNREACH':
    case 'ETIMEDOUT':
      message = `no PostgreSQL server answered at ${field} ${where} (${e.code})`;
      hint = `check the host and port in ${field} and that the server is running`;
      break;
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      hint = `connect by a name the ${side}'s certificate lists (for RDS, the endpoint's DNS name), or use sslmode=verify-ca to check only the CA`;
      break;
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
      hint = /[?&]sslrootcert=/.test(url)
        ? `the CA file in sslrootcert of ${field} did not sign the ${side}'s certificate: point it at the CA that did (for RDS, the region's global-bundle.pem)`
        : `add sslrootcert=<CA file> to ${field} (for RDS, the region's global-bundle.pem), or use sslmode=require to encrypt without verifying`;
      break;
    case 'CERT_HAS_EXPIRED':
      hint = `the ${side}'s certificate has expired: renew or rotate it (RDS: modify the instance's certificate authority)`;
      break;
  }
  return new ConnectionFailedError(message, { cause: err, hint, field });
}

/** Options only node-postgres understands; libpq (pg_dump, a subscription) refuses unknown ones. */
const NODE_ONLY = ['uselibpqcompat', 'ssl'];

/** A URL's query parameters that libpq accepts. */
export function libpqParams(u: URL): [string, string][] {
  return [...u.searchParams].filter(([k]) => !NODE_ONLY.includes(k));
}

/**
 * A URL read the way libpq reads it, so pgferry's own connections agree with pg_dump, pg_restore and
 * the subscription, which are libpq: `sslmode=require` encrypts without verifying the certificate
 * (node-postgres alone treats it as verify-full, and an RDS URL with sslmode=require would then fail
 * on RDS's CA), and no sslmode means `prefer` (TLS when the server offers it, which RDS with
 * rds.force_ssl needs). `verify-ca` / `verify-full` with `sslrootcert=` verify as libpq does.
 */
export async function connectionSettings(url: string): Promise<pg.ClientConfig> {
  const query = new URL(url).searchParams;
  const mode = query.get('sslmode') ?? undefined;
  if (mode !== undefined && !(SSL_MODES as readonly string[]).includes(mode))
    throw new Error(`sslmode=${mode} is not one of ${SSL_MODES.join(', ')}`);
  const parsed = parseUrl(url, { useLibpqCompat: true });
  const settings = toClientConfig({ ...parsed, sslmode: undefined, uselibpqcompat: undefined });
  // The database as libpq names it: ?dbname= wins, and the path is fully %-decoded (pg-connection-string
  // leaves %2F, %23 and the like encoded), so pgferry and pg_dump open the same database.
  const path = decodeURIComponent(new URL(url).pathname.slice(1));
  settings.database = query.get('dbname') ?? (path || settings.database);
  // node-postgres's own `ssl=` parameter: true as it means there, 0/false as no TLS at all.
  const ssl = query.get('ssl');
  if (mode === undefined && ssl !== null) {
    if (/^(0|false)$/i.test(ssl)) settings.ssl = false;
    if (/^(0|false|1|true)$/i.test(ssl)) return settings;
  }
  if (mode === undefined || mode === 'prefer' || mode === 'allow') {
    // libpq's prefer: TLS without verification if the server offers it, keeping a client
    // certificate given with sslcert/sslkey.
    const given = typeof settings.ssl === 'object' ? settings.ssl : {};
    settings.ssl = (await serverOffersTls(settings)) ? { ...given, rejectUnauthorized: false } : false;
  }
  return settings;
}

/** libpq's `prefer`, decided once per server: does it accept TLS? */
const tlsOffered = new Map<string, Promise<boolean>>();
function serverOffersTls(settings: pg.ClientConfig): Promise<boolean> {
  const key = `${settings.host}:${settings.port}`;
  let known = tlsOffered.get(key);
  if (!known) {
    known = new Promise<boolean>((resolve) => {
      const probe = new pg.Client({ ...settings, ssl: { rejectUnauthorized: false }, connectionTimeoutMillis: 10_000 });
      probe.on('error', () => {});
      probe.connect().then(
        () => {
          resolve(true);
          probe.end().catch(() => {});
        },
        (err: Error) => {
          const refused = /does not support SSL/i.test(err.message);
          // Any other failure (password, a server not up yet) is the real connection's to report,
          // and says nothing lasting about TLS: ask again next time.
          if (!refused) tlsOffered.delete(key);
          resolve(!refused);
          probe.end().catch(() => {});
        },
      );
    });
    tlsOffered.set(key, known);
  }
  return known;
}

/** Session settings that fix how values are written as text (see poolConfig). */
const TEXT_SETTINGS =
  '-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c timezone=UTC -c lc_monetary=C';

async function poolConfig(url: string, options: DbOptions): Promise<pg.PoolConfig> {
  const settings = await connectionSettings(url);
  // Options from the URL are kept; ours come last and win.
  const urlOptions = typeof settings.options === 'string' ? `${settings.options} ` : '';
  return {
    ...settings,
    max: options.max ?? 4,
    application_name: options.applicationName,
    statement_timeout: options.statementTimeoutMs ?? DEFAULTS.statementTimeoutMs,
    lock_timeout: options.lockTimeoutMs ?? DEFAULTS.lockTimeoutMs,
    connectionTimeoutMillis: 10_000,
    // Our own sessions keep writing while a database is frozen with default_transaction_read_only.
    // Text as each server writes and reads it must mean the same on both: dates, intervals, floats and
    // time zones in fixed forms (as pg_dump and PostgreSQL's own subscriber set them), whatever the
    // database or role sets. A date copied as text under DateStyle 'SQL, DMY' came back day for month.
    // The source may set idle_in_transaction_session_timeout (RDS parameter groups often do): the session
    // that exported the load's snapshot sits idle in its transaction while the copy runs, and a timeout
    // ending it makes every later SET TRANSACTION SNAPSHOT fail. node-postgres drops a 0 given as its own
    // `idle_in_transaction_session_timeout` setting (it sends only truthy values), so it goes in here.
    options: `${urlOptions}-c default_transaction_read_only=off -c idle_in_transaction_session_timeout=0 ${TEXT_SETTINGS}`,
  };
}

/**
 * Timeouts newer servers add that would end a session pgferry holds on purpose: idle_session_timeout (14+)
 * an idle held connection, transaction_timeout (17+) the exported snapshot's transaction during a long copy.
 * Not startup options: an older server refuses a setting it does not know at connection time.
 */
const NEWER_TIMEOUTS_OFF =
  "SELECT set_config(name, '0', false) FROM pg_settings WHERE name IN ('idle_session_timeout', 'transaction_timeout')";

/** The pool's clients: connected only once those timeouts are off. */
class TimeoutsOffClient extends pg.Client {
  // biome-ignore lint/suspicious/noExplicitAny: pg's connect has a callback overload the pool uses
  override connect(callback?: any): any {
    // A failure after connecting (that statement cancelled: statement_timeout in the URL's options)
    // fails the connection, and closes it: the pool ends only what it considers connected, and the
    // open socket kept the command from ever exiting.
    const ready = super.connect().then(() =>
      this.query(NEWER_TIMEOUTS_OFF).then(
        () => undefined,
        async (err) => {
          await this.end().catch(() => {});
          throw err;
        },
      ),
    );
    if (!callback) return ready;
    ready.then(() => callback(), callback);
  }
}

export async function connect(url: string, options: DbOptions): Promise<Db> {
  let config: pg.PoolConfig;
  try {
    config = await poolConfig(url, options);
  } catch (err) {
    throw connectionError(options.side, url, err);
  }
  const pool = new pg.Pool({ ...config, Client: TimeoutsOffClient });
  pool.on('error', () => {}); // an idle client killed by the server (e.g. our own freeze) is not fatal
  try {
    const c = await pool.connect();
    c.release();
  } catch (err) {
    await pool.end().catch(() => {});
    throw connectionError(options.side, url, err);
  }
  const database = String(config.database || config.user || ''); // libpq's default database is the user's name
  const wrap = (err: unknown, sql: string) => {
    const e = err as { message?: string; code?: string };
    return new PgferryError(`${options.side}: ${redactText(e.message ?? String(err))}`, {
      cause: err,
      // Redacted before it is cut short: a CREATE SUBSCRIPTION carries the source's password.
      hint: `while running: ${redactText(sql.trim().split('\n')[0] ?? '').slice(0, 120)}`,
    });
  };
  const query: Db['query'] = async (sql, params) => {
    try {
      return (await pool.query(sql, params)).rows;
    } catch (err) {
      throw wrap(err, sql);
    }
  };
  return {
    side: options.side,
    url,
    database,
    query,
    async one(sql, params) {
      const rows = await query(sql, params);
      if (rows.length !== 1)
        throw new PgferryError(`${options.side}: expected one row, got ${rows.length}`, { hint: sql });
      return rows[0] as never;
    },
    async withClient(fn) {
      const client = await pool.connect();
      let broken = false;
      try {
        return await fn(client);
      } catch (err) {
        broken = true;
        throw err;
      } finally {
        client.release(broken);
      }
    },
    end: () => pool.end(),
  };
}

/** A single client outside the pool (replication protocol connections, held snapshots). */
export async function connectClient(url: string, options: DbOptions & { replication?: boolean }): Promise<pg.Client> {
  let cfg: pg.ClientConfig & { replication?: string };
  try {
    cfg = await poolConfig(url, options);
  } catch (err) {
    throw connectionError(options.side, url, err);
  }
  if (options.replication) cfg.replication = 'database';
  const client = new pg.Client(cfg);
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => {});
    throw connectionError(options.side, url, err);
  }
  // A replication connection with replication=database runs plain SQL too (10+).
  await client.query(NEWER_TIMEOUTS_OFF).catch(() => {});
  return client;
}

/** Error codes of a server going away or refusing connections for a while (a restart, a failover, a network blip). */
const CONNECTION_LOSS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  // A name that does not resolve for a while (a DNS-based failover, RDS's endpoint moving).
  'ENOTFOUND',
  'EAI_AGAIN',
  'ENETUNREACH',
  '57P01', // admin_shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now (starting up, shutting down)
  '08000',
  '08001',
  '08003',
  '08004',
  '08006',
]);

/**
 * Whether `err` (or its cause) says the server is gone for now rather than that something is wrong:
 * worth waiting out, reconnecting, for a bounded time.
 */
export function isConnectionLoss(err: unknown): boolean {
  for (let e = err as { code?: string; message?: string; cause?: unknown } | undefined, i = 0; e && i < 5; i++) {
    if (e.code && CONNECTION_LOSS.has(e.code)) return true;
    if (
      /Connection terminated|connection ended|Client has encountered a connection error|timeout exceeded when trying to connect/i.test(
        e.message ?? '',
      )
    )
      return true;
    e = e.cause as typeof e;
  }
  return false;
}

/** A database that takes no connections for now (ALLOW_CONNECTIONS false, or one being shut down). */
function refusesConnections(err: unknown): boolean {
  for (let e = err as { code?: string; message?: string; cause?: unknown } | undefined, i = 0; e && i < 5; i++) {
    if (e.code === '55000' && /accepting connections|allow connections/.test(e.message ?? '')) return true;
    e = e.cause as typeof e;
  }
  return false;
}

/** The server went away or takes no connections to the database for now: worth trying again later. */
export const isServerAway = (err: unknown): boolean => isConnectionLoss(err) || refusesConnections(err);

const majors = new WeakMap<Db, Promise<number>>();

/** The server's major version (11, 12, …, 17), asked once per pool: older servers lack catalog columns and functions. */
export function serverMajor(db: Db): Promise<number> {
  let major = majors.get(db);
  if (!major) {
    major = db.one<{ v: number }>("SELECT current_setting('server_version_num')::int / 10000 AS v").then((r) => r.v);
    major.catch(() => majors.delete(db));
    majors.set(db, major);
  }
  return major;
}

export const ident = (name: string) => pg.escapeIdentifier(name);
export const literal = (value: string) => pg.escapeLiteral(value);
export const qualified = (t: { schema: string; name: string }) => `${ident(t.schema)}.${ident(t.name)}`;
export const tableLabel = (t: { schema: string; name: string }) => `${t.schema}.${t.name}`;

export function sleep(ms: number) {
  return new Promise<void>((r) => setTimeout(r, ms));
}
