/**
 * The `dump` strategy's artifact in S3: the data dump streamed up under `dumps/<migrationId>/` with
 * its SHA-256 and size in the object's metadata, the `Object Created` event that completes the upload
 * step's task token, and the dump streamed back down, checked against that digest before pg_restore
 * may read its last bytes.
 */
import { createHash } from 'node:crypto';
import { type Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  S3Client,
  UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import {
  BulkLoadFailedError,
  type DumpUploadRecord,
  errorMessage,
  InvalidInputError,
  MIGRATION_ID,
  type MigrationStore,
  type PgferryErrorOptions,
  type TaskCallbacks,
  type TaskOutput,
  updateMigration,
} from '@pgferry/core';
import { deliverTakenToken } from './callbacks';

/** The step whose task token the dump's `Object Created` event completes. */
export const DUMP_UPLOAD_STEP = 'dumpUpload';
/** The data dump's object name under `dumps/<migrationId>/`. */
export const DUMP_OBJECT = 'data.dump';
/** Suffix of the object the upload streams into before the digest is known. */
const STAGING_SUFFIX = '.partial';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/**
 * Upload sizes. The memory the upload holds is bounded by parts, not by the dump: lib-storage's
 * `Upload` keeps up to `queueSize` parts in flight while it fills the next one from the stream, and
 * copies that one once when it cuts it, so about `(queueSize + 2) × partSize` (96 MiB with these
 * values) plus the streams' 64 KiB buffers and what the GC has not reclaimed yet, whatever the
 * dump's size (test/aws-s3-dump.test.ts measures it). S3 takes at most 10,000 parts an upload, so
 * `partSize` grows with the expected dump (`dumpPartSize`). CopyObject copies at most 5 GiB; a larger
 * dump is copied in `copyPartSize` ranges (UploadPartCopy), server-side.
 */
export const DUMP_UPLOAD = {
  partSize: 16 * MiB,
  queueSize: 4,
  maxParts: 10_000,
  singleCopyLimit: 5 * GiB,
  copyPartSize: 512 * MiB,
} as const;

/**
 * A part size that keeps the upload under S3's 10,000 parts for a dump of up to twice
 * `expectedBytes` (the source database's size is a fair upper bound of its compressed data dump; the
 * margin covers data that does not compress), rounded up to whole MiB.
 */
export function dumpPartSize(expectedBytes = 0): number {
  const needed = Math.ceil((expectedBytes * 2) / DUMP_UPLOAD.maxParts / MiB) * MiB;
  return Math.max(DUMP_UPLOAD.partSize, needed);
}

/** A dump that is not the one that was uploaded: truncated, corrupted, or without its digest. */
export class DumpIntegrityError extends BulkLoadFailedError {
  override name = 'DumpIntegrityError';
  constructor(message: string, options: PgferryErrorOptions = {}) {
    super(message, {
      phase: 'bulk-load',
      hint: 'nothing of this dump was restored; run the bulk load again, which dumps the source anew',
      ...options,
    });
  }
}

export function dumpKey(migrationId: string, name = DUMP_OBJECT): string {
  if (!MIGRATION_ID.test(migrationId))
    throw new InvalidInputError(`migration id '${migrationId}' is not one pgferry makes`, { field: 'migrationId' });
  return `dumps/${migrationId}/${name}`;
}

/** The migration a key under `dumps/<migrationId>/` belongs to, and the object's name there. */
export function parseDumpKey(key: string): { migrationId: string; name: string } | undefined {
  const m = /^dumps\/([^/]+)\/([^/]+)$/.exec(key);
  if (!m || !MIGRATION_ID.test(m[1]!)) return undefined;
  return { migrationId: m[1]!, name: m[2]! };
}

export function s3CorrelationKey(key: string): string {
  return `S3#${key}`;
}

export interface ArtifactDeps {
  s3: S3Client;
  /** The artifacts bucket. */
  bucket: string;
}

/** Where a dump is, and what it must read back as. */
export interface DumpArtifact {
  bucket: string;
  key: string;
  /** Hex SHA-256 of the whole object, computed while it streamed up. */
  sha256: string;
  size: number;
}

/** Counts and hashes what passes through, unchanged. */
class Digesting extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback) {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    done(null, chunk);
  }
}

