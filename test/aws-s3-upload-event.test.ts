/**
 * The `dump` strategy through S3, driven by the object's event as in AWS: the definition's "Wait for
 * the dump upload" waits on its task token, the S3 `Object Created` event (s3rver's own notification,
 * in EventBridge's shape) reaches the same handler the stack's rule targets, and the coordinator
 * restores the dump only once that handler has confirmed it. Real PostgreSQL, real S3 API on loopback.
 */
import { CopyObjectCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHandler } from '../functions/events/dump-created';
import { awaitDumpUploadTask, dumpKey, type S3EventDeps, s3DumpStore } from '../packages/aws/src/index';
import { LocalTaskCallbacks } from '../packages/cli/src/local-callbacks';
import { readExecution } from '../packages/cli/src/local-runtime';
import { advance } from '../packages/cli/src/runner';
import { frozen, migrationFixture, newMigration, sleep, type TestRuntime } from './harness/migration';
import { type LocalS3, startS3 } from './harness/s3';

const fixture = migrationFixture();
let s3: LocalS3;
let client: S3Client;
/** The events S3 sent, held until the test lets them through to the handler. */
let held: unknown[] = [];
let deliver: ((event: unknown) => void) | undefined;

beforeAll(async () => {
  s3 = await startS3();
  client = s3.client();
  s3.onObjectCreated((event) => (deliver ? deliver(event) : held.push(event)));
});
afterAll(async () => {
  await s3?.stop();
});

const counts = (run: (q: string) => Promise<Record<string, unknown>[]>) =>
  run(
    'SELECT (SELECT count(*) FROM orders)::int AS orders, (SELECT coalesce(sum(hashtext(o::text)), 0)::bigint FROM orders o)::text AS h',
  );

/** The runtime wired as the stack wires AWS: an announcing S3 store, the upload step's task, the event's handler. */
function wire(rt: TestRuntime) {
  const deps: S3EventDeps = {
    s3: client,
    bucket: s3.bucket,
    callbacks: new LocalTaskCallbacks(rt.stateDir),
    store: rt.store,
    log: () => {},
  };
  const store = s3DumpStore({ s3: client, bucket: s3.bucket }, { partSize: 5 * 1024 * 1024, announces: true });
  // The upload begins once "Wait for the dump upload" has (a small dump is in S3 within milliseconds,
  // before the step polls the copy plan: the step then finds it there and checks it itself, and the
  // event this test holds would wait for nothing).
  let stepBegan = () => {};
  const began = new Promise<void>((resolve) => {
    stepBegan = resolve;
  });
  rt.dumpStore = {
    ...store,
    async put(migrationId, dump) {
      await began;
      return store.put(migrationId, dump);
    },
  };
  rt.awaitDumpUpload = async (input) => {
    const out = await awaitDumpUploadTask(
      { ...deps, store: deps.store as Parameters<typeof awaitDumpUploadTask>[0]['store'] },
      input,
    );
    stepBegan();
    return out;
  };
  const handler = createHandler(() => deps);
  const outcomes: unknown[] = [];
  const release = async (events: unknown[]) => {
    for (const e of events) outcomes.push(await handler(e, {} as Parameters<typeof handler>[1]));
  };
  return { outcomes, release, handler };
}

/** Resolves once the dump object exists with its digest (the upload is complete; its events are held). */
async function uploaded(key: string) {
  await expect
    .poll(
      async () =>
        (await client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key })).catch(() => undefined))?.Metadata
          ?.sha256,
      { timeout: 60_000, interval: 100 },
    )
    .toMatch(/^[0-9a-f]{64}$/);
}

describe('the dump upload step in the definition', () => {
  it('waits for the S3 event of the dump, and restores only once the event confirmed it', async () => {
    held = [];
    deliver = undefined;
    const { pair, rt } = await fixture.setup('s3event', 2000);
    const { outcomes, release } = wire(rt);
    const m = await newMigration(rt, pair, { strategy: 'dump', cutover: 'manual' });
    let finished = false;
    const running = advance(rt, m.id, { cutover: 'manual' }).finally(() => {
      finished = true;
    });
    const key = dumpKey(m.id);
    await uploaded(key);
    // The dump is in S3 and its events are held: nothing may be restored, the execution waits.
    await sleep(3000);
    expect(finished).toBe(false);
    expect((await counts(pair.target))[0]).toMatchObject({ orders: 0 });
    expect((await rt.store.get(m.id)).copyPlan?.dumpUpload).toEqual({});
    const waiting = readExecution(rt.stateDir, m.id)?.states.find((s) => s.state === 'Wait for the dump upload');
    expect(waiting?.leftAt).toBeUndefined();
    // S3's events reach the handler: the step completes, the coordinator restores, replication goes on.
    await release(held.splice(0));
    deliver = (event) => void release([event]);
    const state = await running;
    deliver = undefined;
    expect(state.status).toBe('awaiting-cutover');
    expect(outcomes).toContainEqual(expect.objectContaining({ action: 'succeeded', migrationId: m.id, key }));
    const head = await client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }));
    expect(state.copyPlan?.dumpUpload?.confirmed).toMatchObject({ key, sha256: head.Metadata?.sha256 });
    const step = readExecution(rt.stateDir, m.id)?.states.find((s) => s.state === 'Wait for the dump upload');
    expect(step?.summary).toContain(`sha256 ${head.Metadata?.sha256?.slice(0, 12)}`);
    expect(await counts(pair.target)).toEqual(await counts(pair.source));
    await pair.source('INSERT INTO orders (customer_id, amount) SELECT customer_id, 1 FROM orders LIMIT 1');
    await expect.poll(async () => counts(pair.target), { timeout: 20_000 }).toEqual(await counts(pair.source));
  });

  it('ends the load when the event finds an object that does not hold what was uploaded: no restore, no slot left', async () => {
    held = [];
    deliver = undefined;
    const { pair, rt } = await fixture.setup('s3refuse', 2000);
    const { release } = wire(rt);
    const m = await newMigration(rt, pair, { strategy: 'dump', cutover: 'manual' });
    const running = advance(rt, m.id, { cutover: 'manual' }).then(
      (s) => ({ ok: true as const, s }),
      (err: Error) => ({ ok: false as const, err }),
    );
    const key = dumpKey(m.id);
    await uploaded(key);
    // The object is replaced by one whose metadata does not describe it (as a truncated copy would be).
    await client.send(
      new CopyObjectCommand({
        Bucket: s3.bucket,
        Key: key,
        CopySource: `${s3.bucket}/${key}`,
        MetadataDirective: 'REPLACE',
        Metadata: { sha256: '0'.repeat(64), size: '12345' },
      }),
    );
    await release(held.splice(0));
    deliver = (event) => void release([event]);
    const result = await running;
    deliver = undefined;
    const error = result.ok ? undefined : result.err;
    const state = result.ok ? result.s : await rt.store.get(m.id);
    expect(state.status).not.toBe('awaiting-cutover');
    expect(error?.message ?? state.failure?.message ?? '').toMatch(/refused/);
    // The failed load was undone: nothing of the refused dump is on the target, the source is writable.
    expect(await pair.target("SELECT to_regclass('public.orders') IS NULL AS gone")).toEqual([{ gone: true }]);
    expect(await frozen(pair, 'source')).toBe(false);
    expect(await pair.source("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pgferry%'")).toEqual([]);
  });
});
