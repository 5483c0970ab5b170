import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { S3Client } from '@aws-sdk/client-s3';

/** The part of s3rver's API used here (the package ships no types). */
interface S3rverServer {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
  /** s3rver's own notification of a write: an S3 event record (Records[0].eventName `ObjectCreated:Put`…). */
  on(event: 'event', listener: (notification: S3rverNotification) => void): void;
}
interface S3rverNotification {
  Records: {
    eventName: string;
    s3: { bucket: { name: string }; object: { key: string; size?: number; eTag?: string } };
  }[];
}
type S3rverOptions = {
  address: string;
  port: number;
  silent: boolean;
  directory: string;
  configureBuckets: { name: string; configs: string[] }[];
};
const S3rver = createRequire(import.meta.url)('s3rver') as new (options: S3rverOptions) => S3rverServer;

/**
 * A real S3 API on loopback (s3rver: objects on disk in a temp directory, multipart upload,
 * CopyObject with metadata), one bucket, reached path-style with s3rver's fixed credentials: no
 * request can reach AWS.
 */
export interface LocalS3 {
  bucket: string;
  endpoint: string;
  /** A client for the local server, as the worker's would be for AWS. */
  client(): S3Client;
  /**
   * Every object the server stores, as S3 announces it: `listener` gets the EventBridge `Object
   * Created` event (objectCreatedEvent) for each write s3rver notifies (put, copy, multipart end).
   */
  onObjectCreated(listener: (event: unknown) => void): void;
  stop(): Promise<void>;
}

export async function startS3(bucket = 'pgferry-artifacts-test'): Promise<LocalS3> {
  const directory = await mkdtemp(join(tmpdir(), 'pgferry-s3-'));
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket, configs: [] }],
  });
  const { port } = await server.run();
  const endpoint = `http://127.0.0.1:${port}`;
  const clients: S3Client[] = [];
  const reasons: Record<string, 'PutObject' | 'CopyObject' | 'CompleteMultipartUpload'> = {
    'ObjectCreated:Put': 'PutObject',
    'ObjectCreated:Copy': 'CopyObject',
    'ObjectCreated:Post': 'CompleteMultipartUpload',
  };
  return {
    bucket,
    endpoint,
    onObjectCreated(listener) {
      server.on('event', (notification) => {
        for (const r of notification.Records) {
          const reason = reasons[r.eventName];
          if (!reason) continue;
          const { key, size, eTag } = r.s3.object;
          listener(objectCreatedEvent({ bucket: r.s3.bucket.name, key, size: size ?? 0, etag: eTag }, reason));
        }
      });
    },
    client() {
      const client = new S3Client({
        endpoint,
        region: 'eu-west-1',
        forcePathStyle: true,
        credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
        // s3rver predates the SDK's default CRC32 checksums (aws-chunked bodies): ask for them only
        // where S3 requires one, as the SDK did before 3.729.
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      });
      clients.push(client);
      return client;
    },
    async stop() {
      for (const c of clients) c.destroy();
      await server.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/**
 * The EventBridge `Object Created` event S3 sends for an object, built on the documented sample
 * (test/fixtures/events/s3-object-created-dump.json) with the object's own bucket, key, size and
 * ETag, as the rule on the artifacts bucket delivers it to the handler.
 */
export function objectCreatedEvent(
  object: { bucket: string; key: string; size: number; etag?: string },
  reason: 'PutObject' | 'CopyObject' | 'CompleteMultipartUpload' = 'CopyObject',
): unknown {
  const sample = JSON.parse(
    readFileSync(resolve(__dirname, '../fixtures/events/s3-object-created-dump.json'), 'utf8'),
  ) as Record<string, unknown> & { detail: Record<string, unknown> & { object: Record<string, unknown> } };
  const { _source, ...event } = sample;
  return {
    ...event,
    id: crypto.randomUUID(),
    time: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    resources: [`arn:aws:s3:::${object.bucket}`],
    detail: {
      ...event.detail,
      bucket: { name: object.bucket },
      object: {
        ...event.detail.object,
        // S3 sends keys URL-encoded (a space as '+').
        key: encodeURIComponent(object.key).replace(/%2F/g, '/').replace(/%20/g, '+'),
        size: object.size,
        etag: (object.etag ?? '').replace(/"/g, ''),
      },
      reason,
    },
  };
}