function copySource(bucket: string, key: string): string {
  return `${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
}

export interface UploadDumpOptions {
  partSize?: number;
  queueSize?: number;
  /** Larger objects are copied in ranges (UploadPartCopy); S3's CopyObject limit is 5 GiB. */
  singleCopyLimit?: number;
  copyPartSize?: number;
  log?: (message: string) => void;
  /** Bytes sent so far, after each part: the worker's heartbeat for its callback step. */
  onProgress?: (bytes: number) => void;
}

/**
 * Stream `dump` (a custom-format pg_dump: `dumpInto` in packages/postgres/src/dump-stream.ts) into
 * `dumps/<migrationId>/data.dump`, hashing it on the way, never holding more than the parts in
 * flight. Metadata cannot be added once a multipart upload has begun and the digest is known only at
 * the end, so the stream goes to a staging object first, then a server-side copy with the
 * metadata (`sha256`, `size`) makes the final object: the final key never exists without its digest,
 * and its `Object Created` event means a whole, checked dump. A stream that fails (pg_dump exiting
 * non-zero) aborts the multipart upload: no final object, no event.
 */
export async function uploadDump(
  deps: ArtifactDeps,
  migrationId: string,
  dump: Readable,
  options: UploadDumpOptions = {},
): Promise<DumpArtifact> {
  const key = dumpKey(migrationId);
  const staging = `${key}${STAGING_SUFFIX}`;
  const digesting = new Digesting();
  let streamError: unknown;
  const feeding = pipeline(dump, digesting).catch((err) => {
    streamError = err;
  });
  const upload = new Upload({
    client: deps.s3,
    params: {
      Bucket: deps.bucket,
      Key: staging,
      Body: digesting,
      ContentType: 'application/octet-stream',
      Metadata: { 'migration-id': migrationId },
    },
    partSize: options.partSize ?? DUMP_UPLOAD.partSize,
    queueSize: options.queueSize ?? DUMP_UPLOAD.queueSize,
    leavePartsOnError: false,
  });
  const { onProgress } = options;
  if (onProgress) upload.on('httpUploadProgress', (p) => onProgress(p.loaded ?? 0));
  try {
    await upload.done();
  } catch (err) {
    // The dump's own failure (pg_dump's error) is the cause when there is one; the upload's abort
    // only follows from it. Otherwise S3 failed, and nothing reads the stream any more: end it, or
    // pg_dump would wait on a full pipe for ever.
    const dumpError = dump.errored ?? streamError;
    digesting.destroy();
    await feeding;
    throw dumpError ?? new BulkLoadFailedError(`upload of ${staging} failed: ${errorMessage(err)}`, { cause: err });
  }
  await feeding;
  if (streamError) throw streamError;
  const artifact: DumpArtifact = {
    bucket: deps.bucket,
    key,
    sha256: digesting.hash.digest('hex'),
    size: digesting.bytes,
  };
  await copyWithDigest(deps, staging, artifact, options);
  try {
    await deps.s3.send(new DeleteObjectsCommand({ Bucket: deps.bucket, Delete: { Objects: [{ Key: staging }] } }));
  } catch (err) {
    // The dump is whole and its event on its way; the staging copy goes with the migration's clean-up.
    options.log?.(`could not delete ${staging} (deleteDumps removes it at clean-up): ${errorMessage(err)}`);
  }
  return artifact;
}

async function copyWithDigest(deps: ArtifactDeps, staging: string, artifact: DumpArtifact, options: UploadDumpOptions) {
  const { migrationId } = parseDumpKey(artifact.key)!;
  const target = {
    Bucket: deps.bucket,
    Key: artifact.key,
    ContentType: 'application/octet-stream',
    Metadata: { 'migration-id': migrationId, sha256: artifact.sha256, size: String(artifact.size) },
  };
  const source = copySource(deps.bucket, staging);
  if (artifact.size <= (options.singleCopyLimit ?? DUMP_UPLOAD.singleCopyLimit)) {
    await deps.s3.send(new CopyObjectCommand({ ...target, CopySource: source, MetadataDirective: 'REPLACE' }));
    return;
  }
  const { UploadId } = await deps.s3.send(new CreateMultipartUploadCommand(target));
  try {
    const partSize = options.copyPartSize ?? DUMP_UPLOAD.copyPartSize;
    const ranges: { PartNumber: number; range: string }[] = [];
    for (let start = 0, n = 1; start < artifact.size; start += partSize, n++)
      ranges.push({ PartNumber: n, range: `bytes=${start}-${Math.min(start + partSize, artifact.size) - 1}` });
    const parts: { PartNumber: number; ETag?: string }[] = [];
    const queue = [...ranges];
    const worker = async () => {
      for (let next = queue.shift(); next; next = queue.shift()) {
        const out = await deps.s3.send(
          new UploadPartCopyCommand({
            Bucket: deps.bucket,
            Key: artifact.key,
            UploadId,
            PartNumber: next.PartNumber,
            CopySource: source,
            CopySourceRange: next.range,
          }),
        );
        parts.push({ PartNumber: next.PartNumber, ETag: out.CopyPartResult?.ETag });
      }
    };
    await Promise.all(Array.from({ length: options.queueSize ?? DUMP_UPLOAD.queueSize }, worker));
    parts.sort((a, b) => a.PartNumber - b.PartNumber);
    await deps.s3.send(
      new CompleteMultipartUploadCommand({
        Bucket: deps.bucket,
        Key: artifact.key,
        UploadId,
        MultipartUpload: { Parts: parts },
      }),
    );
  } catch (err) {
    await deps.s3
      .send(new AbortMultipartUploadCommand({ Bucket: deps.bucket, Key: artifact.key, UploadId }))
      .catch(() => {});
    throw new BulkLoadFailedError(`copy of the dump to ${artifact.key} failed: ${errorMessage(err)}`, { cause: err });
  }
}

/**
 * Passes a dump through while hashing it, and holds back its last chunk until the whole has been
 * checked against `expected`: pg_restore, reading a custom-format archive from a pipe, cannot reach
 * the archive's end (so cannot commit) before the check has passed. Longer than expected fails at
 * once; shorter or with another digest fails at the end, naming the object.
 */
export class VerifiedDump extends Transform {
  private readonly hash = createHash('sha256');
  private held: Buffer | undefined;
  bytes = 0;

  constructor(
    private readonly expected: { sha256: string; size: number },
    private readonly where: string,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback) {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    if (this.bytes > this.expected.size) {
      done(
        new DumpIntegrityError(
          `dump ${this.where} is longer than the ${this.expected.size} bytes it was uploaded with: refused`,
          { field: this.where },
        ),
      );
      return;
    }
    const previous = this.held;
    this.held = chunk;
    done(null, previous);
  }

  override _flush(done: TransformCallback) {
    if (this.bytes < this.expected.size) {
      done(
        new DumpIntegrityError(
          `dump ${this.where} is truncated: ${this.bytes} of the ${this.expected.size} bytes it was uploaded with: refused`,
          { field: this.where },
        ),
      );
      return;
    }
    const sha256 = this.hash.digest('hex');
    if (sha256 !== this.expected.sha256) {
      done(
        new DumpIntegrityError(
          `dump ${this.where} is corrupted: its SHA-256 is ${sha256}, not the ${this.expected.sha256} it was uploaded with: refused`,
          { field: this.where },
        ),
      );
      return;
    }
    done(null, this.held);
  }
}

function digestOf(metadata: Record<string, string> | undefined): { sha256?: string; size?: number } {
  const sha256 = metadata?.sha256;
  const size = metadata?.size === undefined ? undefined : Number(metadata.size);
  return {
    sha256: sha256 && /^[0-9a-f]{64}$/.test(sha256) ? sha256 : undefined,
    size: size !== undefined && Number.isSafeInteger(size) && size >= 0 ? size : undefined,
  };
}

/**
 * Open a dump for the restore: the object's stream, checked as it goes (`VerifiedDump`) against the
 * digest and size in its metadata, and against `expected` (the upload's own figures, from the
 * workflow's state) when given: an object whose metadata disagrees with them is refused before a
 * byte is read.
 */
export async function openDump(
  deps: ArtifactDeps,
  key: string,
  expected?: { sha256: string; size: number },
): Promise<{ dump: VerifiedDump; artifact: DumpArtifact }> {
  const where = `s3://${deps.bucket}/${key}`;
  const out = await deps.s3.send(new GetObjectCommand({ Bucket: deps.bucket, Key: key })).catch((err) => {
    throw new DumpIntegrityError(`dump ${where} cannot be read: ${errorMessage(err)}`, { field: where, cause: err });
  });
  const body = out.Body as Readable | undefined;
  const meta = digestOf(out.Metadata);
  const refuse = (problem: string) => {
    body?.destroy();
    return new DumpIntegrityError(`dump ${where} ${problem}: refused`, { field: where });
  };
  if (!body) throw refuse('has no body');
  if (meta.sha256 === undefined || meta.size === undefined)
    throw refuse('carries no sha256/size metadata (it was not written by pgferry, or its upload did not finish)');
  if (expected && (expected.sha256 !== meta.sha256 || expected.size !== meta.size))
    throw refuse(
      `is not the dump that was uploaded (metadata sha256 ${meta.sha256}, ${meta.size} bytes; the upload made ${expected.sha256}, ${expected.size} bytes)`,
    );
  const artifact = { bucket: deps.bucket, key, sha256: meta.sha256, size: meta.size };
  const dump = new VerifiedDump(artifact, where);
  pipeline(body, dump).catch(() => {}); // an error reaches the reader of `dump`, which is destroyed with it
  return { dump, artifact };
}

