import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

/**
 * Two projects, so that only the tests that need PostgreSQL pay for it:
 *
 * - `postgres`: every test file that reaches `inject('servers')` through its own imports of the test
 *   folders (in practice: it imports test/harness/pairs.ts or test/harness/migration.ts). They share the
 *   servers the global setup starts and run one file at a time: migrations are timing-sensitive (lag,
 *   drain, freeze) and a 2-core machine has no room for two at once. PGFERRY_TEST_PG_WORKERS=N runs
 *   N files at once instead, each worker on its own set of servers (see postgresWorkers).
 * - `unit`: every other test file (pure logic, aws-sdk-client-mock, DynamoDB Local, s3rver, the stacks
 *   and cdk-nag). No PostgreSQL is started for them, and they run in parallel, before the `postgres`
 *   files (sequence.groupOrder), so that they never compete with a migration for the CPU.
 *
 * The rule is computed from the files' imports, not listed: a new test file lands in the right project
 * by what it imports. Both projects build the CLI bundle first (the tests that spawn bin/pgferry.mjs
 * test what a user runs after npm install).
 */
const INCLUDE = [/^test\/.*\.test\.ts$/, /^packages\/[^/]+\/test\/.*\.test\.ts$/];
const root = dirname(fileURLToPath(import.meta.url));

function testFiles(): string[] {
  const dirs = ['test', ...readdirSync(join(root, 'packages')).map((p) => join('packages', p, 'test'))];
  const files: string[] = [];
  for (const dir of dirs) {
    let entries: string[];
    try {
      entries = readdirSync(join(root, dir), { recursive: true, encoding: 'utf8' });
    } catch {
      continue; // (a package without tests)
    }
    for (const e of entries) {
      const file = join(dir, e).split('\\').join('/');
      if (INCLUDE.some((re) => re.test(file))) files.push(file);
    }
  }
  return files.sort();
}

const IMPORT = /(?:from\s+|import\s*\(\s*|import\s+)['"](\.{1,2}\/[^'"]+)['"]/g;
const seen = new Map<string, boolean>();

/** Whether `file` or a module it imports inside the test folders asks for the PostgreSQL servers. */
function needsPostgres(file: string, path: string[] = []): boolean {
  const known = seen.get(file);
  if (known !== undefined) return known;
  if (path.includes(file)) return false; // (an import cycle: decided where it started)
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return false;
  }
  let needs = /\binject\(\s*['"]servers['"]\s*\)/.test(text);
  for (const m of needs ? [] : text.matchAll(IMPORT)) {
    const target = resolve(dirname(file), m[1] as string).replace(/\.(js|ts)$/, '');
    // Only the test folders' own modules (the harness); the packages' sources never start a server.
    const rel = relative(root, target).split('\\').join('/');
    if (!rel.startsWith('test/') && !/^packages\/[^/]+\/test\//.test(rel)) continue;
    if (needsPostgres(`${target}.ts`, [...path, file])) {
      needs = true;
      break;
    }
  }
  seen.set(file, needs);
  return needs;
}

const all = testFiles();
const postgres = all.filter((f) => needsPostgres(join(root, f)));
const unit = all.filter((f) => !postgres.includes(f));

/**
 * How many `postgres` files run at once: PGFERRY_TEST_PG_WORKERS, 1 unless set. The global setup starts
 * one set of servers per worker (the project's maxWorkers) and each file takes its worker's set
 * (test/harness/workers.ts), so that no test sees another file's roles, slots, server log or
 * restarts. Off by default: lag, drain and freeze tests are timing-sensitive, and two migrations at
 * once on a 2-core machine may starve them.
 */
export function postgresWorkers(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.PGFERRY_TEST_PG_WORKERS;
  if (raw === undefined || raw.trim() === '') return 1;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 4)
    throw new Error(
      `PGFERRY_TEST_PG_WORKERS=${raw}: give a whole number from 1 to 4 (PostgreSQL test files run at once; unset: 1)`,
    );
  return n;
}

const pgWorkers = postgresWorkers();

const common = {
  testTimeout: 180_000,
  hookTimeout: 120_000,
};

export default defineConfig({
  test: {
    reporters: ['default'],
    projects: [
      {
        test: {
          ...common,
          name: 'unit',
          include: unit,
          globalSetup: ['test/harness/build-cli.ts'],
          fileParallelism: true,
          maxWorkers: Math.max(2, availableParallelism()),
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          ...common,
          name: 'postgres',
          include: postgres,
          globalSetup: ['test/harness/build-cli.ts', 'test/harness/global-setup.ts'],
          fileParallelism: pgWorkers > 1,
          maxWorkers: pgWorkers,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
