/**
 * `pgferry status ID`: phases with start, end and duration, lag, write gap, verification and what to
 * do next; `--watch` following a real migration through a pipe; `--table` reading a deployed stack's
 * DynamoDB table (DynamoDB Local).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoMigrationStore, type SecretsVault } from '../packages/aws/src/index';
import { writeExecution } from '../packages/cli/src/local-runtime';
import { FileMigrationStore } from '../packages/cli/src/store';
import {
  deployedTableName,
  type MigrationSecrets,
  type MigrationState,
  objectNames,
  type PgferryEvent,
  workflowInput,
} from '../packages/core/src/index';
import { runWorkflowTask } from '../packages/postgres/src/index';
import { type LocalDynamo, startDynamoLocal } from './harness/dynamodb';
import { migrationFixture, newMigration, sleep } from './harness/migration';

const fixture = migrationFixture();
const bin = fileURLToPath(new URL('../packages/cli/bin/pgferry.mjs', import.meta.url));
const PASSWORD = 'hunter2-s3cret';

function started(args: string[], env: NodeJS.ProcessEnv = process.env) {
  const child = spawn(process.execPath, [bin, ...args], { env });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c) => {
    stdout += c;
  });
  child.stderr.on('data', (c) => {
    stderr += c;
  });
  const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { child, exit, out: () => stdout, err: () => stderr };
}

/** The frames `--watch` appended on a pipe. */
const framesOf = (out: string) => out.split(/^--- \d{4}-\d\d-\d\dT[\d:.]+Z$/m).slice(1);

function migration(id: string, at = new Date().toISOString()): MigrationState {
  return {
    id,
    version: 0,
    createdAt: at,
    updatedAt: at,
    status: 'running',
    phase: 'catch-up',
    config: {
      id,
      sourceUrl: 'postgres://app:***@source.example:5432/shop',
      targetUrl: 'postgres://app:***@target.example:5432/shop',
      strategy: 'snapshot',
      jobs: 4,
      cutover: 'manual',
    } as MigrationState['config'],
    phases: {
      assess: { startedAt: '2026-12-06T10:00:00.000Z', endedAt: '2026-12-06T10:00:01.500Z', summary: 'no blockers' },
      'bulk-load': { startedAt: '2026-12-06T10:00:02.000Z', endedAt: '2026-12-06T10:01:02.000Z', summary: '6 tables' },
      'catch-up': { startedAt: '2026-12-06T10:01:03.000Z' },
    },
    lag: [{ at: '2026-12-06T10:02:00.000Z', bytes: 3 * 1024 * 1024, ms: 1250 }],
    events: [{ at, message: 'migration created' }],
  };
}

const SECRETS: MigrationSecrets = {
  sourceUrl: `postgres://app:${PASSWORD}@source.example:5432/shop`,
  targetUrl: `postgres://app:${PASSWORD}@target.example:5432/shop`,
};

describe('pgferry status', () => {
  it('--watch follows a real migration through a pipe, showing its phases change, and ends with it', async () => {
    const { pair, rt } = await fixture.setup('st_watch', 300);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    const watcher = started(['status', m.id, '--watch', '--interval', '0.2', '--state-dir', rt.stateDir]);
    // The migration runs in another process (`resume` of the one created above: it starts from the beginning).
    const migrating = started(['resume', '--id', m.id, '--state-dir', rt.stateDir]);
    expect(await migrating.exit).toBe(0);
    // It ends by itself once the migration has settled (cut over, its execution ended).
    expect(await watcher.exit).toBe(0);
    expect(watcher.err()).toBe('');
    const frames = framesOf(watcher.out());
    const phases = frames.map((f) => /^migration \S+: (\S+) \(phase: ([^)]+)\)/m.exec(f)?.slice(1, 3).join(' '));
    expect(new Set(phases).size).toBeGreaterThan(1);
    expect(phases[0]).toMatch(/^running /);
    const last = frames.at(-1) ?? '';
    expect(last).toMatch(/: cut-over \(phase: /);
    expect(last).toMatch(/Cut over\s+[\d:.]+ → [\d:.]+\s+[\d.]+ s/);
    expect(last).toMatch(/write gap: \d+ ms/);
    expect(last).toContain('verify: OK');
    expect(last).toContain(`next: the application uses the target: \`pgferry rollback --id ${m.id}\``);
    expect(last).toMatch(/Execution \(migrate, started [^)]+\): succeeded/);
  });
});

