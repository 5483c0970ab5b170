#!/usr/bin/env node
// Bundles the CLI into dist/pgferry.mjs (run by npm's `prepare` at install): one compiled file
// starts in a fraction of the time tsx takes to compile the sources on every run. bin/pgferry.mjs
// uses it only while it is newer than every source (see there).
import { readFileSync, renameSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const cli = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(cli, 'dist', 'pgferry.mjs');
const sfnOut = join(cli, 'dist', 'pgferry-sfn.mjs');
// pg and its dependencies are CommonJS and call require(): give the ESM bundles a real one.
const banner = {
  js: "import { createRequire as __pgferryRequire } from 'node:module';\nconst require = __pgferryRequire(import.meta.url);",
};

// aws-local-stepfunctions, which runs the workflow definition locally, in a bundle of its own that
// the CLI loads only when a command runs the workflow (status and assess do not pay for it). What it
// imports for what pgferry never asks of it is left out: the Lambda client and the Cognito
// credentials (every Task state has a local handler) and asl-validator (the definition is validated
// by the tests, not on every command: noValidate). Loading them was about 0.4 s of CPU per command.
const unused = {
  '@aws-sdk/client-lambda':
    "const no = () => { throw new Error('pgferry runs every task state in-process: no Lambda client'); };\nexport class LambdaClient { constructor() { no(); } }\nexport class InvokeCommand { constructor() { no(); } }",
  '@aws-sdk/credential-providers':
    "export function fromCognitoIdentityPool() { throw new Error('pgferry invokes no Lambda: no credentials'); }",
  'asl-validator':
    "export default function aslValidator() { throw new Error('the workflow definition is validated by the tests (noValidate)'); }",
};
const sfnTmp = `${sfnOut}.${process.pid}.tmp`;
await build({
  stdin: { contents: "export * from 'aws-local-stepfunctions';", resolveDir: cli, loader: 'js' },
  outfile: sfnTmp,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  plugins: [
    {
      name: 'unused',
      setup(b) {
        b.onResolve({ filter: /^(@aws-sdk\/client-lambda|@aws-sdk\/credential-providers|asl-validator)$/ }, (a) => ({
          path: a.path,
          namespace: 'unused',
        }));
        b.onLoad({ filter: /.*/, namespace: 'unused' }, (a) => ({ contents: unused[a.path], loader: 'js' }));
      },
    },
  ],
  banner,
  logLevel: 'warning',
});

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
  external: ['pg-native', '@pgferry/aws', '@aws-sdk/*'],
  plugins: [
    {
      // pg asks whether it runs in a Cloudflare Worker when it loads, by touching the global
      // `Response`, which makes Node load its whole fetch implementation (undici): ~0.2 s of CPU on
      // every command. The CLI runs on Node only.
      name: 'pg-node-only',
      setup(b) {
        b.onLoad({ filter: /[\\/]pg[\\/]lib[\\/]stream\.js$/ }, (a) => {
          const source = readFileSync(a.path, 'utf8');
          const patched = source.replace("typeof Response === 'function'", 'false');
          if (patched === source) console.warn(`build: ${a.path} no longer has the Cloudflare check; left as it is`);
          return { contents: patched, loader: 'js' };
        });
      },
    },
    {
      // The workflow runner's import of aws-local-stepfunctions loads the bundle built above.
      name: 'sfn',
      setup(b) {
        b.onResolve({ filter: /^aws-local-stepfunctions$/ }, () => ({ path: './pgferry-sfn.mjs', external: true }));
      },
    },
  ],
  banner,
  logLevel: 'warning',
});
// Renames, so that a CLI starting meanwhile never imports half a file (the one it imports last, last).
renameSync(sfnTmp, sfnOut);
renameSync(tmp, out);
