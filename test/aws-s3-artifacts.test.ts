/**
 * The S3 artifact adapter's requests and the Object Created handler's decisions, against
 * aws-sdk-client-mock (the end-to-end run against s3rver and PostgreSQL is test/aws-s3-dump.test.ts).
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectsCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import { mockClient } from 'aws-sdk-client-mock';
import { afterEach, describe, expect, it } from 'vitest';
import {
  awaitDumpUpload,
  DUMP_UPLOAD,
  DUMP_UPLOAD_STEP,
  deleteDumps,
  dumpKey,
  dumpPartSize,
  handleS3ObjectCreated,
  parseDumpKey,
  parseS3ObjectCreatedEvent,
  type S3EventDeps,
  s3CorrelationKey,
  uploadDump,
  VerifiedDump,
} from '../packages/aws/src/index';
import { InvalidInputError, MigrationNotFoundError, type TaskCallbacks } from '../packages/core/src/index';

const s3 = mockClient(S3Client);
afterEach(() => s3.reset());

const fixture = (name: string) =>
  JSON.parse(readFileSync(resolve(__dirname, 'fixtures/events', name), 'utf8')) as Record<string, unknown>;

const BUCKET = 'pgferry-artifacts-123456789012';
const SHA = 'a'.repeat(64);

function deps(tokens: Record<string, string> = {}, correlations: Record<string, string> = {}) {
  const calls: { kind: string; token: string; payload: unknown }[] = [];
  const callbacks: TaskCallbacks = {
    async succeed(token, output) {
      calls.push({ kind: 'succeed', token, payload: output });
      return true;
    },
    async fail(token, error, cause) {
      calls.push({ kind: 'fail', token, payload: { error, cause } });
      return true;
    },
    async heartbeat() {},
  };
  const logs: string[] = [];
  const d: S3EventDeps = {
    s3: new S3Client({ region: 'eu-west-1' }),
    bucket: BUCKET,
    callbacks,
    store: {
      async findCorrelation(key) {
        return correlations[key];
      },
      async takeTaskToken(migrationId, step) {
        const k = `${migrationId}#${step}`;
        const token = tokens[k];
        delete tokens[k];
        return token;
      },
      async putTaskToken(migrationId, step, token) {
        tokens[`${migrationId}#${step}`] = token;
      },
      // No migration record: these tests are about the token (the copy plan's record: aws-s3-upload-event.test.ts).
      async get(id) {
        throw new MigrationNotFoundError(id);
      },
      async put(state) {
        throw new MigrationNotFoundError(state.id);
      },
    },
    log: (m) => logs.push(m),
  };
  return { deps: d, calls, logs };
}

describe('dump keys', () => {
  it('puts a migration dump under dumps/<migrationId>/ and reads the id back', () => {
    expect(dumpKey('shop')).toBe('dumps/shop/data.dump');
    expect(parseDumpKey('dumps/shop/data.dump')).toEqual({ migrationId: 'shop', name: 'data.dump' });
    expect(parseDumpKey('dumps/Shop/data.dump')).toBeUndefined();
    expect(parseDumpKey('dumps/shop/x/data.dump')).toBeUndefined();
    expect(parseDumpKey('example-key')).toBeUndefined();
    expect(() => dumpKey('../etc')).toThrow(InvalidInputError);
  });

  it('grows the part size with the expected dump so that S3 never needs more than 10,000 parts', () => {
    expect(dumpPartSize()).toBe(DUMP_UPLOAD.partSize);
    expect(dumpPartSize(50 * 1024 ** 3)).toBe(DUMP_UPLOAD.partSize);
    const tib = 1024 ** 4;
    const part = dumpPartSize(tib);
    expect(part % (1024 * 1024)).toBe(0);
    expect(part * DUMP_UPLOAD.maxParts).toBeGreaterThanOrEqual(2 * tib);
  });
});

describe('the Object Created event', () => {
  it('parses the documented sample and refuses what is not an S3 Object Created event', () => {
    expect(parseS3ObjectCreatedEvent(fixture('s3-object-created.json'))).toEqual({
      id: '17793124-05d4-b198-2fde-7ededc63b103',
      bucket: 'amzn-s3-demo-bucket1',
      key: 'example-key',
      size: 5,
      etag: 'b1946ac92492d2347c6235b4d2611184',
      versionId: 'IYV3p45BT0ac8hjHg1houSdS1a.Mro8e',
      reason: 'PutObject',
    });
    const rds = { source: 'aws.rds', 'detail-type': 'RDS DB Instance Event', detail: {} };
    expect(() => parseS3ObjectCreatedEvent(rds)).toThrow(/not an S3 Object Created event: source aws.rds/);
    const noKey = { ...fixture('s3-object-created.json'), detail: { bucket: { name: 'b' }, object: {} } };
    expect(() => parseS3ObjectCreatedEvent(noKey)).toThrow(/detail.object.key is missing/);
    const badKey = {
      ...fixture('s3-object-created.json'),
      detail: { bucket: { name: 'b' }, object: { key: '%E0%A4%A' } },
    };
    expect(() => parseS3ObjectCreatedEvent(badKey)).toThrow(InvalidInputError);
    const encoded = fixture('s3-object-created.json') as { detail: { object: { key: string } } };
    encoded.detail.object.key = 'dumps/a+b%3Dc/data.dump';
    expect(parseS3ObjectCreatedEvent(encoded).key).toBe('dumps/a b=c/data.dump');
  });

  it('completes the upload step once with the object digest; the duplicate finds no token', async () => {
    s3.on(HeadObjectCommand).resolves({
      ContentLength: 734003200,
      ETag: '"9a0364b9e99bb480dd25e1f0284c8555"',
      Metadata: { sha256: SHA, size: '734003200', 'migration-id': 'shop' },
    });
    const { deps: d, calls } = deps({ [`shop#${DUMP_UPLOAD_STEP}`]: 'tok' });
    const event = parseS3ObjectCreatedEvent(fixture('s3-object-created-dump.json'));
    expect(await handleS3ObjectCreated(event, d)).toEqual({
      action: 'succeeded',
      migrationId: 'shop',
      key: 'dumps/shop/data.dump',
      eventId: '5c3e8f0a-1b2d-4e6f-8a9b-0c1d2e3f4a5b',
    });
    expect(s3.commandCalls(HeadObjectCommand).map((c) => c.args[0].input)).toEqual([
      { Bucket: BUCKET, Key: 'dumps/shop/data.dump' },
    ]);
    expect(calls).toEqual([
      {
        kind: 'succeed',
        token: 'tok',
        payload: {
          summary: `dump s3://${BUCKET}/dumps/shop/data.dump uploaded: 700.0 MiB, sha256 aaaaaaaaaaaa…`,
          migrationId: 'shop',
          bucket: BUCKET,
          key: 'dumps/shop/data.dump',
          sha256: SHA,
          size: 734003200,
          etag: '"9a0364b9e99bb480dd25e1f0284c8555"',
        },
      },
    ]);
    expect(await handleS3ObjectCreated(event, d)).toMatchObject({
      action: 'ignored',
      reason: 'no upload step is waiting (a duplicate or late event)',
    });
    expect(calls).toHaveLength(1);
  });

  it('gives the token back when Step Functions does not answer, so that the redelivered event completes the step', async () => {
    s3.on(HeadObjectCommand).resolves({
      ContentLength: 1024,
      Metadata: { sha256: SHA, size: '1024', 'migration-id': 'shop' },
    });
    const { deps: d, calls } = deps({ [`shop#${DUMP_UPLOAD_STEP}`]: 'tok' });
    const succeed = d.callbacks.succeed;
    let throttled = 1;
    d.callbacks = {
      ...d.callbacks,
      async succeed(token, output) {
        if (throttled-- > 0) throw Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' });
        return succeed(token, output);
      },
    };
    const event = parseS3ObjectCreatedEvent(fixture('s3-object-created-dump.json'));
    await expect(handleS3ObjectCreated(event, d)).rejects.toMatchObject({ name: 'ThrottlingException' });
    // (The token was taken and lost: the retry found none, and the step waited out its 3-day timeout.)
    expect(await handleS3ObjectCreated(event, d)).toMatchObject({ action: 'succeeded', migrationId: 'shop' });
    expect(calls.map((c) => [c.kind, c.token])).toEqual([['succeed', 'tok']]);
  });

  it('ignores the staging object, other buckets and other keys without reading S3', async () => {
    const { deps: d, calls } = deps({ [`shop#${DUMP_UPLOAD_STEP}`]: 'tok' });
    const staging = await handleS3ObjectCreated(
      parseS3ObjectCreatedEvent(fixture('s3-object-created-staging.json')),
      d,
    );
    expect(staging).toMatchObject({ action: 'ignored', migrationId: 'shop', reason: 'not the data dump (data.dump)' });
    const sample = await handleS3ObjectCreated(parseS3ObjectCreatedEvent(fixture('s3-object-created.json')), d);
    expect(sample).toMatchObject({ action: 'ignored', reason: `not the artifacts bucket (${BUCKET})` });
    const other = { ...parseS3ObjectCreatedEvent(fixture('s3-object-created-dump.json')), key: 'reports/x.html' };
    expect(await handleS3ObjectCreated(other, d)).toMatchObject({ action: 'ignored' });
    expect(s3.commandCalls(HeadObjectCommand)).toHaveLength(0);
    expect(calls).toHaveLength(0);
  });

  it('finds the migration through the S3#<key> correlation item, and refuses one that contradicts the key', async () => {
    s3.on(HeadObjectCommand).resolves({ ContentLength: 10, Metadata: { sha256: SHA, size: '10' } });
    const key = 'dumps/shop/data.dump';
    const agree = deps({ [`shop#${DUMP_UPLOAD_STEP}`]: 'tok' }, { [s3CorrelationKey(key)]: 'shop' });
    const event = parseS3ObjectCreatedEvent(fixture('s3-object-created-dump.json'));
    expect(await handleS3ObjectCreated(event, agree.deps)).toMatchObject({ action: 'succeeded', migrationId: 'shop' });
    const clash = deps({ [`shop#${DUMP_UPLOAD_STEP}`]: 'tok' }, { [s3CorrelationKey(key)]: 'other' });
    expect(await handleS3ObjectCreated(event, clash.deps)).toMatchObject({
      action: 'ignored',
      reason: 'the key names migration shop but S3#dumps/shop/data.dump names other',
    });
    expect(clash.calls).toHaveLength(0);
  });

  it('leaves the token for an object without digest metadata, and for one already gone', async () => {
    const tokens = { [`shop#${DUMP_UPLOAD_STEP}`]: 'tok' };
    const { deps: d, calls } = deps(tokens);
    const event = parseS3ObjectCreatedEvent(fixture('s3-object-created-dump.json'));
    s3.on(HeadObjectCommand).resolves({ ContentLength: 10, Metadata: {} });
    expect(await handleS3ObjectCreated(event, d)).toMatchObject({
      action: 'ignored',
      reason: 'the object carries no sha256/size metadata',
    });
    s3.on(HeadObjectCommand).rejects(Object.assign(new Error('Not Found'), { name: 'NotFound' }));
    expect(await handleS3ObjectCreated(event, d)).toMatchObject({
      action: 'ignored',
      reason: 'no such object (not uploaded yet, or deleted since)',
    });
    expect(calls).toHaveLength(0);
    expect(tokens).toEqual({ [`shop#${DUMP_UPLOAD_STEP}`]: 'tok' });
  });

  it('fails the step when the object size is not the size it was uploaded with', async () => {
    s3.on(HeadObjectCommand).resolves({ ContentLength: 100, Metadata: { sha256: SHA, size: '734003200' } });
    const { deps: d, calls } = deps({ [`shop#${DUMP_UPLOAD_STEP}`]: 'tok' });
    const event = parseS3ObjectCreatedEvent(fixture('s3-object-created-dump.json'));
    expect(await handleS3ObjectCreated(event, d)).toMatchObject({ action: 'failed', migrationId: 'shop' });
    expect(calls).toEqual([
      {
        kind: 'fail',
        token: 'tok',
        payload: {
          error: 'DumpIntegrityError',
          cause: `dump s3://${BUCKET}/dumps/shop/data.dump holds 100 bytes, but it was uploaded with 734003200: refused`,
        },
      },
    ]);
  });
});

describe('awaitDumpUpload', () => {
  function storeWithPut(d: S3EventDeps, tokens: Record<string, string>, correlations: Record<string, string>) {
    return {
      ...d,
      store: {
        ...d.store,
        async putTaskToken(migrationId: string, step: string, token: string) {
          tokens[`${migrationId}#${step}`] = token;
        },
        async correlate(key: string, migrationId: string) {
          correlations[key] = migrationId;
        },
      },
    };
  }

  it('stores the token and correlation and waits when the dump is not there yet; the event then completes it', async () => {
    const tokens: Record<string, string> = {};
    const correlations: Record<string, string> = {};
    const { deps: d, calls } = deps(tokens, correlations);
    s3.on(HeadObjectCommand).rejects(Object.assign(new Error('Not Found'), { name: 'NotFound' }));
    expect(await awaitDumpUpload(storeWithPut(d, tokens, correlations), 'shop', 'tok')).toMatchObject({
      action: 'ignored',
    });
    expect(tokens).toEqual({ [`shop#${DUMP_UPLOAD_STEP}`]: 'tok' });
    expect(correlations).toEqual({ 'S3#dumps/shop/data.dump': 'shop' });
    expect(calls).toHaveLength(0);
    s3.on(HeadObjectCommand).resolves({ ContentLength: 10, Metadata: { sha256: SHA, size: '10' } });
    const event = parseS3ObjectCreatedEvent(fixture('s3-object-created-dump.json'));
    expect(await handleS3ObjectCreated(event, d)).toMatchObject({ action: 'succeeded', migrationId: 'shop' });
    expect(calls.map((c) => [c.kind, c.token])).toEqual([['succeed', 'tok']]);
  });

  it('completes the step at once when the dump was uploaded (and its event missed the token) before', async () => {
    const tokens: Record<string, string> = {};
    const { deps: d, calls } = deps(tokens);
    s3.on(HeadObjectCommand).resolves({ ContentLength: 10, Metadata: { sha256: SHA, size: '10' } });
    expect(await awaitDumpUpload(storeWithPut(d, tokens, {}), 'shop', 'tok')).toMatchObject({
      action: 'succeeded',
      migrationId: 'shop',
    });
    expect(tokens).toEqual({});
    // The event delivered late finds nothing to complete.
    const event = parseS3ObjectCreatedEvent(fixture('s3-object-created-dump.json'));
    expect(await handleS3ObjectCreated(event, d)).toMatchObject({ action: 'ignored' });
    expect(calls.map((c) => [c.kind, c.token])).toEqual([['succeed', 'tok']]);
  });
});

describe('uploadDump', () => {
  it('uploads to a staging key, then copies with the digest in metadata and deletes the staging object', async () => {
    s3.on(PutObjectCommand).resolves({ ETag: '"x"' });
    s3.on(CopyObjectCommand).resolves({});
    s3.on(DeleteObjectsCommand).resolves({});
    const body = Readable.from([Buffer.from('PGDMP'), Buffer.from(' rest')]);
    const artifact = await uploadDump({ s3: new S3Client({ region: 'eu-west-1' }), bucket: BUCKET }, 'shop', body);
    // sha256('PGDMP rest')
    const { createHash } = await import('node:crypto');
    const sha256 = createHash('sha256').update('PGDMP rest').digest('hex');
    expect(artifact).toEqual({ bucket: BUCKET, key: 'dumps/shop/data.dump', sha256, size: 10 });
    expect(s3.commandCalls(PutObjectCommand)[0]!.args[0].input).toMatchObject({
      Bucket: BUCKET,
      Key: 'dumps/shop/data.dump.partial',
      Metadata: { 'migration-id': 'shop' },
    });
    expect(s3.commandCalls(CopyObjectCommand).map((c) => c.args[0].input)).toEqual([
      {
        Bucket: BUCKET,
        Key: 'dumps/shop/data.dump',
        CopySource: `${BUCKET}/dumps/shop/data.dump.partial`,
        MetadataDirective: 'REPLACE',
        ContentType: 'application/octet-stream',
        Metadata: { 'migration-id': 'shop', sha256, size: '10' },
      },
    ]);
    expect(s3.commandCalls(DeleteObjectsCommand).map((c) => c.args[0].input)).toEqual([
      { Bucket: BUCKET, Delete: { Objects: [{ Key: 'dumps/shop/data.dump.partial' }] } },
    ]);
  });

  it('copies a dump over the CopyObject limit in ranges (UploadPartCopy), in order, server-side', async () => {
    s3.on(PutObjectCommand).resolves({ ETag: '"x"' });
    s3.on(CreateMultipartUploadCommand).resolves({ UploadId: 'up-1' });
    s3.on(UploadPartCopyCommand).callsFake((input: { PartNumber: number }) => ({
      CopyPartResult: { ETag: `"p${input.PartNumber}"` },
    }));
    s3.on(CompleteMultipartUploadCommand).resolves({});
    s3.on(DeleteObjectsCommand).resolves({});
    const body = Readable.from([Buffer.from('0123456789')]);
    const artifact = await uploadDump({ s3: new S3Client({ region: 'eu-west-1' }), bucket: BUCKET }, 'shop', body, {
      singleCopyLimit: 4,
      copyPartSize: 4,
    });
    expect(s3.commandCalls(CopyObjectCommand)).toHaveLength(0);
    expect(s3.commandCalls(CreateMultipartUploadCommand)[0]!.args[0].input).toEqual({
      Bucket: BUCKET,
      Key: 'dumps/shop/data.dump',
      ContentType: 'application/octet-stream',
      Metadata: { 'migration-id': 'shop', sha256: artifact.sha256, size: '10' },
    });
    const ranges = s3
      .commandCalls(UploadPartCopyCommand)
      .map((c) => c.args[0].input)
      .sort((a, b) => a.PartNumber! - b.PartNumber!);
    expect(ranges).toEqual(
      [
        [1, 'bytes=0-3'],
        [2, 'bytes=4-7'],
        [3, 'bytes=8-9'],
      ].map(([PartNumber, CopySourceRange]) => ({
        Bucket: BUCKET,
        Key: 'dumps/shop/data.dump',
        UploadId: 'up-1',
        PartNumber,
        CopySource: `${BUCKET}/dumps/shop/data.dump.partial`,
        CopySourceRange,
      })),
    );
    expect(s3.commandCalls(CompleteMultipartUploadCommand)[0]!.args[0].input).toEqual({
      Bucket: BUCKET,
      Key: 'dumps/shop/data.dump',
      UploadId: 'up-1',
      MultipartUpload: {
        Parts: [
          { PartNumber: 1, ETag: '"p1"' },
          { PartNumber: 2, ETag: '"p2"' },
          { PartNumber: 3, ETag: '"p3"' },
        ],
      },
    });
  });

  it('aborts the range copy when a part fails, leaving no final object', async () => {
    s3.on(PutObjectCommand).resolves({ ETag: '"x"' });
    s3.on(CreateMultipartUploadCommand).resolves({ UploadId: 'up-2' });
    s3.on(UploadPartCopyCommand).rejects(new Error('SlowDown'));
    s3.on(AbortMultipartUploadCommand).resolves({});
    const body = Readable.from([Buffer.from('0123456789')]);
    await expect(
      uploadDump({ s3: new S3Client({ region: 'eu-west-1' }), bucket: BUCKET }, 'shop', body, {
        singleCopyLimit: 4,
        copyPartSize: 4,
      }),
    ).rejects.toThrow(/copy of the dump to dumps\/shop\/data.dump failed: SlowDown/);
    expect(s3.commandCalls(AbortMultipartUploadCommand).map((c) => c.args[0].input)).toEqual([
      { Bucket: BUCKET, Key: 'dumps/shop/data.dump', UploadId: 'up-2' },
    ]);
    expect(s3.commandCalls(CompleteMultipartUploadCommand)).toHaveLength(0);
  });

  it('fails with the S3 error and ends the dump stream when S3 refuses the upload', async () => {
    s3.on(CreateMultipartUploadCommand).rejects(new Error('AccessDenied'));
    // An endless dump: only ending it lets the upload's failure come back.
    const chunk = Buffer.alloc(64 * 1024);
    const body = new Readable({
      read() {
        this.push(chunk);
      },
    });
    await expect(
      uploadDump({ s3: new S3Client({ region: 'eu-west-1' }), bucket: BUCKET }, 'shop', body, {
        partSize: 5 * 1024 * 1024,
      }),
    ).rejects.toThrow('upload of dumps/shop/data.dump.partial failed: AccessDenied');
    expect(body.destroyed).toBe(true);
    expect(s3.commandCalls(CopyObjectCommand)).toHaveLength(0);
  });

  it('fails with the stream error and never copies when the dump stream fails', async () => {
    s3.on(PutObjectCommand).resolves({ ETag: '"x"' });
    const body = new Readable({
      read() {
        this.destroy(new Error('pg_dump --snapshot failed (exit 1): invalid snapshot identifier'));
      },
    });
    await expect(
      uploadDump({ s3: new S3Client({ region: 'eu-west-1' }), bucket: BUCKET }, 'shop', body),
    ).rejects.toThrow('pg_dump --snapshot failed (exit 1): invalid snapshot identifier');
    expect(s3.commandCalls(CopyObjectCommand)).toHaveLength(0);
  });
});

describe('VerifiedDump', () => {
  const sha = async (s: string) => (await import('node:crypto')).createHash('sha256').update(s).digest('hex');
  async function read(input: string[], expected: { sha256: string; size: number }) {
    const v = new VerifiedDump(expected, 's3://b/dumps/shop/data.dump');
    const seen: string[] = [];
    v.on('data', (d: Buffer) => seen.push(d.toString()));
    const done = new Promise<void>((res, rej) => {
      v.on('end', res);
      v.on('error', rej);
    });
    for (const chunk of input) v.write(Buffer.from(chunk));
    v.end();
    const error = await done.then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    return { seen, error };
  }

  it('passes a whole dump through unchanged', async () => {
    const { seen, error } = await read(['ab', 'cd', 'ef'], { sha256: await sha('abcdef'), size: 6 });
    expect(error).toBeUndefined();
    expect(seen.join('')).toBe('abcdef');
  });

  it('never passes on the last chunk of a dump whose digest does not match', async () => {
    const { seen, error } = await read(['ab', 'cd', 'ef'], { sha256: await sha('abcdeX'), size: 6 });
    expect(error?.message).toMatch(/dump s3:\/\/b\/dumps\/shop\/data.dump is corrupted/);
    expect(seen.join('')).toBe('abcd');
  });

  it('refuses a dump longer than recorded at once, and a shorter one at its end', async () => {
    const long = await read(['ab', 'cd', 'ef'], { sha256: await sha('abcd'), size: 4 });
    expect(long.error?.message).toMatch(/is longer than the 4 bytes/);
    const short = await read(['ab'], { sha256: await sha('abcd'), size: 4 });
    expect(short.error?.message).toMatch(/is truncated: 2 of the 4 bytes/);
    expect(short.seen).toEqual([]);
  });
});

describe('deleteDumps', () => {
  it('deletes every object under the migration prefix, page by page', async () => {
    s3.on(ListObjectsV2Command)
      .resolvesOnce({
        Contents: [{ Key: 'dumps/shop/data.dump' }],
        IsTruncated: true,
        NextContinuationToken: 'n1',
      })
      .resolvesOnce({ Contents: [{ Key: 'dumps/shop/data.dump.partial' }], IsTruncated: false });
    s3.on(DeleteObjectsCommand).resolves({});
    expect(await deleteDumps({ s3: new S3Client({ region: 'eu-west-1' }), bucket: BUCKET }, 'shop')).toBe(2);
    expect(s3.commandCalls(ListObjectsV2Command).map((c) => c.args[0].input)).toEqual([
      { Bucket: BUCKET, Prefix: 'dumps/shop/', ContinuationToken: undefined },
      { Bucket: BUCKET, Prefix: 'dumps/shop/', ContinuationToken: 'n1' },
    ]);
    expect(s3.commandCalls(DeleteObjectsCommand).map((c) => c.args[0].input.Delete)).toEqual([
      { Objects: [{ Key: 'dumps/shop/data.dump' }] },
      { Objects: [{ Key: 'dumps/shop/data.dump.partial' }] },
    ]);
  });
});
