/**
 * One contract for every MigrationStore: the file store (a temp dir) and the DynamoDB store (on
 * DynamoDB Local, started once for this file). Each case runs against both; what only one of them
 * can show (a lease's renewal, the size of DynamoDB items, a token taken by other processes) follows.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, GetCommand, PutCommand, ScanCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CHUNK_BYTES,
  DYNAMO_ITEM_LIMIT_BYTES,
  DynamoMigrationStore,
  type DynamoStoreOptions,
  type SecretsVault,
} from '../packages/aws/src/index';
import { FileMigrationStore } from '../packages/cli/src/store';
import {
  LAG_SERIES,
  type LagSample,
  lagBucket,
  type MigrationSecrets,
  type MigrationState,
  type MigrationStore,
  parseMigrationPlan,
  peakOfBucket,
  StateConflictError,
  type VerifyTableResult,
} from '../packages/core/src/index';
import { dynamoItemSize, type LocalDynamo, startDynamoLocal } from './harness/dynamodb';
import { samplePlan } from './harness/plan';

type FullStore = Required<MigrationStore>;

const PASSWORD = 'hunter2-s3cret';
const SECRETS: MigrationSecrets = {
  sourceUrl: `postgres://app:${PASSWORD}@source.example:5432/shop`,
  targetUrl: `postgres://app:${PASSWORD}@target.example:5432/shop`,
};

const PLAN = samplePlan;

let seq = 0;
function newId(): string {
  seq++;
  return `m${process.pid % 10000}_${seq}`;
}

function migration(id: string, createdAt = new Date().toISOString()): MigrationState {
  return {
    id,
    version: 0,
    createdAt,
    updatedAt: createdAt,
    status: 'running',
    phase: 'assess',
    config: {
      id,
      sourceUrl: 'postgres://app:***@source.example:5432/shop',
      targetUrl: 'postgres://app:***@target.example:5432/shop',
    } as MigrationState['config'],
    phases: { assess: { startedAt: createdAt } },
    events: [{ at: createdAt, message: 'migration created' }],
  };
}

/** Two hours of lag samples 20 s apart, with values that differ within each minute. */
function twoHoursOfLag(): LagSample[] {
  const t0 = Date.parse('2026-12-06T06:00:03.000Z');
  return Array.from({ length: 2 * 180 }, (_, i) => ({
    at: new Date(t0 + i * 20_000).toISOString(),
    bytes: (i * 7919) % 100_000,
    ms: (i * 104_729) % 5000,
    appliedBps: i,
  }));
}

/** Secrets kept in memory, as the Secrets Manager vault keeps them in AWS. */
class MemoryVault implements SecretsVault {
  readonly kept = new Map<string, MigrationSecrets>();
  async resolve(m: MigrationState) {
    const s = this.kept.get(m.id);
    if (!s) throw new Error(`no secrets for ${m.id}`);
    return s;
  }
  async store(id: string, secrets: MigrationSecrets) {
    this.kept.set(id, secrets);
  }
  async remove(id: string) {
    this.kept.delete(id);
  }
}

interface Subject {
  store: FullStore;
  /** Another store on the same data, as another process opens it (nothing remembered from this one). */
  fresh(): FullStore;
  /** Everything the store wrote outside its secret store, as text. */
  dump(): Promise<string>;
  /** Damage a stored migration the way a hand edit or a bad restore would. */
  corrupt(id: string): Promise<void>;
  /** Leave a claim on `id` whose holder is gone (a dead process; a lease nobody renewed). */
  abandonClaim(id: string): Promise<void>;
  /** Replace a stored plan's content by hand (an edit that skipped `pgferry plan put`). */
  editPlan(name: string, value: unknown): Promise<void>;
}

let dynamo: LocalDynamo;
let dir: string;

beforeAll(async () => {
  dynamo = await startDynamoLocal();
  dir = await mkdtemp(join(tmpdir(), 'pgferry-store-'));
});

