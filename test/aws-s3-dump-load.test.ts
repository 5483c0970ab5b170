/**
 * The `dump` strategy through S3 in a migration: the bulk load streams pg_dump (in the slot's snapshot)
 * into s3rver and restores the object, digest checked; nothing is staged on local disk, and replication
 * goes on from the slot the snapshot came from. Real PostgreSQL, real S3 API on loopback.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dumpKey, s3DumpStore } from '../packages/aws/src/index';
import { advance } from '../packages/cli/src/runner';
import { migrationFixture, newMigration } from './harness/migration';
import { type LocalS3, startS3 } from './harness/s3';

const fixture = migrationFixture();
let s3: LocalS3;
let client: S3Client;

beforeAll(async () => {
  s3 = await startS3();
  client = s3.client();
});
afterAll(async () => {
  await s3?.stop();
});

const counts = (run: (q: string) => Promise<Record<string, unknown>[]>) =>
  run(
    'SELECT (SELECT count(*) FROM orders)::int AS orders, (SELECT coalesce(sum(hashtext(o::text)), 0)::bigint FROM orders o)::text AS h',
  );

describe('the dump strategy through S3', () => {
  it('streams the dump into S3 with its digest, restores it from there, and replicates from the dump snapshot on', async () => {
    const { pair, rt } = await fixture.setup('s3load', 2000);
    rt.dumpStore = s3DumpStore({ s3: client, bucket: s3.bucket }, { partSize: 5 * 1024 * 1024 });
    const m = await newMigration(rt, pair, { strategy: 'dump', cutover: 'manual' });
    const state = await advance(rt, m.id, { cutover: 'manual' });
    expect(state.status).toBe('awaiting-cutover');
    const key = dumpKey(m.id);
    expect(state.phases['bulk-load']?.summary).toContain(`s3://${s3.bucket}/${key}`);
    const head = await client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }));
    expect(head.Metadata?.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(Number(head.Metadata?.size)).toBe(head.ContentLength);
    // Not staged where the local strategy writes its file.
    expect(existsSync(join(rt.stateDir, 'artifacts', m.id, 'data.dump'))).toBe(false);
    expect(await counts(pair.target)).toEqual(await counts(pair.source));
    // A write after the load reaches the target through the slot whose snapshot the dump read.
    await pair.source('INSERT INTO orders (customer_id, amount) SELECT customer_id, 1 FROM orders LIMIT 1');
    await expect.poll(async () => counts(pair.target), { timeout: 20_000 }).toEqual(await counts(pair.source));
  });
});
