/**
 * Run by test/aws-s3-dump.test.ts in a process of its own, so that its resident memory is the
 * dump's alone: pg_dump streamed into S3 (s3rver on loopback), printing the dump's size and the
 * process's resident memory before and at its peak, as JSON on the last line.
 */
import { Readable } from 'node:stream';
import { S3Client } from '@aws-sdk/client-s3';
import { uploadDump } from '../../packages/aws/src/index';
import { dumpInto, findTool } from '../../packages/postgres/src/index';

const input = JSON.parse(process.env.MEMORY_INPUT ?? '{}') as {
  endpoint: string;
  bucket: string;
  migrationId: string;
  sourceUrl: string;
  snapshot: string;
  partSize: number;
  queueSize: number;
};

const s3 = new S3Client({
  endpoint: input.endpoint,
  region: 'eu-west-1',
  forcePathStyle: true,
  credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  requestChecksumCalculation: 'WHEN_REQUIRED',
  responseChecksumValidation: 'WHEN_REQUIRED',
});
const pgDump = await findTool('pg_dump', 15);
// A first, smaller upload loads every code path (SDK middleware, HTTP agent, XML parser) and sizes
// the heap, so that what grows after the baseline is the dump's buffers alone.
const warmUp = Readable.from(
  (function* () {
    for (let i = 0; i < 3 * 64; i++) yield Buffer.alloc(64 * 1024, i);
  })(),
);
await uploadDump({ s3, bucket: input.bucket }, `${input.migrationId}w`, warmUp, input);
const baselineRss = process.memoryUsage.rss();
let peakRss = baselineRss;
const sampler = setInterval(() => {
  peakRss = Math.max(peakRss, process.memoryUsage.rss());
}, 10);
const artifact = await dumpInto(
  {
    pgDump,
    sourceUrl: input.sourceUrl,
    snapshot: input.snapshot,
    applicationName: `pgferry:${input.migrationId}:pg_dump`,
    compress: 0,
  },
  (dump) => uploadDump({ s3, bucket: input.bucket }, input.migrationId, dump, input),
);
clearInterval(sampler);
peakRss = Math.max(peakRss, process.resourceUsage().maxRSS * 1024);
s3.destroy();
console.log(JSON.stringify({ size: artifact.size, baselineRss, peakRss }));