afterAll(async () => {
  await dynamo?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function scanAll(table: string): Promise<Record<string, unknown>[]> {
  const items: Record<string, unknown>[] = [];
  let start: Record<string, unknown> | undefined;
  do {
    const page = await dynamo.doc.send(new ScanCommand({ TableName: table, ExclusiveStartKey: start }));
    items.push(...(page.Items ?? []));
    start = page.LastEvaluatedKey;
  } while (start);
  return items;
}

/** A pid no process has: one that just exited. */
async function deadPid(): Promise<number> {
  const child = execFile(process.execPath, ['-e', '']);
  const pid = child.pid!;
  await new Promise((r) => child.on('exit', r));
  return pid;
}

let tables = 0;
function dynamoStore(extra: Partial<DynamoStoreOptions> & { table: string }, vault = new MemoryVault()) {
  return new DynamoMigrationStore({ client: dynamo.doc, tableName: extra.table, vault, ...extra });
}

const subjects: Record<string, () => Promise<Subject>> = {
  file: async () => {
    const d = await mkdtemp(join(dir, 'f-'));
    const store = new FileMigrationStore(d) as FullStore;
    return {
      store,
      fresh: () => new FileMigrationStore(d) as FullStore,
      async dump() {
        const files = (await readdir(d)).filter((f) => !f.endsWith('.secrets.json'));
        return (await Promise.all(files.map((f) => readFile(join(d, f), 'utf8').catch(() => '')))).join('\n');
      },
      corrupt: (id) => writeFile(join(d, `${id}.json`), '{"id": "broken'),
      async abandonClaim(id) {
        const { hostname } = await import('node:os');
        await writeFile(join(d, `${id}.run`), JSON.stringify({ pid: await deadPid(), host: hostname(), since: 'x' }));
      },
      editPlan: (name, value) => writeFile(join(d, 'plans', `${name}.json`), JSON.stringify(value)),
    };
  },
  dynamodb: async () => {
    const table = await dynamo.createTable(`migrations_${++tables}`);
    const vault = new MemoryVault();
    const store = dynamoStore({ table }, vault) as FullStore;
    return {
      store,
      fresh: () => dynamoStore({ table }, vault) as FullStore,
      dump: async () => JSON.stringify(await scanAll(table)),
      async corrupt(id) {
        await dynamo.doc.send(
          new UpdateCommand({
            TableName: table,
            Key: { pk: `MIGRATION#${id}`, sk: 'STATE' },
            UpdateExpression: 'SET body = :b',
            ExpressionAttributeValues: { ':b': '{"id": "broken' },
          }),
        );
      },
      async abandonClaim(id) {
        // A holder whose last renewal was two leases ago.
        const gone = dynamoStore({ table, now: () => Date.now() - 2 * 60_000, renewEveryMs: 3_600_000 }, vault);
        await gone.claim(id);
      },
      async editPlan(name, value) {
        await dynamo.doc.send(
          new UpdateCommand({
            TableName: table,
            Key: { pk: `PLAN#${name}`, sk: 'PLAN' },
            UpdateExpression: 'SET #plan = :p',
            ExpressionAttributeNames: { '#plan': 'plan' },
            ExpressionAttributeValues: { ':p': JSON.stringify(value) },
          }),
        );
      },
    };
  },
};

describe.each(Object.keys(subjects))('MigrationStore contract: %s store', (kind) => {
  let s: Subject;
  beforeAll(async () => {
    s = await subjects[kind]!();
  });

  it('reads back what it created, and names a migration it does not have', async () => {
    const id = newId();
    const state = migration(id);
    await s.store.create(state, SECRETS);
    expect(await s.store.get(id)).toEqual(state);
    expect(await s.fresh().get(id)).toEqual(state);
    expect(await s.store.secrets(id)).toEqual(SECRETS);
    await expect(s.store.get('nosuch')).rejects.toMatchObject({ name: 'MigrationNotFoundError', field: '--id' });
    await expect(s.store.get('../etc')).rejects.toMatchObject({ name: 'InvalidInputError', field: '--id' });
  });

  it('writes with the version read, and refuses a write from a stale read', async () => {
    const id = newId();
    await s.store.create(migration(id), SECRETS);
    const read = await s.store.get(id);
    const written = await s.store.put({ ...read, phase: 'prepare-schema' });
    expect(written.version).toBe(read.version + 1);
    expect(await s.store.get(id)).toEqual(written);
    await expect(s.store.put({ ...read, phase: 'bulk-load' })).rejects.toMatchObject({
      name: 'StateConflictError',
      message: expect.stringContaining(`version ${written.version}, expected ${read.version}`),
    });
    expect((await s.store.get(id)).phase).toBe('prepare-schema');
    await expect(s.store.put(migration('nosuch'))).rejects.toMatchObject({ name: 'MigrationNotFoundError' });
  });

  it('lets exactly one of several writers from the same read win', async () => {
    const id = newId();
    await s.store.create(migration(id), SECRETS);
    const read = await s.store.get(id);
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) =>
        s.store.put({ ...read, events: [...read.events, { at: read.createdAt, message: `writer ${i}` }] }),
      ),
    );
    const won = results.filter((r) => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    for (const r of results) if (r.status === 'rejected') expect((r.reason as Error).name).toBe('StateConflictError');
    const stored = await s.store.get(id);
    expect(stored.version).toBe(read.version + 1);
    expect(stored).toEqual((won[0] as PromiseFulfilledResult<MigrationState>).value);
  });

  it('refuses to create a migration twice and keeps the first one and its secrets', async () => {
    const id = newId();
    await s.store.create(migration(id), SECRETS);
    const other = { sourceUrl: 'postgres://x:y@elsewhere/db', targetUrl: 'postgres://x:y@elsewhere/db2' };
    await expect(s.store.create({ ...migration(id), phase: 'cutover' }, other)).rejects.toMatchObject({
      name: 'InvalidInputError',
      field: '--id',
      message: expect.stringContaining(`migration ${id} already exists`),
    });
    expect((await s.store.get(id)).phase).toBe('assess');
    expect(await s.store.secrets(id)).toEqual(SECRETS);
  });

  it("replaces and forgets a migration's secrets, and only an existing migration's", async () => {
    const id = newId();
    await s.store.create(migration(id), SECRETS);
    const rotated = { ...SECRETS, sourceUrl: SECRETS.sourceUrl.replace(PASSWORD, 'rotated-pw') };
    await s.store.updateSecrets(id, rotated);
    expect(await s.fresh().secrets(id)).toEqual(rotated);
    await expect(s.store.updateSecrets('nosuch', rotated)).rejects.toMatchObject({ name: 'MigrationNotFoundError' });
    await s.store.removeSecrets(id);
    await expect(s.store.secrets(id)).rejects.toThrow();
    expect((await s.store.get(id)).id).toBe(id); // the state stays: status still shows the migration
  });

  it('lists its migrations in creation order and names the unreadable ones', async () => {
    const ids = [newId(), newId(), newId()];
    const base = Date.parse('2020-01-01T00:00:00Z');
    // Created out of order: the listing sorts by creation time.
    for (const [i, id] of [ids[2], ids[0], ids[1]].entries())
      await s.store.create(migration(id!, new Date(base + [2, 0, 1][i]! * 1000).toISOString()), SECRETS);
    await s.corrupt(ids[1]!);
    const listing = await s.store.list();
    const listed = listing.migrations.map((m) => m.id).filter((id) => ids.includes(id));
    expect(listed).toEqual([ids[0], ids[2]]);
    expect(listing.unreadable).toEqual([{ id: ids[1], problem: expect.stringContaining('unreadable') }]);
    await expect(s.store.get(ids[1]!)).rejects.toMatchObject({ name: 'StateUnreadableError', migrationId: ids[1] });
  });

  it('gives a migration to one claimant at a time, and takes over a claim whose holder is gone', async () => {
    const id = newId();
    await s.store.create(migration(id), SECRETS);
    const release = await s.store.claim(id);
    const refused = await s.store.claim(id).catch((e: Error) => e);
    // A conflict still (exit 7), named for what it is: the state machine retries it (busyRetry).
    expect(refused).toBeInstanceOf(StateConflictError);
    expect(refused).toMatchObject({
      name: 'MigrationBusyError',
      field: '--id',
      message: expect.stringContaining(`migration ${id} is being worked on by another pgferry process`),
    });
    await release();
    const again = await s.store.claim(id);
    await again();

    await s.abandonClaim(id);
    const takenOver = await s.store.claim(id);
    await expect(s.store.claim(id)).rejects.toMatchObject({ name: 'MigrationBusyError' });
    await takenOver();
  });

  it('finds a migration by its correlation keys, and keeps a key for the migration that holds it', async () => {
    const [a, b, c] = [newId(), newId(), newId()];
    for (const id of [a, b, c]) await s.store.create(migration(id), SECRETS);
    await s.store.correlate('RDS#pgferry-target-1', a);
    await s.store.correlate('RDS#pgferry-target-1', a); // a re-run converges
    await s.store.correlate('S3#dumps/a/x y.dump', a);
    await s.store.correlate('DMS#task-9', b);
    expect(await s.store.findCorrelation('RDS#pgferry-target-1')).toBe(a);
    expect(await s.store.findCorrelation('S3#dumps/a/x y.dump')).toBe(a);
    expect(await s.store.findCorrelation('DMS#task-9')).toBe(b);
    expect(await s.store.findCorrelation('RDS#unknown')).toBeUndefined();

    await expect(s.store.correlate('RDS#pgferry-target-1', b)).rejects.toMatchObject({
      name: 'StateConflictError',
      message: expect.stringContaining(`belongs to migration ${a}`),
    });
    // Once a is over, its target instance may serve another migration.
    const done = await s.store.get(a);
    await s.store.put({ ...done, status: 'cleaned-up' });
    await s.store.correlate('RDS#pgferry-target-1', c);
    expect(await s.store.findCorrelation('RDS#pgferry-target-1')).toBe(c);

    await expect(s.store.correlate('EC2#i-1', a)).rejects.toMatchObject({
      name: 'InvalidInputError',
      field: 'correlation key',
    });
    await expect(s.store.findCorrelation('nohash')).rejects.toMatchObject({ name: 'InvalidInputError' });
    await expect(s.store.correlate('RDS#x', 'nosuch')).rejects.toMatchObject({ name: 'MigrationNotFoundError' });
  });

  it('hands a task token to exactly one of many concurrent takers', async () => {
    const id = newId();
    await s.store.create(migration(id), SECRETS);
    expect(await s.store.takeTaskToken(id, 'provisionTarget')).toBeUndefined();
    await s.store.putTaskToken(id, 'provisionTarget', 'token-1');
    await s.store.putTaskToken(id, 'bulkLoad', 'token-2');
    const taken = await Promise.all(Array.from({ length: 8 }, () => s.store.takeTaskToken(id, 'provisionTarget')));
    expect(taken.filter((t) => t !== undefined)).toEqual(['token-1']);
    expect(await s.store.takeTaskToken(id, 'provisionTarget')).toBeUndefined();
    // Another step's token is its own.
    expect(await s.store.takeTaskToken(id, 'bulkLoad')).toBe('token-2');
    // A step waiting again files a new token.
    await s.store.putTaskToken(id, 'provisionTarget', 'token-3');
    expect(await s.store.takeTaskToken(id, 'provisionTarget')).toBe('token-3');

    await expect(s.store.putTaskToken('nosuch', 'bulkLoad', 't')).rejects.toMatchObject({
      name: 'MigrationNotFoundError',
    });
    await expect(s.store.putTaskToken(id, 'bulk load/../x', 't')).rejects.toMatchObject({ field: 'step' });
    await expect(s.store.putTaskToken(id, 'bulkLoad', '')).rejects.toMatchObject({ field: 'token' });
  });

  it('stores and reads back a migration of 5,000 tables with long names, lag samples, events and verify results', async () => {
    const id = newId();
    await s.store.create(migration(id), SECRETS);
    const big = { ...(await s.store.get(id)), ...largeParts() };
    const written = await s.store.put(big);
    expect(await s.fresh().get(id)).toEqual(written);
    expect(written.tables).toHaveLength(5000);
    // A later small change keeps every large field as it was.
    const again = await s.store.put({ ...written, phase: 'catch-up' });
    expect(await s.store.get(id)).toEqual(again);
    expect(await s.fresh().get(id)).toEqual(again);
    expect((await s.fresh().list()).migrations.find((m) => m.id === id)).toEqual(again);
  });

  it("keeps a migration's whole lag series beside its state: every sample of the last hour, one point a minute before", async () => {
    const id = newId();
    await s.store.create(migration(id), SECRETS);
    const created = await s.store.get(id);
    // Two hours of samples every 20 s, appended as "Check lag" writes them, a few at a time.
    const samples = twoHoursOfLag();
    for (let i = 0; i < samples.length; i += 6) await s.store.appendLag(id, samples.slice(i, i + 6));
    const series = await s.fresh().lagSeries(id);
    const newest = samples.at(-1)!.at;
    const firstFull = lagBucket(new Date(Date.parse(newest) - LAG_SERIES.fullMs).toISOString());
    // The last hour whole, as written.
    expect(series.filter((p) => p.of === undefined)).toEqual(samples.filter((p) => lagBucket(p.at) >= firstFull));
    // Before it, one point per minute: that minute's peak.
    const older = [...new Set(samples.map((p) => lagBucket(p.at)).filter((b) => b < firstFull))];
    expect(older.length).toBeGreaterThan(50);
    expect(series.filter((p) => p.of !== undefined)).toEqual(
      older.map((b) => peakOfBucket(samples.filter((p) => lagBucket(p.at) === b))),
    );
    // Nothing of it is in the migration's state.
    expect(await s.fresh().get(id)).toEqual(created);
    // A minute takes so many samples at most; a migration without samples has an empty series.
    const burst = Array.from({ length: LAG_SERIES.maxPerBucket + 10 }, (_, i) => ({
      at: new Date(Date.parse('2026-12-07T00:00:00.000Z') + i * 50).toISOString(),
      bytes: i,
      ms: 1,
    }));
    const other = newId();
    await s.store.create(migration(other), SECRETS);
    expect(await s.store.lagSeries(other)).toEqual([]);
    await s.store.appendLag(other, burst.slice(0, 100));
    await s.store.appendLag(other, burst.slice(100));
    expect(await s.fresh().lagSeries(other)).toEqual(burst.slice(0, LAG_SERIES.maxPerBucket));
  });

  it('stores named plans validated, reads one back or undefined, lists them by name, and replaces one by name', async () => {
    const name = `shop-${kind}`;
    expect(await s.store.getPlan(name)).toBeUndefined();
    const stored = await s.store.putPlan(PLAN(name));
    expect(stored).toEqual(parseMigrationPlan(PLAN(name)));
    await s.store.putPlan(PLAN(`another-${kind}`));
    expect(await s.fresh().getPlan(name)).toEqual(stored);
    const names = (await s.fresh().listPlans()).map((p) => p.name);
    expect(names).toEqual([...names].sort());
    expect(names).toEqual(expect.arrayContaining([name, `another-${kind}`]));
    // The same name again replaces it.
    const changed = await s.store.putPlan({ ...PLAN(name), cutover: { policy: 'auto' } });
    expect((await s.fresh().getPlan(name))?.cutover).toEqual({ policy: 'auto' });
    expect(changed.cutover.policy).toBe('auto');
    expect((await s.fresh().listPlans()).filter((p) => p.name === name)).toHaveLength(1);
    // A plan is never listed as a migration.
    const listing = await s.fresh().list();
    expect([...listing.migrations.map((m) => m.id), ...listing.unreadable.map((u) => u.id)]).not.toEqual(
      expect.arrayContaining([expect.stringMatching(/shop|another|plan/i)]),
    );
  });

  it('refuses a bad plan on put, and one edited by hand on read, naming the plan and the field', async () => {
    const name = `bad-${kind}`;
    await expect(s.store.putPlan({ ...PLAN(name), approvers: { users: ['alice'] } } as never)).rejects.toMatchObject({
      name: 'InvalidInputError',
      field: 'approvers.users.0',
    });
    expect(await s.store.getPlan(name)).toBeUndefined();
    await expect(s.store.getPlan('../etc')).rejects.toMatchObject({ name: 'InvalidInputError', field: 'plan' });
    await s.store.putPlan(PLAN(name));
    await s.editPlan(name, { ...PLAN(name), approvers: { users: ['alice'] } });
    const read = s.fresh().getPlan(name);
    await expect(read).rejects.toMatchObject({ name: 'InvalidInputError', field: 'plan.approvers.users.0' });
    await expect(s.fresh().getPlan(name)).rejects.toThrow(new RegExp(`plan ${name} .*approvers\\.users\\.0`));
    await expect(s.fresh().listPlans()).rejects.toMatchObject({ field: 'plan.approvers.users.0' });
    await s.editPlan(name, { ...PLAN(name), name: 'other' });
    await expect(s.fresh().getPlan(name)).rejects.toMatchObject({ field: 'plan.name' });
  });

  it('never stores a password: a state holding one is refused, one in a later message is redacted', async () => {
    const id = newId();
    const leaky = migration(id);
    leaky.config.sourceUrl = SECRETS.sourceUrl;
    await expect(s.store.create(leaky, SECRETS)).rejects.toMatchObject({
      name: 'InvalidInputError',
      field: 'state.config.sourceUrl',
    });
    await expect(s.store.get(id)).rejects.toMatchObject({ name: 'MigrationNotFoundError' });

    await s.store.create(migration(id), SECRETS);
    const read = await s.store.get(id);
    const failed = {
      ...read,
      failure: { name: 'ConnectionFailedError', message: `could not reach ${SECRETS.targetUrl}` },
      events: [
        ...read.events,
        { at: read.createdAt, message: `retrying password=${PASSWORD} with ${SECRETS.sourceUrl}` },
      ],
    };
    const stored = await s.store.put(failed);
    expect(stored.failure?.message).toBe(failed.failure.message); // the caller's object is its own
    expect((await s.store.get(id)).failure?.message).toBe(
      'could not reach postgres://app:***@target.example:5432/shop',
    );
    await s.store.putTaskToken(id, 'verify', 'token-x');
    await s.store.correlate('RDS#secret-check', id);
    expect(await s.dump()).not.toContain(PASSWORD);
    expect(await s.store.secrets(id)).toEqual(SECRETS);
  });
});

