/**
 * bin/pgferry.mjs runs the built bundle only while it is not stale. The build writes two files,
 * dist/pgferry.mjs and the workflow runner it imports, dist/pgferry-sfn.mjs: either one missing, or
 * older than a source, a manifest or the build script, means the sources run instead (tsx).
 *
 * The real bin script runs in a copy of the repository's layout (its own tree, so the repository's
 * dist/ is never touched) whose bundle and sources each only say which of them ran.
 */

import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';

const repo = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'pgferry-bin-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const cli = join(dir, 'packages', 'cli');
const bin = join(cli, 'bin', 'pgferry.mjs');
const bundle = join(cli, 'dist', 'pgferry.mjs');
const sfn = join(cli, 'dist', 'pgferry-sfn.mjs');
const source = join(dir, 'packages', 'postgres', 'src', 'phases', 'verify.ts');
const buildScript = join(cli, 'scripts', 'build.mjs');

const main = (what: string) => `export async function main() { console.log(${JSON.stringify(what)}); return 0; }\n`;
// Times a minute apart, well clear of any file system's mtime granularity.
const t0 = Date.now() / 1000 - 3600;
const at = (file: string, minute: number) => utimesSync(file, t0 + minute * 60, t0 + minute * 60);

function layout() {
  rmSync(join(dir, 'packages'), { recursive: true, force: true });
  for (const pkg of ['core', 'postgres', 'cli']) {
    mkdirSync(join(dir, 'packages', pkg, 'src'), { recursive: true });
    writeFileSync(join(dir, 'packages', pkg, 'package.json'), '{"type":"module"}\n');
  }
  mkdirSync(join(cli, 'bin'));
  mkdirSync(join(cli, 'dist'));
  mkdirSync(join(cli, 'scripts'));
  copyFileSync(join(repo, 'packages', 'cli', 'bin', 'pgferry.mjs'), bin);
  writeFileSync(join(cli, 'src', 'main.ts'), main('sources'));
  mkdirSync(join(dir, 'packages', 'postgres', 'src', 'phases'));
  writeFileSync(source, 'export {};\n');
  writeFileSync(buildScript, '// the build\n');
  writeFileSync(bundle, main('bundle'));
  writeFileSync(sfn, 'export {};\n');
  // Every input (folders too: the bin script lists them) at minute 0, the build after them: fresh.
  for (const f of [join(dir, 'package.json'), join(dir, 'package-lock.json'), buildScript]) at(f, 0);
  for (const pkg of ['core', 'postgres', 'cli']) {
    at(join(dir, 'packages', pkg, 'package.json'), 0);
    const src = join(dir, 'packages', pkg, 'src');
    for (const f of readdirSync(src, { recursive: true, encoding: 'utf8' })) at(join(src, f), 0);
  }
  at(sfn, 1);
  at(bundle, 1);
}

function run() {
  const r = spawnSync(process.execPath, [bin, '--help'], { encoding: 'utf8', cwd: dir });
  expect(r).toMatchObject({ status: 0, stderr: '' });
  return r.stdout.trim();
}

describe('bin/pgferry.mjs: the bundle or the sources', () => {
  writeFileSync(join(dir, 'package.json'), '{"type":"module"}\n');
  writeFileSync(join(dir, 'package-lock.json'), '{}\n');
  // tsx, for the sources, from the repository's own node_modules.
  symlinkSync(join(repo, 'node_modules'), join(dir, 'node_modules'));
  beforeEach(layout);

  it('runs the bundle while both of its files are newer than every input', () => {
    expect(run()).toBe('bundle');
  });

  it('runs the sources when a source is newer than the bundle', () => {
    at(source, 2);
    expect(run()).toBe('sources');
  });

  it('runs the sources when the workflow runner bundle is missing', () => {
    rmSync(sfn);
    expect(run()).toBe('sources');
  });

  it('runs the sources when the workflow runner bundle is older than a source, though the CLI bundle is not', () => {
    at(source, 2);
    at(bundle, 3);
    expect(run()).toBe('sources');
  });

  it('runs the sources when the build script changed after the build', () => {
    at(buildScript, 2);
    expect(run()).toBe('sources');
  });
});
