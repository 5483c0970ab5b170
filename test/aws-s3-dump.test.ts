/**
 * The S3 dump path end to end: pg_dump inside the slot's exported snapshot streamed into a real S3
 * API on loopback (s3rver), the `Object Created` event delivered to the deployed handler, the object
 * streamed back into pg_restore on the target; and every way a bad object is refused.
 */
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import {
  CopyObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createHandler } from '../functions/events/dump-created';
import {
  type ArtifactDeps,
  DUMP_UPLOAD_STEP,
  type DumpArtifact,
  DumpIntegrityError,
  dumpKey,
  openDump,
  uploadDump,
} from '../packages/aws/src/index';
import { MigrationNotFoundError, type MigrationState, type TaskCallbacks } from '../packages/core/src/index';
import {
  connect,
  createSlotWithSnapshot,
  dropSlot,
  dumpInto,
  findTool,
  restoreFrom,
} from '../packages/postgres/src/index';
import { freshPair, type Pair } from './harness/pairs';
import { type LocalS3, objectCreatedEvent, startS3 } from './harness/s3';

const MiB = 1024 * 1024;

const SCHEMA = `
  CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, note text, total numeric(12,2),
                       placed timestamptz, doc jsonb, blob bytea);
  CREATE TABLE items (order_id bigint, sku text, qty int);`;

async function fill(pair: Pair, from: number, to: number) {
  await pair.source(
    `INSERT INTO orders
       SELECT i, 'customer-' || (i % 997), md5(i::text) || md5((i * 7)::text), (i % 100000) / 100.0,
              timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
              jsonb_build_object('i', i, 'tags', jsonb_build_array('a', i % 13)), decode(md5(i::text), 'hex')
         FROM generate_series($1::bigint, $2::bigint) AS i`,
    [from, to],
  );
  await pair.source(
    "INSERT INTO items SELECT i, 'sku-' || (i % 31), (i % 5) + 1 FROM generate_series($1::bigint, $2::bigint) AS i",
    [from, to],
  );
}

/** Row count and a digest of every row, in key order: equal on both sides only if the data is. */
async function contents(run: Pair['source'], upTo = Number.MAX_SAFE_INTEGER) {
  const [o] = await run(
    "SELECT count(*)::int AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) AS h FROM orders t WHERE id <= $1",
    [upTo],
  );
  const [i] = await run(
    "SELECT count(*)::int AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY order_id), '')) AS h FROM items t WHERE order_id <= $1",
    [upTo],
  );
  return { orders: o, items: i };
}

/** Records what the handler completes; a token completes once, as Step Functions' do. */
function recordingCallbacks() {
  const done = new Set<string>();
  const calls: { kind: 'succeed' | 'fail'; token: string; payload: unknown }[] = [];
  const callbacks: TaskCallbacks = {
    async succeed(token, output) {
      calls.push({ kind: 'succeed', token, payload: output });
      if (done.has(token)) return false;
      done.add(token);
      return true;
    },
    async fail(token, error, cause) {
      calls.push({ kind: 'fail', token, payload: { error, cause } });
      if (done.has(token)) return false;
      done.add(token);
      return true;
    },
    async heartbeat() {},
  };
  return { callbacks, calls };
}

/** The store methods the handler uses, with take-once semantics. */
function tokenStore() {
  const tokens = new Map<string, string>();
  const correlations = new Map<string, string>();
  return {
    tokens,
    correlations,
    async findCorrelation(key: string) {
      return correlations.get(key);
    },
    async takeTaskToken(migrationId: string, step: string) {
      const k = `${migrationId}#${step}`;
      const token = tokens.get(k);
      tokens.delete(k);
      return token;
    },
    // No migration record here: these tests are about the token (the copy plan's record: aws-s3-upload-event.test.ts).
    async get(id: string): Promise<MigrationState> {
      throw new MigrationNotFoundError(id);
    },
    async put(state: MigrationState): Promise<MigrationState> {
      throw new MigrationNotFoundError(state.id);
    },
  };
}

let s3: LocalS3;
let client: S3Client;
let deps: ArtifactDeps;
let pair: Pair | undefined;
let counter = 0;

beforeAll(async () => {
  s3 = await startS3();
  client = s3.client();
  deps = { s3: client, bucket: s3.bucket };
});
afterAll(async () => {
  await s3?.stop();
});
afterEach(async () => {
  await pair?.drop();
  pair = undefined;
});