/** The large fields of a migration of 5,000 tables, with names as long as PostgreSQL allows (63 bytes). */
function largeParts(): Partial<MigrationState> {
  const at = '2026-12-06T12:00:00.000Z';
  const name = (i: number) => `orders_archive_partition_${String(i).padStart(5, '0')}_${'x'.repeat(32)}`;
  const schema = `tenant_${'s'.repeat(56)}`;
  const tables = Array.from({ length: 5000 }, (_, i) => ({ schema, name: name(i) }));
  const verifyTables: VerifyTableResult[] = tables.map((t, i) => ({
    table: `"${t.schema}"."${t.name}"`,
    sourceRows: 1_000_000 + i,
    targetRows: 1_000_000 + i,
    chunks: 12,
    mismatchedRanges: [],
    outcome: 'ok',
  }));
  const verify = {
    ok: true,
    outcome: 'ok' as const,
    stage: 'after-switch' as const,
    replication: 'reverse replication',
    tables: verifyTables,
    at,
    ms: 123_456,
    sourceBytes: 9e11,
    targetBytes: 9e11,
    sourceMiBps: 210.5,
    targetMiBps: 180.25,
  };
  return {
    tables,
    rowsCopied: 5_000_000_000,
    lag: Array.from({ length: 3000 }, (_, i) => ({ at, bytes: 1024 * i, ms: i, generatedBps: 1e6, appliedBps: 1.1e6 })),
    events: Array.from({ length: 1000 }, (_, i) => ({ at, message: `copied ${schema}.${name(i)}: 1000000 rows ✓` })),
    verify,
    verifyBeforeSwitch: { ...verify, stage: 'before-switch' },
    ddlDrift: tables.slice(0, 500).map((t) => `column added on ${t.schema}.${t.name}`),
  };
}