describe('pgferry status at the cutover gate', () => {
  it('shows a lag sample it takes itself, refreshed by --watch, and the last recorded one with its age when the source does not answer', async () => {
    const { pair, rt } = await fixture.setup('st_gate', 300);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    // `--cutover manual`: the execution stops at "Await cutover approval"; nothing samples the lag after that.
    const migrating = started(['resume', '--id', m.id, '--state-dir', rt.stateDir]);
    await migrating.exit;
    const store = new FileMigrationStore(rt.stateDir);
    const waiting = await store.get(m.id);
    expect(waiting.status).toBe('awaiting-cutover');
    const recordedAt = Date.parse(waiting.lag!.at(-1)!.at);
    await sleep(1100);

    const json = started(['status', m.id, '--json', '--state-dir', rt.stateDir]);
    expect(await json.exit).toBe(0);
    const { result } = JSON.parse(json.out().trim().split('\n').at(-1)!) as {
      result: { lagNow: { at: string; bytes: number } };
    };
    const { lagNow } = result;
    expect(Date.parse(lagNow.at)).toBeGreaterThan(recordedAt + 1000);
    expect(lagNow.bytes).toBeGreaterThanOrEqual(0);

    const text = started(['status', m.id, '--state-dir', rt.stateDir]);
    expect(await text.exit).toBe(0);
    expect(text.out()).toMatch(
      /^ {2}lag now: .* behind, sampled \d\d:\d\d:\d\d UTC, \d+ s ago \(taken by this status\)/m,
    );

    // --watch samples again at every frame (a pipe gets each frame that changed).
    const watcher = started(['status', m.id, '--watch', '--interval', '1.1', '--state-dir', rt.stateDir]);
    await sleep(4000);
    watcher.child.kill('SIGINT');
    expect(await watcher.exit).toBe(0);
    const sampled = framesOf(watcher.out()).map((f) => /lag now: .*, sampled (\S+ UTC)/.exec(f)?.[1]);
    expect(sampled.length).toBeGreaterThan(1);
    expect(new Set(sampled).size).toBeGreaterThan(1);

    // In AWS each approval window samples once more ("Await cutover approval" in its own Lambda, no
    // runtime session): recorded and published; with replication stopped, the gate's limits no longer
    // hold, and status says so.
    const published: PgferryEvent[] = [];
    const events = { publish: async (e: PgferryEvent[]) => void published.push(...e) };
    const before = (await store.get(m.id)).lag!.at(-1)!.at;
    await pair.target(`ALTER SUBSCRIPTION ${objectNames(m.id).subscription} DISABLE`);
    // Until its walsender is gone, the slot still reads as connected (how long that takes depends on load).
    for (let i = 0; i < 200; i++) {
      const [slot] = await pair.source('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [
        objectNames(m.id).slot,
      ]);
      if (slot && !slot.active) break;
      await sleep(50);
    }
    const wait = { since: new Date().toISOString(), windowSeconds: 600, deadlineSeconds: 3600 };
    const window = await runWorkflowTask(
      'awaitApproval',
      { migrationId: m.id, taskToken: 'token-of-window-2', approvalWait: wait },
      { store, log: () => {}, events },
    );
    expect(window.summary).toMatch(/waiting for approval; lag .*the gate's limits no longer hold: .*not connected/);
    const sampledWaiting = await store.get(m.id);
    expect(Date.parse(sampledWaiting.lag!.at(-1)!.at)).toBeGreaterThan(Date.parse(before));
    expect(sampledWaiting.approvalWait).toMatchObject({ gateOpen: false, sampledAt: sampledWaiting.lag!.at(-1)!.at });
    expect(published).toEqual([
      expect.objectContaining({
        type: 'Replication Lag Sampled',
        detail: expect.objectContaining({ gateOpen: false }),
      }),
    ]);
    expect(await store.takeTaskToken(m.id, 'awaitApproval')).toBe('token-of-window-2');
    const told = started(['status', m.id, '--offline', '--state-dir', rt.stateDir]);
    expect(await told.exit).toBe(0);
    expect(told.out()).toMatch(
      /ATTENTION: the gate's limits no longer hold while waiting for the approval: .*not connected/,
    );
    await pair.target(`ALTER SUBSCRIPTION ${objectNames(m.id).subscription} ENABLE`);

    // The source does not answer: the last recorded sample, with its time and age, and why.
    const secrets = await store.secrets(m.id);
    await store.updateSecrets(m.id, { ...secrets, sourceUrl: 'postgres://app@127.0.0.1:1/gone' });
    const blind = started(['status', m.id, '--state-dir', rt.stateDir]);
    expect(await blind.exit).toBe(0);
    expect(blind.out()).toMatch(/^ {2}lag \(last recorded\): .* behind, sampled \d\d:\d\d:\d\d UTC, \d+ s ago/m);
    expect(blind.out()).toContain('(no live sample: the source did not answer');
    await store.updateSecrets(m.id, secrets);

    // A window whose sample fails for another reason than a lost connection (here: the servers refuse
    // the catalog read, as a revoked grant would) goes on waiting with its token filed: a person decides
    // at the gate, nothing is rolled back.
    const refused = await runWorkflowTask(
      'awaitApproval',
      { migrationId: m.id, taskToken: 'token-of-window-3', approvalWait: wait },
      {
        store,
        log: () => {},
        events,
        session: async () => {
          throw Object.assign(new Error('permission denied for view pg_stat_replication'), { code: '42501' });
        },
      },
    );
    expect(refused.summary).toMatch(/waiting for approval; no lag sample \(permission denied/);
    expect(await store.takeTaskToken(m.id, 'awaitApproval')).toBe('token-of-window-3');

    // A window still sampling when the approval came (its token completed at once) and the cutover
    // began writes nothing over the cutover's state.
    const cutting = await store.get(m.id);
    await store.put({ ...cutting, phase: 'cutover', status: 'running' });
    await runWorkflowTask(
      'awaitApproval',
      { migrationId: m.id, taskToken: 'token-of-window-4', approvalWait: wait },
      { store, log: () => {}, events },
    );
    expect(await store.get(m.id)).toMatchObject({ phase: 'cutover', status: 'running' });
  }, 120_000);
});

describe('pgferry status when DDL on the source alone keeps the target from being a replicating copy', () => {
  it('says so instead of "caught up and replicating", names the drift with what it does and its remedy, and goes back once the target matches', async () => {
    const { pair, rt } = await fixture.setup('st_drift', 100);
    const m = await newMigration(rt, pair, { cutover: 'manual' });
    expect(await started(['resume', '--id', m.id, '--state-dir', rt.stateDir]).exit).toBe(0);
    const status = async () => {
      const run = started(['status', m.id, '--state-dir', rt.stateDir]);
      expect(await run.exit).toBe(0);
      return run.out();
    };
    const caughtUp = `next: caught up and replicating: \`pgferry cutover --id ${m.id}\``;
    expect(await status()).toContain(caughtUp);

    // An index on the source alone: the gate stays closed on it, replication goes on (said so, not "stopped").
    await pair.source('CREATE INDEX orders_note_idx ON orders (created_at)');
    const indexed = await status();
    expect(indexed).toMatch(/^next: the target is not a complete replicating copy now \(1 difference\(s\)/m);
    expect(indexed).toMatch(
      /ATTENTION: the source's schema changed and the target's did not: index public\.orders_note_idx on public\.orders exists on the source but not on the target\. The cutover gate stays closed until the two match\. Run the same DDL on the target/,
    );
    expect(indexed).not.toContain('stops replication');
    await pair.target('CREATE INDEX orders_note_idx ON orders (created_at)');

    // A column added on the source alone, and a write that uses it: the target's apply fails on it.
    await pair.source("ALTER TABLE orders ADD COLUMN note text; UPDATE orders SET note = 'gift' WHERE id = 1");
    const stopped = await status();
    expect(stopped).not.toContain('caught up and replicating');
    expect(stopped).toMatch(/^next: the target is not a complete replicating copy now \(1 difference\(s\)/m);
    expect(stopped).toMatch(
      /ATTENTION: the source's schema changed and the target's did not: column public\.orders\.note \(text\) exists on the source but not on the target\. The cutover gate stays closed until the two match; until then a write to a table with a column the target lacks \(or has of another type\) stops replication to the target/,
    );
    const json = started(['status', m.id, '--json', '--state-dir', rt.stateDir]);
    expect(await json.exit).toBe(0);
    const { result } = JSON.parse(json.out().trim().split('\n').at(-1)!) as {
      result: { live: { catalog: { drift: string[] } } };
    };
    expect(result.live.catalog.drift).toEqual([
      'column public.orders.note (text) exists on the source but not on the target',
    ]);
    // --watch reads the servers too while waiting at the gate.
    const watcher = started(['status', m.id, '--watch', '--interval', '0.5', '--state-dir', rt.stateDir]);
    await sleep(2000);
    watcher.child.kill('SIGINT');
    expect(await watcher.exit).toBe(0);
    expect(framesOf(watcher.out()).at(-1)).toMatch(/^next: the target is not a complete replicating copy now/m);

    // The same DDL on the target: the apply goes on from where it stopped, the write arrives.
    await pair.target('ALTER TABLE orders ADD COLUMN note text');
    let note: unknown;
    for (let i = 0; i < 300 && note !== 'gift'; i++) {
      note = (await pair.target('SELECT note FROM orders WHERE id = 1'))[0]?.note;
      if (note !== 'gift') await sleep(100);
    }
    expect(note).toBe('gift');
    const again = await status();
    expect(again).toContain(caughtUp);
    expect(again).not.toContain("the source's schema changed");

    // Before the load is done the target's indexes may simply not be built yet: no catalog read then.
    await pair.target('DROP INDEX orders_note_idx');
    const store = new FileMigrationStore(rt.stateDir);
    const s = await store.get(m.id);
    const { 'start-replication': _, ...loading } = s.phases;
    await store.put({ ...s, status: 'running', phase: 'bulk-load', phases: loading });
    const midLoad = started(['status', m.id, '--json', '--state-dir', rt.stateDir]);
    expect(await midLoad.exit).toBe(0);
    const read = JSON.parse(midLoad.out().trim().split('\n').at(-1)!) as { result: { live: { catalog?: unknown } } };
    expect(read.result.live.catalog).toBeUndefined();
  }, 120_000);
});

describe('pgferry status (recorded state)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pgferry-status-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('shows each phase with start, end and duration, the lag in bytes and seconds, and what to do next', async () => {
    const stateDir = join(dir, 'shown');
    await new FileMigrationStore(stateDir).create(migration('shown1'), SECRETS);
    const r = started(['status', 'shown1', '--offline', '--state-dir', stateDir]);
    expect(await r.exit).toBe(0);
    const out = r.out();
    expect(out).toMatch(/Assess source\s+10:00:00\.000 → 10:00:01\.500\s+1\.5 s {2}no blockers/);
    expect(out).toMatch(/Bulk load\s+10:00:02\.000 → 10:01:02\.000\s+60\.0 s {2}6 tables/);
    expect(out).toMatch(/Catch up\s+\(running or interrupted\) since 10:01:03\.000, [\d.]+ s so far/);
    expect(out).toContain('lag now: 3.0 MiB (3145728 bytes), 1.25 s behind');
    expect(out).toContain('next: no pgferry command is running it: `pgferry resume --id shown1`');
  });

  it('names the one command that finishes a half-done switch, never one that refuses it', async () => {
    const stateDir = join(dir, 'halfway');
    const store = new FileMigrationStore(stateDir);
    const at = '2026-12-06T10:02:00.000Z';
    // A cutover killed while switching: rollback refuses it, resume finishes it.
    await store.create({ ...migration('half1'), cutover: { freezeAt: at, switchStartedAt: at } }, SECRETS);
    const r = started(['status', 'half1', '--offline', '--state-dir', stateDir]);
    expect(await r.exit).toBe(0);
    // (It said "resume continues (or rollback)".)
    expect(r.out()).toMatch(
      /^next: a cutover stopped while switching .*`pgferry resume --id half1` finishes the switch$/m,
    );
    // A rollback killed in its write gap: only rollback finishes it.
    await store.create(
      { ...migration('half2'), status: 'cut-over', rollback: { freezeAt: at, direction: 'reverse' } },
      SECRETS,
    );
    const r2 = started(['status', 'half2', '--offline', '--state-dir', stateDir]);
    expect(await r2.exit).toBe(0);
    expect(r2.out()).toMatch(
      /^next: a rollback began at .* and did not finish: `pgferry rollback --id half2` finishes it$/m,
    );
  });

  it('says an execution left "running" by a process that is gone (kill -9) stopped, and --watch ends on it', async () => {
    const stateDir = join(dir, 'crashed');
    await new FileMigrationStore(stateDir).create(migration('crashed1'), SECRETS);
    // What a `pgferry migrate` killed with -9 leaves: its execution record still "running", no live claim.
    writeExecution(stateDir, {
      migrationId: 'crashed1',
      command: 'migrate',
      input: workflowInput({ migrationId: 'crashed1' }),
      startedAt: '2026-12-06T10:00:00.000Z',
      status: 'running',
      states: [],
    });
    const r = started(['status', 'crashed1', '--offline', '--state-dir', stateDir]);
    expect(await r.exit).toBe(0);
    expect(r.out()).toMatch(
      /Execution \(migrate, started [^)]+\): aborted .*its pgferry process stopped without finishing/,
    );
    expect(r.out()).toContain('next: no pgferry command is running it: `pgferry resume --id crashed1`');
    const w = started(['status', 'crashed1', '--watch', '--interval', '0.1', '--state-dir', stateDir]);
    expect(await w.exit).toBe(0);
  });

  it('--watch ends on Ctrl-C with exit 0, and refuses what it cannot do, naming the option', async () => {
    const stateDir = join(dir, 'watched');
    await new FileMigrationStore(stateDir).create(migration('watched1'), SECRETS);
    const r = started(['status', 'watched1', '--watch', '--interval', '0.1', '--state-dir', stateDir]);
    while (!r.out().includes('migration watched1')) {
      if (r.child.exitCode !== null) throw new Error(`status --watch exited ${r.child.exitCode}: ${r.err()}`);
      await sleep(20);
    }
    r.child.kill('SIGINT');
    expect(await r.exit).toBe(0);
    // Nothing changed: one frame on the pipe.
    expect(framesOf(r.out())).toHaveLength(1);
    for (const [args, message] of [
      [['--watch'], '--watch follows one migration: give its id'],
      [['watched1', '--interval', '0'], '--interval applies to --watch'],
      [['watched1', '--watch', '--interval', 'soon'], '--interval must be a number of seconds, at least 0.1'],
      [['watched1', '--region', 'eu-west-1'], '--region applies to the --table of a deployed stack'],
      [['watched1', '--table', 'x'], '--table "x" is not a DynamoDB table name'],
      [['watched1', '--table', 'pgferry-migrations', '--region', 'moon'], '--region "moon" is not an AWS region'],
      [['watched1', 'other1'], 'pgferry status takes one migration id'],
      [['watched1', '--stage', 'prod', '--table', 'pgferry-migrations'], 'give --stage or --table, not both'],
      [['watched1', '--stage', '9prod'], '--stage "9prod" is not an SST stage name'],
    ] as const) {
      const bad = started(['status', ...args, '--state-dir', stateDir]);
      expect(await bad.exit).toBe(2);
      expect(bad.err()).toContain(message);
    }
  });
});

