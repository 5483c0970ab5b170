#!/usr/bin/env node
// Runs the bundle built at install (npm's `prepare`: scripts/build.mjs) while both of its files (the
// CLI, dist/pgferry.mjs, and the workflow runner it imports, dist/pgferry-sfn.mjs) are newer than every
// source, manifest and the build script; otherwise the TypeScript sources directly (tsx), so an edit
// is never run as older code, a missing runner never fails a command that needs it, and `npx pgferry`
// works even without a build.
import { readdirSync, statSync } from 'node:fs';

const root = new URL('../../../', import.meta.url);
const bundle = new URL('../dist/pgferry.mjs', import.meta.url);
const sfnBundle = new URL('../dist/pgferry-sfn.mjs', import.meta.url);

function fresh() {
  let built;
  try {
    // The older of the two: either one missing or older than an input and the build is stale.
    built = Math.min(statSync(bundle).mtimeMs, statSync(sfnBundle).mtimeMs);
  } catch {
    return false;
  }
  const inputs = [
    new URL('package-lock.json', root),
    new URL('package.json', root),
    new URL('../scripts/build.mjs', import.meta.url),
  ];
  for (const pkg of ['core', 'postgres', 'cli']) {
    const dir = new URL(`packages/${pkg}/`, root);
    inputs.push(new URL('package.json', dir));
    for (const f of readdirSync(new URL('src/', dir), { recursive: true })) inputs.push(new URL(`src/${f}`, dir));
  }
  return inputs.every((f) => {
    try {
      return statSync(f).mtimeMs <= built;
    } catch {
      return true; // (a manifest this checkout lacks)
    }
  });
}

let main;
if (fresh()) ({ main } = await import(bundle.href));
else {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('../src/main.ts'));
}
process.exitCode = await main(process.argv.slice(2));