describe('DynamoDB store on DynamoDB Local', () => {
  let table: string;
  let store: DynamoMigrationStore;
  beforeAll(async () => {
    table = await dynamo.createTable('migrations_layout');
    store = dynamoStore({ table });
  });

  it('keeps every item of a 5,000-table migration under the 400 KB limit, and leaves no replaced chunk behind', async () => {
    // DynamoDB Local enforces the limit itself: an item over it is refused, so the round trip below is a proof.
    await expect(
      dynamo.doc.send(
        new PutCommand({
          TableName: table,
          Item: { pk: 'probe', sk: 'probe', data: 'x'.repeat(DYNAMO_ITEM_LIMIT_BYTES) },
        }),
      ),
    ).rejects.toMatchObject({ name: 'ValidationException' });

    const id = newId();
    await store.create(migration(id), SECRETS);
    const written = await store.put({ ...(await store.get(id)), ...largeParts() });
    let items = await scanAll(table);
    const sizes = items.map(dynamoItemSize);
    const total = sizes.reduce((a, b) => a + b, 0);
    const largest = Math.max(...sizes);
    expect(total).toBeGreaterThan(3 * DYNAMO_ITEM_LIMIT_BYTES); // one item could never have held it
    expect(largest).toBeLessThan(DYNAMO_ITEM_LIMIT_BYTES);
    expect(largest).toBeLessThanOrEqual(CHUNK_BYTES + 200);
    const state = items.find((i) => i.sk === 'STATE')!;
    expect(dynamoItemSize(state)).toBeLessThan(64 * 1024);

    // A small change rewrites the migration item only; a changed table list replaces its chunks.
    const chunkKeys = () =>
      items
        .filter((i) => String(i.sk).startsWith('PART#'))
        .map((i) => String(i.sk))
        .sort();
    const before = chunkKeys();
    const small = await store.put({ ...written, status: 'awaiting-cutover' });
    items = await scanAll(table);
    expect(chunkKeys()).toEqual(before);
    await store.put({ ...small, tables: small.tables!.slice(0, 4000) });
    items = await scanAll(table);
    const after = chunkKeys();
    const tableChunks = (keys: string[]) =>
      new Set(keys.filter((k) => k.startsWith('PART#tables#')).map((k) => k.split('#')[2]));
    expect(tableChunks(after).size).toBe(1);
    expect([...tableChunks(after)][0]).not.toBe([...tableChunks(before)][0]);
    expect(after.filter((k) => !k.startsWith('PART#tables#'))).toEqual(
      before.filter((k) => !k.startsWith('PART#tables#')),
    );
    expect((await dynamoStore({ table }).get(id)).tables).toHaveLength(4000);
  });

  it('keeps the lag series in items of its own, each under the limit: the migration item does not grow', async () => {
    const id = newId();
    await store.create(migration(id), SECRETS);
    const stateItem = async () => (await scanAll(table)).find((i) => i.pk === `MIGRATION#${id}` && i.sk === 'STATE')!;
    const before = dynamoItemSize(await stateItem());
    const samples = twoHoursOfLag();
    for (let i = 0; i < samples.length; i += 30) await store.appendLag(id, samples.slice(i, i + 30));
    const items = (await scanAll(table)).filter((i) => i.pk === `MIGRATION#${id}`);
    expect(dynamoItemSize(await stateItem())).toBe(before);
    const lag = items.filter((i) => String(i.sk).startsWith('LAG#'));
    // A raw item per minute of the last hour (and the minute it started in), one per minute thinned before.
    expect(lag.filter((i) => String(i.sk).startsWith('LAG#RAW#')).length).toBeLessThanOrEqual(61);
    expect(lag.filter((i) => String(i.sk).startsWith('LAG#MIN#')).length).toBeGreaterThan(50);
    // The fullest minute DynamoDB would hold, with the widest samples: far under the limit.
    const wide = {
      at: '2026-12-07T00:00:00.000Z',
      bytes: 2 ** 52,
      ms: 2 ** 40,
      generatedBps: 2 ** 40,
      appliedBps: 2 ** 40,
    };
    const full = { pk: 'x', sk: 'LAG#RAW#2026-12-07T00:00', samples: Array(LAG_SERIES.maxPerBucket).fill(wide) };
    expect(dynamoItemSize(full)).toBeLessThan(DYNAMO_ITEM_LIMIT_BYTES / 2);
  });

  it('sweeps the chunks no migration item names once they are older than any write in progress', async () => {
    const id = newId();
    await store.create(migration(id), SECRETS);
    const written = await store.put({ ...(await store.get(id)), tables: largeParts().tables });
    // What a writer that died between its chunks and its migration item leaves.
    const orphan = {
      pk: `MIGRATION#${id}`,
      sk: 'PART#tables#0123456789abcdef#00000',
      data: '[',
      writtenAt: Date.now(),
    };
    await dynamo.doc.send(new PutCommand({ TableName: table, Item: orphan }));
    const chunks = async () =>
      (await scanAll(table)).filter((i) => i.pk === `MIGRATION#${id}` && String(i.sk).startsWith('PART#')).length;
    const before = await chunks();
    expect(await store.sweep(id)).toBe(0); // young: it may be a write about to land
    const hoursLater = dynamoStore({ table, now: () => Date.now() + 2 * 3_600_000 });
    expect(await hoursLater.sweep(id)).toBe(1);
    expect(await chunks()).toBe(before - 1);
    expect(await dynamoStore({ table }).get(id)).toEqual(written);
  });

  it('renews a held lease, so that a holder working longer than one lease keeps it', async () => {
    const id = newId();
    await store.create(migration(id), SECRETS);
    const holder = dynamoStore({ table, leaseMs: 1500, renewEveryMs: 100 });
    const release = await holder.claim(id);
    const lease = async () =>
      (await dynamo.doc.send(new GetCommand({ TableName: table, Key: { pk: `MIGRATION#${id}`, sk: 'LEASE' } }))).Item;
    const first = Number((await lease())!.leaseUntil);
    // Until the lease was renewed past where it first ran out: longer than one lease, held all along.
    while (Number((await lease())!.leaseUntil) < first + 1500) await new Promise((r) => setTimeout(r, 100));
    await expect(store.claim(id)).rejects.toMatchObject({
      name: 'MigrationBusyError',
      message: expect.stringMatching(new RegExp(`\\(pid ${process.pid} on .+, since .+, lease until 20\\d\\d-`)),
    });
    expect((await lease())!.expiresAt).toBeGreaterThan(Date.now() / 1000);
    await release();
    expect(await lease()).toBeUndefined();
    // A task's lease names the task and where its logs are, as the claim gave it.
    const task = await holder.claim(id, '"Cut over" in Lambda pgferry-cutover, request r1');
    await expect(store.claim(id)).rejects.toMatchObject({
      message: expect.stringContaining('("Cut over" in Lambda pgferry-cutover, request r1, since '),
    });
    await task();
  });

  it('tells a stalled holder that its lapsed lease was taken over, and its release leaves the new holder alone', async () => {
    const id = newId();
    await store.create(migration(id), SECRETS);
    let lost: (m: string) => void = () => {};
    const told = new Promise<string>((r) => {
      lost = r;
    });
    const stalled = dynamoStore({ table, leaseMs: 1000, renewEveryMs: 50, onLeaseLost: (_id, m) => lost(m) });
    const release = await stalled.claim(id);
    // Two leases later by the clock of the next claimant: the stalled holder's lease has lapsed for it.
    const later = dynamoStore({ table, leaseMs: 1000, now: () => Date.now() + 5000 });
    const releaseLater = await later.claim(id);
    expect(await told).toContain('taken over');
    await release();
    await expect(store.claim(id)).rejects.toMatchObject({ name: 'MigrationBusyError' });
    await releaseLater();
    await (await store.claim(id))();
  });

  it('takes a write the SDK sent again, after the reply to its landing was lost, for the success it was', async () => {
    // The SDK's own retries (as deployed): a reply lost after the write landed (a 500, a reset
    // connection) sends the write again, which its own landing makes fail its condition.
    const client = new DynamoDBClient({
      endpoint: dynamo.endpoint,
      region: 'local',
      credentials: { accessKeyId: 'fake', secretAccessKey: 'fake' },
      maxAttempts: 3,
    });
    let lose = 0;
    client.middlewareStack.add(
      (next, context) => async (args) => {
        const out = await next(args);
        if (context.commandName === 'PutItemCommand' && lose > 0) {
          lose--;
          throw Object.assign(new Error('the reply was lost'), {
            name: 'InternalServerError',
            $fault: 'server',
            $metadata: { httpStatusCode: 500 },
          });
        }
        return out;
      },
      { step: 'deserialize', name: 'loseOneReply' },
    );
    const flaky = dynamoStore({ table, client: DynamoDBDocumentClient.from(client) });
    const id = newId();
    try {
      lose = 1;
      await flaky.create(migration(id), SECRETS);
      lose = 1;
      // (With its chunks: a write that took its refusal for a lost race removed them, and the
      // migration item it had stored named chunks that were gone.)
      const written = await flaky.put({ ...(await flaky.get(id)), ...largeParts() });
      expect(lose).toBe(0);
      expect(await dynamoStore({ table }).get(id)).toEqual(written);
      lose = 1;
      const release = await flaky.claim(id);
      await expect(store.claim(id)).rejects.toMatchObject({ name: 'MigrationBusyError' });
      await release();
    } finally {
      client.destroy();
    }
  });

  it('keeps no password anywhere in the table, and the secrets only where the vault keeps them', async () => {
    const vault = new MemoryVault();
    const own = dynamoStore({ table: await dynamo.createTable('migrations_vault') }, vault);
    const id = newId();
    await own.create(migration(id), SECRETS);
    expect(vault.kept.get(id)).toEqual(SECRETS);
    await own.removeSecrets(id);
    await expect(own.secrets(id)).rejects.toThrow(`no secrets for ${id}`);
    await own.updateSecrets(id, SECRETS);
    expect(await own.secrets(id)).toEqual(SECRETS);
  });
});

