import type { TestProject } from 'vitest/node';
import { type LocalServer, startServer } from '../../packages/cli/src/local-servers';

export interface ServerInfo {
  version: number;
  port: number;
  password: string;
  /** The server's self-signed certificate, when it offers TLS. */
  certFile?: string;
  /** Where the server writes its log (stderr): a test can search what it wrote. */
  logFile: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    servers: Record<ServerRole, ServerInfo>;
  }
}

export type ServerRole = 'source11' | 'source12' | 'source15' | 'target15' | 'target16' | 'target17';

let started: LocalServer[] = [];

/**
 * One server per role for the whole run; each test makes its own databases on them. All but target15
 * offer TLS, as RDS does: libpq's tools and the subscriptions use it unasked (sslmode=prefer), and so
 * does pgferry; target15 offers none, so `prefer` falling back to plain connections is covered too.
 */
export async function setup(project: TestProject) {
  // Prepared transactions on, as many sources have them (and the freeze must see them).
  const source = { ssl: true, settings: { max_prepared_transactions: 10 } };
  const [source11, source12, source15, target15, target16, target17] = await Promise.all([
    // The oldest sources pgferry supports (before 13: no publish_via_partition_root, no pg_current_snapshot).
    startServer({ version: 11, name: 'source11', ...source }),
    startServer({ version: 12, name: 'source12', ...source }),
    startServer({ version: 15, name: 'source15', ...source }),
    startServer({ version: 15, name: 'target15' }),
    startServer({ version: 16, name: 'target16', ssl: true }),
    startServer({ version: 17, name: 'target17', ssl: true }),
  ]);
  started = [source11, source12, source15, target15, target16, target17];
  const info = (s: LocalServer): ServerInfo => ({
    version: s.version,
    port: s.port,
    password: s.password,
    certFile: s.certFile,
    logFile: s.logFile,
  });
  project.provide('servers', {
    source11: info(source11),
    source12: info(source12),
    source15: info(source15),
    target15: info(target15),
    target16: info(target16),
    target17: info(target17),
  });
}

export async function teardown() {
  await Promise.allSettled(started.map((s) => s.stop()));
  started = [];
}
