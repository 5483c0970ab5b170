/**
 * The `dump` strategy's data as a stream: `pg_dump --format=custom --snapshot` written to whatever
 * sink takes a Readable (S3 in AWS: packages/aws/src/artifacts.ts), and `pg_restore` fed from one.
 * Nothing here touches local disk, so a worker with a small ephemeral volume can move any size of dump.
 */
import { spawn } from 'node:child_process';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BulkLoadFailedError, errorMessage, redactText } from '@pgferry/core';
import { toolConnection } from './tools';

export interface DataDumpOptions {
  /** pg_dump able to read the source (`findTool('pg_dump', sourceMajor)`). */
  pgDump: string;
  sourceUrl: string;
  /** The slot's exported snapshot: the dump holds exactly what the slot's first change follows. */
  snapshot: string;
  /** `application_name` of pg_dump's session (`pgferry:<id>:pg_dump`), which `pgferry status` looks for. */
  applicationName: string;
  /** Quoted `schema.table` names whose data stays out (extension configuration tables, a scheduler's jobs). */
  excludeTableData?: string[];
  /** pg_dump's `--compress` level; pg_dump's own default when absent. */
  compress?: number;
}

/** pg_dump's arguments for the data of the load, as the local `dump` strategy runs it, writing to stdout. */
export function dataDumpArgs(options: Omit<DataDumpOptions, 'pgDump' | 'applicationName'>, dbname: string): string[] {
  return [
    '--data-only',
    '--format=custom',
    `--snapshot=${options.snapshot}`,
    '--no-publications',
    '--no-subscriptions',
    '--exclude-schema=pgferry',
    ...(options.compress === undefined ? [] : [`--compress=${options.compress}`]),
    ...(options.excludeTableData ?? []).map((t) => `--exclude-table-data=${t}`),
    '--dbname',
    dbname,
  ];
}

/** Keep the last 4 KiB of a tool's stderr: enough for its error, bounded whatever it prints. */
function stderrTail(child: { stderr: Readable | null }): () => string {
  let tail = '';
  child.stderr?.on('data', (d: Buffer) => {
    tail = (tail + d.toString()).slice(-4096);
  });
  return () => redactText(tail.trim());
}

/**
 * Run pg_dump and hand its output to `sink` as it is produced. The stream the sink reads ends only
 * once pg_dump has exited 0: a pg_dump that fails (snapshot gone, permission) makes the stream fail
 * instead of ending, so an uploader aborts rather than storing a truncated dump as if it were whole.
 * A sink that fails ends pg_dump (its session would otherwise hold the snapshot's xmin).
 */
export async function dumpInto<R>(options: DataDumpOptions, sink: (dump: Readable) => Promise<R>): Promise<R> {
  const src = toolConnection(options.sourceUrl, options.applicationName);
  const child = spawn(options.pgDump, dataDumpArgs(options, src.url), {
    env: { ...process.env, ...src.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stderr = stderrTail(child);
  const out = new PassThrough();
  child.stdout.pipe(out, { end: false });
  const exited = new Promise<number>((resolve) => {
    child.on('error', (err) => {
      out.destroy(
        new BulkLoadFailedError(`pg_dump could not start: ${err.message}`, { phase: 'bulk-load', cause: err }),
      );
      resolve(-1);
    });
    child.on('close', (code, signal) => {
      if (code === 0) out.end();
      else
        out.destroy(
          new BulkLoadFailedError(`pg_dump --snapshot failed (${signal ?? `exit ${code}`}): ${stderr()}`, {
            phase: 'bulk-load',
          }),
        );
      resolve(code ?? -1);
    });
  });
  try {
    return await sink(out);
  } catch (err) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    throw err;
  } finally {
    await exited;
  }
}

export interface DataRestoreOptions {
  /** pg_restore able to read the dump (any version at least pg_dump's). */
  pgRestore: string;
  targetUrl: string;
  /** `pgferry:<id>:pg_restore`. */
  applicationName: string;
  /** Where the dump comes from (`s3://bucket/key`), for messages. */
  from?: string;
}

/**
 * Feed a custom-format dump to `pg_restore` on its stdin. A dump read from a pipe is restored by one
 * process (`--jobs` needs to seek in a file, which would mean staging the whole dump on disk), so the
 * restore runs as one transaction: when `dump` fails (a digest mismatch found at its end, a cut
 * connection), pg_restore is ended before it reads the end of the archive and the target keeps
 * nothing of it. The caller empties the loaded tables first (the local strategy's TRUNCATE), since a
 * data-only restore appends.
 */
export async function restoreFrom(options: DataRestoreOptions, dump: Readable): Promise<{ bytes: number }> {
  const tgt = toolConnection(options.targetUrl, options.applicationName);
  const child = spawn(
    options.pgRestore,
    ['--data-only', '--format=custom', '--single-transaction', '--exit-on-error', '--dbname', tgt.url],
    { env: { ...process.env, ...tgt.env }, stdio: ['pipe', 'ignore', 'pipe'] },
  );
  const stderr = stderrTail(child);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>((resolve) => {
    child.on('error', (error) => resolve({ code: null, signal: null, error }));
    child.on('close', (code, signal) => resolve({ code, signal }));
  });
  let bytes = 0;
  dump.on('data', (d: Buffer) => {
    bytes += d.length;
  });
  let feedError: unknown;
  try {
    await pipeline(dump, child.stdin);
  } catch (err) {
    feedError = err;
    // Ended before it read the archive's end, pg_restore never commits: its transaction is rolled back.
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  }
  const { code, signal, error } = await exited;
  if (error)
    throw new BulkLoadFailedError(`pg_restore could not start: ${error.message}`, { phase: 'bulk-load', cause: error });
  if (feedError && code === 0)
    // Only a dump with bytes after the archive's end lets pg_restore finish before it is all read.
    throw new BulkLoadFailedError(
      `pg_restore committed before the whole dump${options.from ? ` ${options.from}` : ''} was read and checked (${bytes} bytes read): ${errorMessage(feedError)}`,
      {
        phase: 'bulk-load',
        cause: feedError,
        hint: 'the target holds rows of an unchecked dump: roll back the migration',
      },
    );
  // The dump's own failure names the object and what is wrong with it; pg_restore's complaint about a
  // cut-off archive is only its consequence. An EPIPE means pg_restore stopped first: its error counts.
  if (feedError && !isPipeError(feedError)) throw feedError;
  if (code !== 0)
    throw new BulkLoadFailedError(
      `pg_restore of the data${options.from ? ` from ${options.from}` : ''} failed (${signal ?? `exit ${code}`}); its transaction was rolled back: ${stderr()}`,
      { phase: 'bulk-load', cause: feedError },
    );
  return { bytes };
}

function isPipeError(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'EPIPE' || code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'ERR_STREAM_DESTROYED';
}