/** Remove every object under `dumps/<migrationId>/` (the dumps are copies of the data). Returns how many. */
export async function deleteDumps(deps: ArtifactDeps, migrationId: string): Promise<number> {
  const prefix = `${dumpKey(migrationId, '')}`;
  let deleted = 0;
  let token: string | undefined;
  do {
    const page = await deps.s3.send(
      new ListObjectsV2Command({ Bucket: deps.bucket, Prefix: prefix, ContinuationToken: token }),
    );
    const keys = (page.Contents ?? []).flatMap((o) => (o.Key ? [{ Key: o.Key }] : []));
    if (keys.length) {
      const res = await deps.s3.send(new DeleteObjectsCommand({ Bucket: deps.bucket, Delete: { Objects: keys } }));
      if (res.Errors?.length)
        throw new BulkLoadFailedError(
          `could not delete ${res.Errors.map((e) => `${e.Key} (${e.Code})`).join(', ')} from s3://${deps.bucket}`,
          { phase: 'cleanup' },
        );
      deleted += keys.length;
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return deleted;
}

// ---------------------------------------------------------------------------------------------------
// The `Object Created` event (EventBridge, rule on the artifacts bucket) → the upload step's token.

/** The parts of an EventBridge `Object Created` event the handler reads. */
export interface S3ObjectCreatedEvent {
  id?: string;
  bucket: string;
  key: string;
  size?: number;
  etag?: string;
  versionId?: string;
  reason?: string;
}

function decodeKey(key: string): string {
  try {
    return decodeURIComponent(key.replace(/\+/g, ' '));
  } catch {
    throw new InvalidInputError(`S3 event key '${key}' is not URL-encoded as S3 sends it`, {
      field: 'detail.object.key',
    });
  }
}

/** Validate an EventBridge event as S3's `Object Created`; anything else is refused by name. */
export function parseS3ObjectCreatedEvent(event: unknown): S3ObjectCreatedEvent {
  const e = event as {
    id?: unknown;
    source?: unknown;
    'detail-type'?: unknown;
    detail?: {
      bucket?: { name?: unknown };
      object?: { key?: unknown; size?: unknown; etag?: unknown; 'version-id'?: unknown };
      reason?: unknown;
    };
  };
  const bad = (what: string) =>
    new InvalidInputError(`not an S3 Object Created event: ${what}`, {
      field: 'event',
      hint: "the rule must match source 'aws.s3', detail-type 'Object Created'",
    });
  if (typeof e !== 'object' || e === null) throw bad('not an object');
  if (e.source !== 'aws.s3' || e['detail-type'] !== 'Object Created')
    throw bad(`source ${String(e.source)}, detail-type ${String(e['detail-type'])}`);
  const bucket = e.detail?.bucket?.name;
  const key = e.detail?.object?.key;
  if (typeof bucket !== 'string' || !bucket) throw bad('detail.bucket.name is missing');
  if (typeof key !== 'string' || !key) throw bad('detail.object.key is missing');
  const object = e.detail!.object!;
  const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
  return {
    id: str(e.id),
    bucket,
    // EventBridge gives the key URL-encoded, as S3 notifications do: `dumps/a+b` for `dumps/a b`.
    key: decodeKey(key),
    size: typeof object.size === 'number' ? object.size : undefined,
    etag: str(object.etag),
    versionId: str(object['version-id']),
    reason: str(e.detail!.reason),
  };
}

export interface S3EventDeps {
  s3: S3Client;
  /** The artifacts bucket: an event from any other bucket is ignored. */
  bucket: string;
  callbacks: TaskCallbacks;
  /** `get`/`put`: the handler confirms (or refuses) the dump in the copy plan the coordinator waits on. */
  store: Pick<MigrationStore, 'findCorrelation' | 'takeTaskToken' | 'putTaskToken' | 'get' | 'put'>;
  log: (message: string) => void;
}

/**
 * Record what the dump's event found in the migration's copy plan, when the plan waits for it
 * (`copyPlan.dumpUpload`): the coordinator restores on a confirmation of its own digest, and ends the
 * load on a refusal. Idempotent (a duplicate event writes nothing new); a conflicting write is retried.
 */
async function recordDumpUpload(store: S3EventDeps['store'], migrationId: string, record: DumpUploadRecord) {
  const same = (a?: object, b?: object) => JSON.stringify({ ...a, at: 0 }) === JSON.stringify({ ...b, at: 0 });
  await updateMigration(
    store,
    migrationId,
    (state) => {
      const plan = state.copyPlan;
      if (!plan?.dumpUpload) return false;
      const next: DumpUploadRecord = { ...plan.dumpUpload, ...record };
      if (same(plan.dumpUpload.confirmed, next.confirmed) && plan.dumpUpload.refused === next.refused) return false;
      state.copyPlan = { ...plan, dumpUpload: next };
    },
    { ifGone: 'skip' },
  );
}

export type S3EventOutcome =
  | { action: 'succeeded' | 'failed'; migrationId: string; key: string; eventId?: string }
  | { action: 'ignored'; reason: string; key: string; migrationId?: string; eventId?: string };

/** What the upload step outputs: where the dump is and what it must read back as. */
export interface DumpUploadedOutput extends TaskOutput, DumpArtifact {
  migrationId: string;
  etag?: string;
  versionId?: string;
}

/**
 * Complete the upload step's token for the dump this event announces, once. The migration comes from
 * the correlation item `S3#<key>` when there is one, else from the key (`dumps/<migrationId>/`); the
 * object is read back (HeadObject) so only a dump carrying its digest completes the step, with the
 * digest in the step's output. The token is taken atomically, so a duplicate or late event finds none
 * and does nothing; the staging object's event and other keys are ignored.
 */
export async function handleS3ObjectCreated(event: S3ObjectCreatedEvent, deps: S3EventDeps): Promise<S3EventOutcome> {
  const { key, id: eventId } = event;
  const ignore = (reason: string, migrationId?: string): S3EventOutcome => {
    deps.log(`${eventId ? `S3 event ${eventId}` : 'look'} for s3://${event.bucket}/${key} ignored: ${reason}`);
    return { action: 'ignored', reason, key, eventId, ...(migrationId ? { migrationId } : {}) };
  };
  if (event.bucket !== deps.bucket) return ignore(`not the artifacts bucket (${deps.bucket})`);
  const parsed = parseDumpKey(key);
  const correlated = await deps.store.findCorrelation?.(s3CorrelationKey(key));
  const migrationId = correlated ?? parsed?.migrationId;
  if (!migrationId) return ignore('not a dump of a migration (dumps/<migrationId>/)');
  if (parsed && correlated && parsed.migrationId !== correlated)
    return ignore(`the key names migration ${parsed.migrationId} but ${s3CorrelationKey(key)} names ${correlated}`);
  if (parsed?.name !== DUMP_OBJECT) return ignore(`not the data dump (${DUMP_OBJECT})`, migrationId);
  let head: { sha256?: string; size?: number; length?: number; etag?: string; versionId?: string };
  try {
    const out = await deps.s3.send(new HeadObjectCommand({ Bucket: event.bucket, Key: key }));
    head = { ...digestOf(out.Metadata), length: out.ContentLength, etag: out.ETag, versionId: out.VersionId };
  } catch (err) {
    if ((err as { name?: string }).name === 'NotFound')
      return ignore('no such object (not uploaded yet, or deleted since)', migrationId);
    throw err;
  }
  if (head.sha256 === undefined || head.size === undefined)
    return ignore('the object carries no sha256/size metadata', migrationId);
  const where = `s3://${event.bucket}/${key}`;
  const refused =
    head.length !== head.size
      ? `dump ${where} holds ${head.length} bytes, but it was uploaded with ${head.size}: refused`
      : undefined;
  // The coordinator's go-ahead (or stop), whoever holds the step's token.
  await recordDumpUpload(
    deps.store,
    migrationId,
    refused ? { refused } : { confirmed: { key, sha256: head.sha256, size: head.size, at: new Date().toISOString() } },
  );
  const takeTaskToken = deps.store.takeTaskToken;
  if (!takeTaskToken)
    throw new InvalidInputError('the store keeps no task tokens', { field: 'store', hint: 'use the DynamoDB store' });
  const token = await takeTaskToken.call(deps.store, migrationId, DUMP_UPLOAD_STEP);
  if (!token) return ignore('no upload step is waiting (a duplicate or late event)', migrationId);
  const deliver = <T>(send: () => Promise<T>) =>
    deliverTakenToken(deps.store, migrationId, DUMP_UPLOAD_STEP, token, send);
  if (refused) {
    deps.log(refused);
    await deliver(() => deps.callbacks.fail(token, 'DumpIntegrityError', refused));
    return { action: 'failed', migrationId, key, eventId };
  }
  const output: DumpUploadedOutput = {
    summary: `dump ${where} uploaded: ${(head.size / MiB).toFixed(1)} MiB, sha256 ${head.sha256.slice(0, 12)}…`,
    migrationId,
    bucket: event.bucket,
    key,
    sha256: head.sha256,
    size: head.size,
    ...(head.etag ? { etag: head.etag } : {}),
    ...(head.versionId ? { versionId: head.versionId } : {}),
  };
  const completed = await deliver(() => deps.callbacks.succeed(token, output));
  deps.log(`${output.summary}${completed ? '' : ' (the step had already timed out or finished)'}`);
  return { action: 'succeeded', migrationId, key, eventId };
}

/**
 * Store the upload step's token (and the `S3#<key>` correlation), then look for the dump: when it was
 * uploaded before the token was stored, its event found no token and did nothing, so the step is
 * completed here instead, through the handler's own path (the token is taken once, whoever is first).
 */
export async function awaitDumpUpload(
  deps: S3EventDeps & { store: Required<Pick<MigrationStore, 'putTaskToken'>> & Pick<MigrationStore, 'correlate'> },
  migrationId: string,
  token: string,
): Promise<S3EventOutcome> {
  const key = dumpKey(migrationId);
  await deps.store.correlate?.(s3CorrelationKey(key), migrationId);
  await deps.store.putTaskToken(migrationId, DUMP_UPLOAD_STEP, token);
  return handleS3ObjectCreated({ bucket: deps.bucket, key }, deps);
}

/** The "Wait for the dump upload" task (its Lambda, and the local runtime in tests): awaitDumpUpload's outcome as the state's output. */
export async function awaitDumpUploadTask(
  deps: Parameters<typeof awaitDumpUpload>[0],
  input: { migrationId: string; taskToken?: string },
): Promise<TaskOutput> {
  if (!input.taskToken)
    throw new InvalidInputError('"Wait for the dump upload" needs its task token', { field: 'taskToken' });
  // An unknown migration fails the step before anything is written for it.
  await deps.store.get(input.migrationId);
  const outcome = await awaitDumpUpload(deps, input.migrationId, input.taskToken);
  const where = `s3://${deps.bucket}/${outcome.key}`;
  return {
    summary:
      outcome.action === 'ignored'
        ? `waiting for the S3 event of ${where}`
        : `${where} was already there when the step began: ${outcome.action}`,
  };
}

/**
 * The `dump` strategy's store in AWS (PhaseContext.dumpStore): `uploadDump` into
 * `dumps/<migrationId>/data.dump` with its digest, and `openDump` checking it on the way back.
 */
export function s3DumpStore(
  deps: ArtifactDeps | { bucket: string },
  options: UploadDumpOptions & {
    /**
     * The bucket sends its events to EventBridge and the state machine waits for the dump's (the
     * deployed stack): the coordinator restores only once the event's handler confirmed the object.
     */
    announces?: boolean;
  } = {},
) {
  const d: ArtifactDeps = 's3' in deps ? deps : { ...deps, s3: new S3Client({}) };
  return {
    announces: options.announces === true,
    async discard(migrationId: string) {
      await deleteDumps(d, migrationId);
    },
    async put(migrationId: string, dump: Readable) {
      const a = await uploadDump(d, migrationId, dump, options);
      return { where: `s3://${a.bucket}/${a.key}`, key: a.key, sha256: a.sha256, size: a.size };
    },
    async open(stored: { key: string; sha256: string; size: number }): Promise<Readable> {
      return (await openDump(d, stored.key, { sha256: stored.sha256, size: stored.size })).dump;
    },
  };
}
