/**
 * The worker image cannot be built here (no registry to pull `node:22` from, no Docker daemon), so what
 * the Dockerfile does with this repository is run outside Docker: its build stage's own esbuild command,
 * read from the Dockerfile, then its entry point, written as its RUN line writes it, run from a
 * directory with no node_modules (as /opt/pgferry in the image). What this cannot check: the base image,
 * PGDG's apt repository and the client tools it installs.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '..');
const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
/** The Dockerfile's RUN instructions, continuation lines joined. */
const runs = dockerfile
  .replace(/\\\n/g, ' ')
  .split('\n')
  .filter((l) => l.startsWith('RUN '))
  .map((l) => l.slice(4).trim());

/** Split a shell command line into words (double quotes and single quotes kept together, unquoted). */
function words(line: string): string[] {
  const out: string[] = [];
  for (const m of line.matchAll(/"((?:[^"\\]|\\.)*)"|'([^']*)'|(\S+)/g)) out.push(m[1] ?? m[2] ?? m[3] ?? '');
  return out;
}

const dir = mkdtempSync(join(tmpdir(), 'pgferry-image-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('the worker image (Dockerfile), built outside Docker', () => {
  it('bundles the CLI with its AWS adapters into one file that runs `pgferry worker` without node_modules', () => {
    const bundle = runs.find((r) => r.startsWith('npx esbuild '));
    expect(bundle, 'the build stage bundles with esbuild').toBeDefined();
    const args = words(bundle!).slice(2);
    const out = args.find((a) => a.startsWith('--outfile='));
    expect(out).toBe('--outfile=/out/pgferry.mjs');
    // The Dockerfile's own command, its output moved into a scratch directory.
    execFileSync(
      join(ROOT, 'node_modules/.bin/esbuild'),
      args.map((a) => (a === out ? `--outfile=${join(dir, 'pgferry.mjs')}` : a)),
      { cwd: ROOT, stdio: 'pipe' },
    );
    // The entry point, as the final stage writes it.
    const entry = runs.find((r) => r.includes('/opt/pgferry/bin.mjs') && r.startsWith('printf '));
    const script = words(entry!.split('>')[0]!)[1]!;
    writeFileSync(join(dir, 'bin.mjs'), script.replace(/\\n/g, '\n'));
    const run = (argv: string[], env: Record<string, string> = {}) =>
      spawnSync(process.execPath, [join(dir, 'bin.mjs'), ...argv], {
        cwd: dir,
        encoding: 'utf8',
        env: { PATH: process.env.PATH, HOME: dir, ...env },
      });
    // No node_modules anywhere above the scratch directory's files: everything is in the one file.
    expect(spawnSync('node', ['-e', "require.resolve('pg')"], { cwd: dir }).status).not.toBe(0);
    const help = run(['--help']);
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toContain('worker');
    // The container's command with no task named: a clear refusal naming the variable, exit 2.
    const bare = run(['worker']);
    expect(bare.status).toBe(2);
    expect(bare.stderr + bare.stdout).toContain('PGFERRY_TASK');
    // The AWS adapters are in the bundle and run: a whole task named as the state machine names it, the
    // stack's environment, every AWS endpoint a closed local port (never AWS itself). The bundled SDK
    // clients try that endpoint: exit 1, naming it (a bundle without them fails on a missing module).
    const aws = run(['worker'], {
      PGFERRY_TASK: 'verify',
      PGFERRY_MIGRATION_ID: 'm2612070000_test',
      PGFERRY_TASK_TOKEN: 'token',
      // What the stack sets on the container.
      PGFERRY_TABLE_NAME: 'pgferry-test-migrations',
      PGFERRY_BUS_NAME: 'pgferry-test',
      PGFERRY_BUCKET_NAME: 'pgferry-test-artifacts',
      PGFERRY_STAGE: 'test',
      AWS_REGION: 'eu-west-1',
      AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE',
      AWS_SECRET_ACCESS_KEY: 'secret',
      AWS_ENDPOINT_URL: 'http://127.0.0.1:9',
      AWS_MAX_ATTEMPTS: '1',
    });
    expect(aws.status, aws.stderr + aws.stdout).toBe(1);
    expect(aws.stderr + aws.stdout).toMatch(/127\.0\.0\.1:9|ECONNREFUSED/);
  });
});
