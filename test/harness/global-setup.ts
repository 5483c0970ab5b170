import type { TestProject } from 'vitest/node';
import { type LocalServer, startServer } from '../../packages/cli/src/local-servers';

export interface ServerInfo {
  version: number;
  port: number;
  password: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    servers: Record<'source15' | 'target15' | 'target16' | 'target17', ServerInfo>;
  }
}

let started: LocalServer[] = [];

/** One server per role for the whole run; each test makes its own databases on them. */
export async function setup(project: TestProject) {
  const [source15, target15, target16, target17] = await Promise.all([
    startServer({ version: 15, name: 'source15' }),
    startServer({ version: 15, name: 'target15' }),
    startServer({ version: 16, name: 'target16' }),
    startServer({ version: 17, name: 'target17' }),
  ]);
  started = [source15, target15, target16, target17];
  const info = (s: LocalServer): ServerInfo => ({ version: s.version, port: s.port, password: s.password });
  project.provide('servers', {
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