async function setupPair(label: string, rows: number) {
  pair = await freshPair(15, label);
  await pair.source(SCHEMA);
  await pair.target(SCHEMA);
  await fill(pair, 1, rows);
  return pair;
}

const tools = async () => ({ pgDump: await findTool('pg_dump', 15), pgRestore: await findTool('pg_restore', 15) });

/** A plain exported snapshot (the refusal tests do not need the slot's). */
async function withSnapshot<T>(p: Pair, fn: (snapshot: string) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: p.sourceUrl });
  await c.connect();
  try {
    await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    const [{ s }] = (await c.query<{ s: string }>('SELECT pg_export_snapshot() AS s')).rows as [{ s: string }];
    return await fn(s);
  } finally {
    await c.end();
  }
}

async function dumpToS3(
  p: Pair,
  id: string,
  snapshot: string,
  compress?: number,
  onProgress?: (bytes: number) => void,
): Promise<DumpArtifact> {
  const { pgDump } = await tools();
  return dumpInto(
    { pgDump, sourceUrl: p.sourceUrl, snapshot, applicationName: `pgferry:${id}:pg_dump`, compress },
    (dump) => uploadDump(deps, id, dump, { partSize: 5 * MiB, queueSize: 2, onProgress }),
  );
}

async function restoreFromS3(p: Pair, id: string, key: string, expected?: { sha256: string; size: number }) {
  const { pgRestore } = await tools();
  const { dump, artifact } = await openDump(deps, key, expected);
  return restoreFrom(
    {
      pgRestore,
      targetUrl: p.targetUrl,
      applicationName: `pgferry:${id}:pg_restore`,
      from: `s3://${deps.bucket}/${key}`,
    },
    dump,
  ).then((r) => ({ ...r, artifact }));
}

async function objectBytes(key: string): Promise<{ bytes: Buffer; metadata: Record<string, string> }> {
  const out = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
  return { bytes: Buffer.from(await out.Body!.transformToByteArray()), metadata: out.Metadata ?? {} };
}

async function keysOf(id: string) {
  const out = await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: `dumps/${id}/` }));
  return (out.Contents ?? []).map((o) => o.Key);
}

async function targetIsEmpty(p: Pair) {
  const [r] = await p.target('SELECT (SELECT count(*) FROM orders)::int + (SELECT count(*) FROM items)::int AS n');
  return r?.n === 0;
}

