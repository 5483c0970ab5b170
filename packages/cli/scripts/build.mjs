#!/usr/bin/env node
// Bundles the CLI into dist/pgferry.mjs (run by npm's `prepare` at install): one compiled file
// starts in a fraction of the time tsx takes to compile the sources on every run. bin/pgferry.mjs
// uses it only while it is newer than every source (see there).
import { renameSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const cli = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(cli, 'dist', 'pgferry.mjs');
const tmp = `${out}.${process.pid}.tmp`;
await build({
  entryPoints: [join(cli, 'src', 'main.ts')],
  outfile: tmp,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // pg loads it only when asked for the native client, which pgferry never is; it may be absent.
  // The AWS adapters (and their SDK) only `pgferry worker` loads: the worker image bundles them.
  // aws-local-stepfunctions (and the AWS SDK clients it imports) loads from node_modules only when
  // a command runs the workflow: status and assess do not pay for it.
  external: ['pg-native', '@pgferry/aws', '@aws-sdk/*', 'aws-local-stepfunctions'],
  // pg and its dependencies are CommonJS and call require(): give the ESM bundle a real one.
  banner: {
    js: "import { createRequire as __pgferryRequire } from 'node:module';\nconst require = __pgferryRequire(import.meta.url);",
  },
  logLevel: 'warning',
});
// A rename, so that a CLI starting meanwhile never imports half a file.
renameSync(tmp, out);