describe('file store across processes', () => {
  it('names a lock left behind under a pid that lives on, and takes it over once it is older than any update', async () => {
    const d = await mkdtemp(join(dir, 'lock-'));
    const store = new FileMigrationStore(d);
    const id = newId();
    await store.create(migration(id), SECRETS);
    // Left by a process that is gone, its pid now another's (1: init, always alive).
    const lock = join(d, `${id}.lock`);
    await writeFile(lock, '1');
    const state = await store.get(id);
    await expect(store.put(state)).rejects.toMatchObject({
      name: 'StateConflictError',
      message: expect.stringContaining(`the state is locked by ${lock} (process 1)`),
      hint: expect.stringContaining('remove the file'),
    });
    const old = new Date(Date.now() - 120_000);
    await utimes(lock, old, old);
    expect((await store.put(state)).version).toBe(state.version + 1);
  });

  it('hands each task token to exactly one of several pgferry processes racing for them', async () => {
    const d = await mkdtemp(join(dir, 'procs-'));
    const store = new FileMigrationStore(d);
    const id = newId();
    await store.create(migration(id), SECRETS);
    const steps = Array.from({ length: 25 }, (_, i) => `step${i}`);
    for (const step of steps) await store.putTaskToken(id, step, `token-${step}`);
    const go = join(d, 'go');
    const storeModule = resolve(__dirname, '../packages/cli/src/store.ts');
    // Each process waits for the same signal, then takes every step's token as fast as it can.
    const script = `import { existsSync } from 'node:fs';
      import { FileMigrationStore } from ${JSON.stringify(storeModule)};
      const store = new FileMigrationStore(${JSON.stringify(d)});
      process.stdout.write('ready\\n');
      while (!existsSync(${JSON.stringify(go)})) await new Promise((r) => setTimeout(r, 2));
      const taken = [];
      for (const step of ${JSON.stringify(steps)}) {
        const t = await store.takeTaskToken(${JSON.stringify(id)}, step);
        if (t) taken.push(t);
      }
      process.stdout.write(JSON.stringify(taken));`;
    const children = Array.from({ length: 3 }, () => {
      const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        cwd: resolve(__dirname, '..'),
      });
      let out = '';
      child.stdout.on('data', (c) => {
        out += c;
      });
      const ready = new Promise<void>((r) => child.stdout.once('data', () => r()));
      const done = new Promise<string>((res, rej) =>
        child.on('exit', (code) => (code === 0 ? res(out) : rej(new Error(`taker exited ${code}`)))),
      );
      return { ready, done };
    });
    await Promise.all(children.map((c) => c.ready));
    await writeFile(go, '');
    const taken = (await Promise.all(children.map((c) => c.done))).flatMap(
      (out) => JSON.parse(out.slice(out.indexOf('\n') + 1)) as string[],
    );
    expect(taken.sort()).toEqual(steps.map((s) => `token-${s}`).sort());
  });
});
