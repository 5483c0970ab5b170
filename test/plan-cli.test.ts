/**
 * `pgferry plan put|list|show` and `pgferry start`, run as the CLI runs: against the local state
 * directory's file store, and with --table against DynamoDB Local (endpoint and fake credentials
 * from the standard AWS environment, so no request can reach real AWS).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoMigrationStore } from '../packages/aws/src/index';
import type { MigrationPlanInput } from '../packages/core/src/index';
import { type LocalDynamo, startDynamoLocal } from './harness/dynamodb';
import { samplePlan } from './harness/plan';

const BIN = resolve(__dirname, '../packages/cli/bin/pgferry.mjs');

const PLAN: MigrationPlanInput = { ...samplePlan('shop-to-rds'), description: 'the shop database onto RDS' };

let dir: string;
let dynamo: LocalDynamo;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'pgferry-plan-cli-'));
  dynamo = await startDynamoLocal();
});
afterAll(async () => {
  await dynamo?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function pgferry(
  args: string[],
  options: { env?: Record<string, string>; stdin?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    const child = execFile(
      process.execPath,
      [BIN, ...args],
      { cwd: dir, timeout: 120_000, env: { ...process.env, ...options.env } },
      (err, stdout, stderr) => res({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
    child.stdin?.end(options.stdin ?? '');
  });
}

function planFile(name: string, plan: unknown): string {
  const file = join(dir, `${name}.json`);
  writeFileSync(file, JSON.stringify(plan));
  return file;
}

describe('pgferry plan on the local state directory', () => {
  it('stores a plan from a file or stdin, lists it and shows it, the file readable by its owner only', async () => {
    const stateDir = join(dir, 'state-a');
    const put = await pgferry(['plan', 'put', planFile('a', PLAN), '--state-dir', stateDir]);
    expect(put.stderr).toBe('');
    expect(put.code).toBe(0);
    expect(put.stdout).toContain('plan shop-to-rds stored');
    const stored = join(stateDir, 'plans', 'shop-to-rds.json');
    expect(statSync(stored).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(stored, 'utf8'))).toMatchObject({ name: 'shop-to-rds', strategy: 'snapshot' });

    const piped = await pgferry(['plan', 'put', '-', '--state-dir', stateDir], {
      stdin: JSON.stringify({ ...PLAN, name: 'billing', cutover: { policy: 'auto' } }),
    });
    expect(piped.code).toBe(0);

    const list = await pgferry(['plan', 'list', '--state-dir', stateDir]);
    expect(list.code).toBe(0);
    const lines = list.stdout.trim().split('\n');
    expect(lines.map((l) => l.split(/\s+/)[0])).toEqual(['billing', 'shop-to-rds']);
    expect(lines[1]).toContain('existing shop-17');

    const show = await pgferry(['plan', 'show', 'shop-to-rds', '--state-dir', stateDir, '--json']);
    expect(show.code).toBe(0);
    expect(JSON.parse(show.stdout.trim().split('\n').at(-1)!).result).toMatchObject({
      name: 'shop-to-rds',
      target: { kind: 'existing', instanceIdentifier: 'shop-17' },
    });
  });

  it('refuses a bad plan naming each field, an unknown plan naming `pgferry plan list`, with exit 2 and nothing stored', async () => {
    const stateDir = join(dir, 'state-b');
    const bad = await pgferry([
      'plan',
      'put',
      planFile('bad', {
        ...PLAN,
        approvers: { users: ['alice'] },
        source: { secretArn: PLAN.source.secretArn, password: 'x' },
      }),
      '--state-dir',
      stateDir,
    ]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('plan.approvers.users.0: ');
    expect(bad.stderr).toContain('plan.source.password: ');
    expect(bad.stderr).not.toContain('"x"');
    const notJson = await pgferry(['plan', 'put', '-', '--state-dir', stateDir], { stdin: '{"name": ' });
    expect(notJson.code).toBe(2);
    expect(notJson.stderr).toContain('the plan on stdin is not JSON (it ends too early)');
    // The parser's excerpt of the text is not echoed: it may hold a secret pasted by mistake.
    const pasted = await pgferry(['plan', 'put', '-', '--state-dir', stateDir], {
      stdin: '{"name": "shop",\n "pw": hunter2sec}',
    });
    expect(pasted.code).toBe(2);
    expect(pasted.stderr).toContain('is not JSON (line 2, column 8)');
    expect(pasted.stderr).not.toContain('hunter2');
    const list = await pgferry(['plan', 'list', '--state-dir', stateDir]);
    expect(list.stdout).toContain('no plans');
    const unknown = await pgferry(['plan', 'show', 'nosuch', '--state-dir', stateDir]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('no plan named nosuch');
    expect(unknown.stderr).toContain('pgferry plan list');
    const sub = await pgferry(['plan', 'remove', 'x', '--state-dir', stateDir]);
    expect(sub.code).toBe(2);
    expect(sub.stderr).toContain('unknown plan subcommand "remove"');
    const help = await pgferry(['plan', '--help']);
    expect(help.stdout).toContain('pgferry plan put FILE|-');
    expect((await pgferry(['--help'])).stdout).toMatch(/start +Start a migration in AWS from a stored plan/);
  });
});

describe('pgferry plan and start on the DynamoDB table (DynamoDB Local)', () => {
  const env = () => ({
    AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
    // DynamoDB Local keeps one database per access key and region: the harness's.
    AWS_REGION: 'local',
    AWS_ACCESS_KEY_ID: 'fake',
    AWS_SECRET_ACCESS_KEY: 'fake',
    AWS_PROFILE: '',
    AWS_EC2_METADATA_DISABLED: 'true',
  });

  it('stores the plan in the table, where the deployment reads it, and lists and shows it from there', async () => {
    const table = await dynamo.createTable('plans_cli');
    const put = await pgferry(['plan', 'put', planFile('d', PLAN), '--table', table], { env: env() });
    expect(put.stderr).not.toContain('error');
    expect(put.code).toBe(0);
    expect(put.stdout).toContain(`plan shop-to-rds stored in DynamoDB table ${table}`);
    const store = new DynamoMigrationStore({
      client: dynamo.doc,
      tableName: table,
      vault: { resolve: async () => ({ sourceUrl: '', targetUrl: '' }) },
    });
    expect(await store.getPlan('shop-to-rds')).toMatchObject({ name: 'shop-to-rds', description: PLAN.description });
    const list = await pgferry(['plan', 'list', '--table', table], { env: env() });
    expect(list.stdout).toContain('shop-to-rds');
    // Nothing written to the state directory.
    expect(() => statSync(join(dir, '.pgferry', 'plans'))).toThrow();
    const region = await pgferry(['plan', 'list', '--region', 'eu-west-1'], { env: env() });
    expect(region.code).toBe(2);
    expect(region.stderr).toContain('--table');
  });

  it('start names what it needs and an unknown plan, starting nothing', async () => {
    const table = await dynamo.createTable('start_cli');
    const arn = 'arn:aws:states:eu-west-1:123456789012:stateMachine:pgferry-prod';
    const noTable = await pgferry(['start', 'shop-to-rds', '--state-machine-arn', arn], { env: env() });
    expect(noTable.stderr).toContain('--table');
    expect(noTable.code).toBe(2);
    expect(noTable.stderr).toContain('--table');
    const noArn = await pgferry(['start', 'shop-to-rds', '--table', table], { env: env() });
    expect(noArn.stderr).toContain('--state-machine-arn');
    expect(noArn.code).toBe(2);
    // The plan is looked up before Step Functions is called (no endpoint for it here).
    const unknown = await pgferry(['start', 'nosuch', '--table', table, '--state-machine-arn', arn], {
      env: { ...env(), AWS_ENDPOINT_URL_SFN: 'http://127.0.0.1:9' },
    });
    expect(unknown.stderr).toContain('no plan named nosuch');
    expect(unknown.stderr).toContain('pgferry plan list');
    expect(unknown.code).toBe(2);
  });
});
