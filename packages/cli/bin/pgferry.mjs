#!/usr/bin/env node
// Runs the bundle built at install (npm's `prepare`: scripts/build.mjs) while it is newer than every
// source and manifest; otherwise the TypeScript sources directly (tsx), so an edit is never run as
// older code and `npx pgferry` works even without a build.
import { readdirSync, statSync } from 'node:fs';

const root = new URL('../../../', import.meta.url);
const bundle = new URL('../dist/pgferry.mjs', import.meta.url);

function fresh() {
  let built;
  try {
    built = statSync(bundle).mtimeMs;
  } catch {
    return false;
  }
  const inputs = [new URL('package-lock.json', root), new URL('package.json', root)];
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
