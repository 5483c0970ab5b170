import { execFileSync } from 'node:child_process';
import { resolve } from 'node:path';

/**
 * The CLI tests spawn bin/pgferry.mjs, which runs the bundle when it is up to date: build it once per run
 * (both projects list this setup; the second sees the mark), so that they test what a user runs after
 * npm install.
 */
export function setup() {
  if (process.env.PGFERRY_TEST_CLI_BUILT) return;
  execFileSync(process.execPath, [resolve(__dirname, '../../packages/cli/scripts/build.mjs')], { stdio: 'inherit' });
  process.env.PGFERRY_TEST_CLI_BUILT = '1';
}
