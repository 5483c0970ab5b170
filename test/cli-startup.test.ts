/**
 * What the CLI loads at start-up. Commands that do not run the workflow definition must not load
 * aws-local-stepfunctions (and the AWS SDK clients it imports): it cost every command about a third
 * of a second. A module hook makes resolving that package fail, so any command that loads it fails.
 */

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const bin = fileURLToPath(new URL('../packages/cli/bin/pgferry.mjs', import.meta.url));
const hooks = `export async function resolve(specifier, context, next) {
  if (specifier === 'aws-local-stepfunctions') throw new Error('aws-local-stepfunctions was loaded');
  return next(specifier, context);
}`;
const refuse = `data:text/javascript,${encodeURIComponent(
  `import { register } from 'node:module'; register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(hooks)}`)});`,
)}`;
const dir = mkdtempSync(join(tmpdir(), 'pgferry-startup-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(args: string[]) {
  return spawnSync(process.execPath, ['--import', refuse, ...args], { encoding: 'utf8', cwd: dir });
}

describe('CLI start-up', () => {
  it('the hook refuses aws-local-stepfunctions (so the checks below can fail)', () => {
    const r = run(['--input-type=module', '-e', "await import('aws-local-stepfunctions')"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('aws-local-stepfunctions was loaded');
  });

  it('does not load aws-local-stepfunctions for --help, status or workflow print', () => {
    for (const args of [['--help'], ['status'], ['status', '--json'], ['workflow', 'print']]) {
      const r = run([bin, ...args]);
      expect({ args, status: r.status, stderr: r.stderr }).toEqual({ args, status: 0, stderr: '' });
    }
  });
});