describe('the S3 dump path', () => {
  it('dumps inside the slot snapshot into S3, completes the upload step once on the Object Created event, and restores exactly the snapshot', async () => {
    const p = await setupPair('s3e2e', 100_000);
    const id = `s3e2e${counter++}`;
    const source = await connect(p.sourceUrl, { side: 'source', applicationName: `pgferry:${id}` });
    const slot = await createSlotWithSnapshot(source, p.sourceUrl, `pgferry_${id}`, {
      applicationName: `pgferry:${id}:slot`,
      timeoutMs: 30_000,
      log: () => {},
      major: 15,
    });
    let artifact: DumpArtifact;
    const progress: number[] = [];
    try {
      // Committed after the snapshot: in the slot, so never in the dump.
      await fill(p, 100_001, 100_500);
      artifact = await dumpToS3(p, id, slot.snapshot, undefined, (bytes) => progress.push(bytes));
    } finally {
      await slot.close();
      await dropSlot(source, `pgferry_${id}`);
      await source.end();
    }
    const key = dumpKey(id);
    expect(artifact.key).toBe(key);
    expect(artifact.size).toBeGreaterThan(5 * MiB); // several parts of the multipart upload
    expect(progress.length).toBeGreaterThan(1);
    expect(Math.max(...progress)).toBe(artifact.size);
    // The staging object is gone; the final one carries the digest and size the stream had.
    expect(await keysOf(id)).toEqual([key]);
    const head = await client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }));
    expect(head.Metadata).toMatchObject({ sha256: artifact.sha256, size: String(artifact.size), 'migration-id': id });
    expect(head.ContentLength).toBe(artifact.size);
    const { bytes } = await objectBytes(key);
    const { createHash } = await import('node:crypto');
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(artifact.sha256);

    // The event, built like S3's, through the same handler the rule targets.
    const store = tokenStore();
    store.tokens.set(`${id}#${DUMP_UPLOAD_STEP}`, 'token-upload');
    const { callbacks, calls } = recordingCallbacks();
    const logs: string[] = [];
    const handler = createHandler(() => ({
      s3: client,
      bucket: s3.bucket,
      callbacks,
      store,
      log: (m) => logs.push(m),
    }));
    const event = objectCreatedEvent({ bucket: s3.bucket, key, size: artifact.size, etag: head.ETag });
    const context = {} as Parameters<typeof handler>[1];
    expect(await handler(event, context)).toMatchObject({ action: 'succeeded', migrationId: id, key });
    expect(calls).toEqual([
      {
        kind: 'succeed',
        token: 'token-upload',
        payload: expect.objectContaining({ migrationId: id, key, sha256: artifact.sha256, size: artifact.size }),
      },
    ]);
    // Duplicate delivery and the staging object's (late) event complete nothing.
    expect(await handler(event, context)).toMatchObject({ action: 'ignored', migrationId: id });
    const staging = objectCreatedEvent(
      { bucket: s3.bucket, key: `${key}.partial`, size: artifact.size },
      'CompleteMultipartUpload',
    );
    expect(await handler(staging, context)).toMatchObject({ action: 'ignored' });
    expect(calls).toHaveLength(1);

    const restored = await restoreFromS3(p, id, key, artifact);
    expect(restored.bytes).toBe(artifact.size);
    const expected = await contents(p.source, 100_000);
    expect(expected.orders?.n).toBe(100_000);
    expect(await contents(p.target)).toEqual(expected);
  });

  it('aborts the upload when pg_dump fails: no object, so no event', async () => {
    const p = await setupPair('s3fail', 10);
    const id = `s3fail${counter++}`;
    const err = await dumpToS3(p, id, '00000003-0000001B-1').catch((e: unknown) => e);
    expect(err).toMatchObject({
      name: 'BulkLoadFailedError',
      message: expect.stringContaining('pg_dump --snapshot failed'),
    });
    expect(await keysOf(id)).toEqual([]);
  });

  describe('refuses a bad object, naming it, and restores nothing', () => {
    async function uploaded(label: string, compress?: number) {
      const p = await setupPair(label, 20_000);
      const id = `${label}${counter++}`;
      const artifact = await withSnapshot(p, (snapshot) => dumpToS3(p, id, snapshot, compress));
      return { p, id, artifact, key: artifact.key };
    }
    const where = (key: string) => `s3://${s3.bucket}/${key}`;

    it('a corrupted object (one byte of row data changed, pg_restore would take it)', async () => {
      const { p, id, key } = await uploaded('s3corrupt', 0);
      const { bytes, metadata } = await objectBytes(key);
      // Uncompressed, a changed character of a row is valid data to pg_restore: only the digest tells.
      const at = bytes.indexOf('customer-42\t');
      expect(at).toBeGreaterThan(0);
      bytes[at + 9] = '7'.charCodeAt(0);
      await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: bytes, Metadata: metadata }));
      const err = await restoreFromS3(p, id, key).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DumpIntegrityError);
      expect((err as Error).message).toContain(`dump ${where(key)} is corrupted`);
      expect(await targetIsEmpty(p)).toBe(true);
    });

    it('a corrupted compressed object (pg_restore or the digest stops it)', async () => {
      const { p, id, key } = await uploaded('s3corruptz');
      const { bytes, metadata } = await objectBytes(key);
      bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
      await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: bytes, Metadata: metadata }));
      const err = await restoreFromS3(p, id, key).catch((e: unknown) => e);
      expect(err).toMatchObject({ name: expect.stringMatching(/^(DumpIntegrityError|BulkLoadFailedError)$/) });
      expect((err as Error).message).toContain(where(key));
      expect(await targetIsEmpty(p)).toBe(true);
    });

    it('a truncated object', async () => {
      const { p, id, key, artifact } = await uploaded('s3trunc');
      const { bytes, metadata } = await objectBytes(key);
      const half = bytes.subarray(0, Math.floor(bytes.length / 2));
      await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: half, Metadata: metadata }));
      const err = await restoreFromS3(p, id, key).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DumpIntegrityError);
      expect((err as Error).message).toContain(
        `dump ${where(key)} is truncated: ${half.length} of the ${artifact.size} bytes`,
      );
      expect(await targetIsEmpty(p)).toBe(true);
    });

    it('an object whose metadata digest is wrong, and one that is not the upload the workflow recorded', async () => {
      const { p, id, key, artifact } = await uploaded('s3digest');
      const wrong = artifact.sha256.replace(/^./, (c) => (c === '0' ? '1' : '0'));
      // The object as uploaded, but recorded with another digest.
      await client.send(
        new CopyObjectCommand({
          Bucket: s3.bucket,
          Key: key,
          CopySource: `${s3.bucket}/${key}`,
          MetadataDirective: 'REPLACE',
          Metadata: { sha256: wrong, size: String(artifact.size) },
        }),
      );
      const err = await restoreFromS3(p, id, key).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DumpIntegrityError);
      expect((err as Error).message).toContain(`dump ${where(key)} is corrupted: its SHA-256 is ${artifact.sha256}`);
      expect(await targetIsEmpty(p)).toBe(true);
      // What the upload step recorded disagrees with the object: refused before a byte goes to pg_restore.
      const before = await restoreFromS3(p, id, key, artifact).catch((e: unknown) => e);
      expect(before).toBeInstanceOf(DumpIntegrityError);
      expect((before as Error).message).toContain(`dump ${where(key)} is not the dump that was uploaded`);
      expect(await targetIsEmpty(p)).toBe(true);
    });
  });

  it('rolls back every table already restored when pg_restore fails on a later one', async () => {
    const p = await setupPair('s3rollback', 2000);
    const id = `s3rollback${counter++}`;
    const artifact = await withSnapshot(p, (snapshot) => dumpToS3(p, id, snapshot));
    // pg_dump orders table data by name: items is restored, then orders fails.
    await p.target('DROP TABLE orders');
    const err = await restoreFromS3(p, id, artifact.key, artifact).catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'BulkLoadFailedError' });
    expect((err as Error).message).toContain(`pg_restore of the data from s3://${s3.bucket}/${artifact.key} failed`);
    expect((err as Error).message).toContain('orders');
    expect(await p.target('SELECT count(*)::int AS n FROM items')).toEqual([{ n: 0 }]);
  });

  it('holds no more than its parts in memory while streaming a dump many times their size', async () => {
    const p = await setupPair('s3mem', 0);
    // ~132 MiB of row text, stored small (pglz compresses the repeats) and dumped uncompressed.
    await p.source(
      "INSERT INTO orders (id, customer, note) SELECT i, 'c', repeat(md5(i::text), 310) FROM generate_series(1, 14000) AS i",
    );
    const id = `s3mem${counter++}`;
    const partSize = 5 * MiB;
    const queueSize = 2;
    const bound = (queueSize + 2) * partSize;
    const script = resolve(__dirname, 'harness/s3-dump-memory.ts');
    const out = await withSnapshot(p, async (snapshot) => {
      const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', script], {
        env: {
          ...process.env,
          MEMORY_INPUT: JSON.stringify({
            endpoint: s3.endpoint,
            bucket: s3.bucket,
            migrationId: id,
            sourceUrl: p.sourceUrl,
            snapshot,
            partSize,
            queueSize,
          }),
        },
        maxBuffer: MiB,
      });
      return JSON.parse(stdout.trim().split('\n').at(-1)!) as { size: number; baselineRss: number; peakRss: number };
    });
    const grew = out.peakRss - out.baselineRss;
    console.log(
      `dump ${(out.size / MiB).toFixed(0)} MiB; bound (queueSize + 2) × partSize = ${bound / MiB} MiB; RSS grew by ${(grew / MiB).toFixed(1)} MiB (baseline ${(out.baselineRss / MiB).toFixed(0)} MiB, peak ${(out.peakRss / MiB).toFixed(0)} MiB)`,
    );
    // On top of the parts: the SDK's and the streams' own buffers, and garbage the GC has not
    // reclaimed yet (V8 lets freed Buffers pile up before it collects; allowed 64 MiB). An upload
    // that held the dump would grow by more than the dump.
    const allowed = bound + 64 * MiB;
    expect(out.size).toBeGreaterThan(1.5 * allowed);
    expect(grew).toBeLessThan(allowed);
  });
});
