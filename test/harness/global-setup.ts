import type { TestProject } from 'vitest/node';
import { type LocalServer, type ServerOptions, startServer } from '../../packages/cli/src/local-servers';

export interface ServerInfo {
  version: number;
  port: number;
  password: string;
  /** The server's self-signed certificate, when it offers TLS. */
  certFile?: string;
  /** Where the server writes its log (stderr): a test can search what it wrote. */
  logFile: string;
}

export type ServerRole = 'source11' | 'source12' | 'source15' | 'target15' | 'target16' | 'target17';
export type ServerSet = Record<ServerRole, ServerInfo>;

declare module 'vitest' {
  export interface ProvidedContext {
    /** One set of servers per worker of the `postgres` project (see test/harness/workers.ts). */
    servers: ServerSet[];
  }
}

let started: LocalServer[] = [];

/**
 * One server per role for the whole run (one set per worker when PGFERRY_TEST_PG_WORKERS runs
 * PostgreSQL files side by side); each test makes its own databases on them. All but target15 offer
 * TLS, as RDS does: libpq's tools and the subscriptions use it unasked (sslmode=prefer), and so does
 * pgferry; target15 offers none, so `prefer` falling back to plain connections is covered too.
 */
export async function setup(project: TestProject) {
  // Prepared transactions on, as many sources have them (and the freeze must see them).
  const source = { ssl: true, settings: { max_prepared_transactions: 10 } };
  const roles: [ServerRole, ServerOptions][] = [
    // The oldest sources pgferry supports (before 13: no publish_via_partition_root, no pg_current_snapshot).
    ['source11', { version: 11, ...source }],
    ['source12', { version: 12, ...source }],
    ['source15', { version: 15, ...source }],
    ['target15', { version: 15 }],
    ['target16', { version: 16, ssl: true }],
    ['target17', { version: 17, ssl: true }],
  ];
  // One set per worker: PGFERRY_TEST_PG_WORKERS sets the project's maxWorkers (vitest.config.ts).
  const workers = Math.max(1, project.config.maxWorkers);
  const results = await Promise.allSettled(
    Array.from({ length: workers }, (_, n) =>
      roles.map(([role, options]) => startServer({ ...options, name: n === 0 ? role : `${role}-w${n + 1}` })),
    ).flat(),
  );
  started = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) {
    await teardown(); // (the servers that did start)
    throw failed.reason;
  }
  const info = (s: LocalServer): ServerInfo => ({
    version: s.version,
    port: s.port,
    password: s.password,
    certFile: s.certFile,
    logFile: s.logFile,
  });
  const set = (n: number) =>
    Object.fromEntries(roles.map(([role], i) => [role, info(started[n * roles.length + i]!)])) as ServerSet;
  project.provide(
    'servers',
    Array.from({ length: workers }, (_, n) => set(n)),
  );
}

export async function teardown() {
  await Promise.allSettled(started.map((s) => s.stop()));
  started = [];
}
