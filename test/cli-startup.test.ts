/**
 * What the CLI loads at start-up. Commands that do not run the workflow definition must not load
 * aws-local-stepfunctions: it cost every command about a third of a second. A module hook makes
 * resolving that package (from the sources) or its bundle (dist/pgferry-sfn.mjs, from the CLI's
 * bundle) fail, so any command that loads it fails.
 */

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const bin = fileURLToPath(new URL('../packages/cli/bin/pgferry.mjs', import.meta.url));
const hooks = `export async function resolve(specifier, context, next) {
  if (specifier === 'aws-local-stepfunctions' || specifier.endsWith('pgferry-sfn.mjs'))
    throw new Error('aws-local-stepfunctions was loaded');
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
  it('the hook refuses aws-local-stepfunctions and its bundle (so the checks below can fail)', () => {
    for (const what of [
      'aws-local-stepfunctions',
      new URL('../packages/cli/dist/pgferry-sfn.mjs', import.meta.url).href,
    ]) {
      const r = run(['--input-type=module', '-e', `await import(${JSON.stringify(what)})`]);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain('aws-local-stepfunctions was loaded');
    }
  });

  it('does not load aws-local-stepfunctions for --help, status or workflow print', () => {
    for (const args of [['--help'], ['status'], ['status', '--json'], ['workflow', 'print']]) {
      const r = run([bin, ...args]);
      expect({ args, status: r.status, stderr: r.stderr }).toEqual({ args, status: 0, stderr: '' });
    }
  });

  it('bundles the workflow runner without the Lambda client, the Cognito credentials or asl-validator', () => {
    const sfn = new URL('../packages/cli/dist/pgferry-sfn.mjs', import.meta.url);
    // esbuild names each module it bundles in a comment: aws-local-stepfunctions is there, the
    // packages it imports for what pgferry never asks of it are not (about 0.4 s of CPU to load).
    const text = readFileSync(sfn, 'utf8');
    expect(text).toContain('node_modules/aws-local-stepfunctions/');
    for (const unused of ['@aws-sdk/client-lambda', '@aws-sdk/credential-providers', 'asl-validator'])
      expect({ unused, bundled: text.includes(`node_modules/${unused}/`) }).toEqual({ unused, bundled: false });
    // It still loads, and has the state machine the CLI runs.
    const r = spawnSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const m = await import(${JSON.stringify(sfn.href)}); console.log(typeof m.StateMachine)`,
      ],
      { encoding: 'utf8', cwd: dir },
    );
    expect(r).toMatchObject({ status: 0, stdout: 'function\n', stderr: '' });
  });
});