describe('pgferry status --table (DynamoDB Local)', () => {
  let dynamo: LocalDynamo;
  beforeAll(async () => {
    dynamo = await startDynamoLocal();
  });
  afterAll(async () => {
    await dynamo?.stop();
  });

  it('reads the migration a deployed stack recorded, and lists the table', async () => {
    // The name `npx sst deploy --stage prod` gives the table (the stack test pins it), which --stage reads.
    const table = await dynamo.createTable(deployedTableName('prod'));
    const vault: SecretsVault = { resolve: async () => SECRETS, store: async () => {} };
    const store = new DynamoMigrationStore({ client: dynamo.doc, tableName: table, vault });
    await store.create(migration('deployed1'), SECRETS);
    await store.create({ ...migration('deployed2'), status: 'cut-over', phase: 'verify' }, SECRETS);
    // Stopped resumable by "Record failure": its hint names the local commands, which cannot act on it.
    await store.create(
      {
        ...migration('deployed3'),
        planName: 'shop-to-rds',
        failure: {
          name: 'AfterLoadFailedError',
          message: 'foreign key orders_customer_id_fkey on public.orders could not be validated on the target',
          phase: 'catch-up',
          hint: 'fix the rows it names, then `pgferry resume --id deployed3` validates it again (or `pgferry rollback --id deployed3`)',
        },
      },
      SECRETS,
    );
    // Only DynamoDB Local is reachable: its endpoint is the one the SDK is given, with fake credentials.
    const env = {
      ...process.env,
      AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
      AWS_ENDPOINT_URL_SECRETS_MANAGER: 'http://127.0.0.1:9',
      AWS_ACCESS_KEY_ID: 'fake',
      AWS_SECRET_ACCESS_KEY: 'fake',
      AWS_EC2_METADATA_DISABLED: 'true',
      // DynamoDB Local keeps a database per region and key: the harness's. No --region: the environment's.
      AWS_REGION: 'local',
    };
    const cli = (args: string[]) => {
      // The CLI as a user runs it (the bundle, which loads the AWS adapters from the checkout).
      const child: ChildProcess = spawn(process.execPath, [bin, ...args], { env });
      let out = '';
      let err = '';
      child.stdout?.on('data', (c) => {
        out += c;
      });
      child.stderr?.on('data', (c) => {
        err += c;
      });
      return new Promise<{ code: number | null; out: string; err: string }>((r) =>
        child.on('exit', (code) => r({ code, out, err })),
      );
    };
    const shown = await cli(['status', 'deployed1', '--table', table]);
    // Nothing on stderr: not the AWS SDK's warning that its 2027 releases need Node 22 either.
    expect(shown.err).toBe('');
    expect(shown.code).toBe(0);
    expect(shown.out).toContain('migration deployed1: running (phase: Catch up)');
    expect(shown.out).toMatch(/Bulk load\s+10:00:02\.000 → 10:01:02\.000\s+60\.0 s/);
    expect(shown.out).toContain('lag now: 3.0 MiB');
    expect(shown.out).not.toContain(PASSWORD);
    // Its state machine runs it: the next step is not a local command, which could not act on it.
    expect(shown.out).toMatch(
      /^next: its execution \(named deployed1\) is working on it: follow it in the Step Functions console/m,
    );
    expect(shown.out).not.toContain('pgferry resume');
    const stopped = await cli(['status', 'deployed3', '--table', table]);
    expect(stopped.code).toBe(0);
    expect(stopped.out).toMatch(
      /^next: stopped resumable, nothing undone: fix the rows it names, then `\/pgferry resume deployed3` validates it again \(or `\/pgferry abort deployed3`\)$/m,
    );
    expect(stopped.out).not.toContain('pgferry resume --id');
    // A cut-over one has settled (nothing goes on until someone acts): --watch ends, exit 0.
    const watched = await cli(['status', 'deployed2', '--stage', 'prod', '--watch', '--interval', '0.1']);
    expect(watched.code).toBe(0);
    expect(watched.out).toContain('/pgferry rollback deployed2');
    // The report of a deployed migration, from the same table.
    const html = join(await mkdtemp(join(tmpdir(), 'pgferry-report-')), 'deployed1.html');
    const report = await cli(['report', 'deployed1', '--html', html, '--stage', 'prod']);
    expect(report.err).not.toMatch(/^error/m);
    expect(report.code).toBe(0);
    expect(readFileSync(html, 'utf8')).toContain('deployed1');
    const listed = await cli(['status', '--stage', 'prod']);
    expect(listed.code).toBe(0);
    expect(listed.out).toMatch(/^deployed1 +running/m);
    const missing = await cli(['status', 'nothere1', '--table', table]);
    expect(missing.err).toContain('nothere1');
    expect(missing.code).not.toBe(0);
    // A stage never deployed (or deployed in another region): the table tried, its stage, the region, what to do.
    for (const command of [['status', 'deployed1'], ['status'], ['report', 'deployed1', '--html', html]]) {
      const nope = await cli([...command, '--stage', 'nope']);
      expect(nope.code).toBe(2);
      expect(nope.err).toContain(
        'error: DynamoDB table nope-pgferry-Migrations does not exist in region local (the table `npx sst deploy --stage nope` makes)',
      );
      expect(nope.err).toMatch(
        /^hint: deploy the stage first \(npx sst deploy --stage nope\), or check --stage and --region/m,
      );
      expect(nope.err).not.toContain('non-existent table');
    }
    const other = await cli(['status', 'deployed1', '--table', 'not-there', '--region', 'eu-west-3']);
    expect(other.code).toBe(2);
    expect(other.err).toContain('error: DynamoDB table not-there does not exist in region eu-west-3');
    expect(other.err).toMatch(/^hint: check the table's name .* and --region/m);
  });

  it("silences only the AWS SDK's Node 20 notice: any other warning still reaches stderr", async () => {
    const table = await dynamo.createTable('warnings');
    const warner = join(await mkdtemp(join(tmpdir(), 'pgferry-warn-')), 'warn.mjs');
    await writeFile(warner, "process.once('beforeExit', () => process.emitWarning('another warning'));\n");
    const env = {
      ...process.env,
      AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
      AWS_ACCESS_KEY_ID: 'fake',
      AWS_SECRET_ACCESS_KEY: 'fake',
      AWS_EC2_METADATA_DISABLED: 'true',
      AWS_REGION: 'local',
      // Another warning of the same process, emitted once the CLI has made its AWS clients.
      NODE_OPTIONS: `--import=${warner}`,
    };
    const r = started(['status', '--table', table], env);
    expect(await r.exit).toBe(0);
    expect(r.out()).toContain(`no migrations in ${table}`);
    expect(r.err()).toContain('Warning: another warning');
    expect(r.err()).not.toContain('NodeVersionSupportWarning');
  });
});
