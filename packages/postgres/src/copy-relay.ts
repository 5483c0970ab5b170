/**
 * Table copy without touching rows. A source's `COPY … TO STDOUT` answers with a run of CopyData
 * messages and a target's `COPY … FROM STDIN` accepts exactly such messages, so the relay hands the
 * source socket's bytes to the target socket unchanged: Node walks the 5-byte message headers and
 * drops the few messages that are not data (CopyOutResponse, notices, CopyDone). pg-copy-streams
 * parsed and re-framed every row instead, which took half a core at 200 MiB/s on a 2-core machine
 * where the target's COPY needs the other one.
 *
 * Both halves are `pg` submittables, like pg-copy-streams': `client.query(submittable)` runs them in
 * the client's queue, and `pg` goes on parsing everything outside the data (errors included).
 */
import type { Socket } from 'node:net';
import type pg from 'pg';

const COPY_DATA = 0x64; // 'd'
const COPY_DONE = 0x63; // 'c'
const ERROR_RESPONSE = 0x45; // 'E'
const HEADER = 5; // type byte + int32 length (which counts itself)

/** The parts of pg's (untyped) Connection the relay uses. */
interface Connection {
  stream: Socket;
  query(text: string): void;
  endCopyFrom(): void;
  sendCopyFail(message: string): void;
}

function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (reason: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A rejection nobody awaits yet (the other half failed first) must not crash the process.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

function copyCount(msg: { text?: string } | undefined): number {
  const match = /COPY (\d+)/.exec(msg?.text ?? '');
  return match ? Number(match[1]) : 0;
}

/** The target half: `COPY … FROM STDIN`, fed raw CopyData messages. */
export class CopyInSink {
  readonly text: string;
  rowCount = 0;
  private connection?: Connection;
  private readonly readyD = deferred<void>();
  private readonly doneD = deferred<number>();
  /** Resolves when the server accepts data (CopyInResponse). */
  readonly ready = this.readyD.promise;
  /** Resolves with the row count once the COPY has finished; rejects with the server's error. */
  readonly done = this.doneD.promise;

  constructor(text: string) {
    this.text = text;
  }

  /** Whole CopyData messages only. false: wait for `onDrain` before writing more. */
  write(bytes: Buffer): boolean {
    if (!this.connection) throw new Error('COPY FROM has not started');
    return this.connection.stream.write(bytes);
  }

  onDrain(cb: () => void) {
    this.connection?.stream.once('drain', cb);
  }

  finish() {
    this.connection?.endCopyFrom();
  }

  /** Abandon the COPY: the server rolls it back and `done` rejects. */
  fail(message: string) {
    this.connection?.sendCopyFail(message);
  }

  // --- pg submittable protocol ---
  submit(connection: Connection) {
    this.connection = connection;
    connection.query(this.text);
  }
  callback() {}
  handleCopyInResponse() {
    this.readyD.resolve();
  }
  handleCommandComplete(msg: { text?: string }) {
    this.rowCount = copyCount(msg);
  }
  handleReadyForQuery() {
    this.doneD.resolve(this.rowCount);
  }
  handleError(err: unknown) {
    this.readyD.reject(err);
    this.doneD.reject(err);
  }
}

/**
 * The source half: `COPY … TO STDOUT`, whose CopyData messages go to `sink` unchanged. `done`
 * resolves with the source's row count when the server reports the COPY complete.
 */
export class CopyOutRelay {
  readonly text: string;
  rowCount = 0;
  /** Bytes handed to the sink so far. */
  bytes = 0;
  /** CopyData messages seen: one per row (plus the trailer of the binary format). */
  messages = 0;
  /** Times the source was paused because the target could not keep up. */
  pauses = 0;
  private unreported = 0;
  private connection?: Connection;
  private pgOnData?: (chunk: Buffer) => void;
  private attached = false;
  private readonly doneD = deferred<number>();
  readonly done = this.doneD.promise;
  private settled = false;
  private waitingForDrain = false;
  /** Body bytes left in the current message; whether that message is CopyData. */
  private remaining = 0;
  private inData = false;
  /** A message header cut in two by the socket. */
  private readonly header = Buffer.alloc(HEADER);
  private headerHave = 0;

  constructor(
    text: string,
    private readonly sink: CopyInSink,
    private readonly onBytes?: (bytes: number, messages: number) => void,
  ) {
    this.text = text;
  }

  /** Stop: the source connection is closed (the target failed, or the caller gives up). */
  abort(reason: unknown) {
    if (this.settled) return;
    this.settled = true;
    this.connection?.stream.destroy();
    this.completeLastMessage();
    this.doneD.reject(reason);
  }

  /**
   * A CopyData message the source did not finish sending would swallow whatever the target gets
   * next (CopyFail, ROLLBACK) as its body: fill it up so the target stays in step. The filler never
   * lands anywhere, because the target's COPY has failed or is about to be failed.
   */
  private completeLastMessage() {
    if (this.inData && this.remaining > 0) this.sink.write(Buffer.alloc(this.remaining));
    this.remaining = 0;
    this.inData = false;
  }

  private forward(bytes: Buffer) {
    if (bytes.length === 0) return;
    this.bytes += bytes.length;
    try {
      this.onBytes?.(bytes.length, this.unreported);
    } catch {
      // Progress is for show: a failing display must not take the copy (or the process) down.
    }
    this.unreported = 0;
    if (!this.sink.write(bytes) && !this.waitingForDrain) {
      const stream = this.connection?.stream;
      this.waitingForDrain = true;
      this.pauses++;
      stream?.pause();
      this.sink.onDrain(() => {
        this.waitingForDrain = false;
        stream?.resume();
      });
    }
  }

  private readonly onData = (chunk: Buffer) => {
    const n = chunk.length;
    let pos = 0;
    // Start of the current run of CopyData bytes in this chunk, or -1.
    let run = this.remaining > 0 && this.inData ? 0 : -1;
    while (pos < n) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, n - pos);
        pos += take;
        this.remaining -= take;
        continue;
      }
      if (this.headerHave > 0) {
        const take = Math.min(HEADER - this.headerHave, n - pos);
        chunk.copy(this.header, this.headerHave, pos, pos + take);
        this.headerHave += take;
        pos += take;
        if (this.headerHave < HEADER) continue;
        this.headerHave = 0;
        this.remaining = this.header.readUInt32BE(1) - 4;
        this.inData = this.header[0] === COPY_DATA;
        if (this.inData) {
          this.messages++;
          this.unreported++;
          this.forward(Buffer.from(this.header));
          run = pos;
        }
        continue;
      }
      const type = chunk[pos] as number;
      if (type !== COPY_DATA) {
        if (run >= 0) this.forward(chunk.subarray(run, pos));
        run = -1;
        if (type === COPY_DONE || type === ERROR_RESPONSE) {
          // The rest (CommandComplete and ReadyForQuery, or the error) is pg's to parse.
          this.detach(chunk.subarray(pos));
          return;
        }
      }
      if (n - pos < HEADER) {
        if (run >= 0) this.forward(chunk.subarray(run, pos));
        run = -1;
        chunk.copy(this.header, 0, pos);
        this.headerHave = n - pos;
        pos = n;
        continue;
      }
      this.remaining = chunk.readUInt32BE(pos + 1) - 4;
      this.inData = type === COPY_DATA;
      if (this.inData) {
        this.messages++;
        this.unreported++;
        if (run < 0) run = pos;
      }
      pos += HEADER;
    }
    if (run >= 0) this.forward(chunk.subarray(run, n));
  };

  private detach(rest: Buffer) {
    const stream = this.connection?.stream;
    if (!stream || !this.attached || !this.pgOnData) return;
    this.attached = false;
    stream.removeListener('data', this.onData);
    stream.on('data', this.pgOnData);
    this.pgOnData(rest);
    // A pause for the sink's back-pressure must not outlive the copy.
    stream.resume();
  }

  // --- pg submittable protocol ---
  /** A returned error makes pg fail this query (handleError) and go on with its queue. */
  submit(connection: Connection): Error | undefined {
    // Aborted before the source client got to it: nothing may stream into the target any more.
    if (this.settled) return new Error('COPY relay aborted before it started');
    this.connection = connection;
    const stream = connection.stream;
    const listeners = stream.listeners('data');
    if (listeners.length !== 1)
      return new Error(`cannot relay COPY: ${listeners.length} data listeners on the connection`);
    this.pgOnData = listeners[0] as (chunk: Buffer) => void;
    stream.removeListener('data', this.pgOnData);
    stream.on('data', this.onData);
    this.attached = true;
    connection.query(this.text);
  }
  callback() {}
  handleCommandComplete(msg: { text?: string }) {
    this.rowCount = copyCount(msg);
  }
  handleReadyForQuery() {
    this.settled = true;
    this.doneD.resolve(this.rowCount);
  }
  handleError(err: unknown) {
    // Still attached: the error did not come through the stream we read (a query_timeout, a dead
    // socket), which may be cut mid-message; pg could not parse what follows, so it is closed.
    if (this.attached) this.connection?.stream.destroy();
    this.detach(Buffer.alloc(0));
    this.completeLastMessage();
    this.settled = true;
    this.doneD.reject(err);
  }
}

/**
 * Copy one query's output into one table: `outSql` (COPY … TO STDOUT) on `source`, `inSql`
 * (COPY … FROM STDIN, same format) on `target`. Resolves with the target's row count; on any error
 * the target's COPY is abandoned (rolled back) and the error is the first one that happened.
 */
export async function relayCopy(
  source: pg.Client,
  target: pg.Client,
  outSql: string,
  inSql: string,
  onBytes?: (bytes: number, messages: number) => void,
): Promise<{ rows: number; bytes: number }> {
  const sink = new CopyInSink(inSql);
  target.query(sink as unknown as pg.Submittable);
  await sink.ready;
  const relay = new CopyOutRelay(outSql, sink, onBytes);
  // The target may fail mid-stream (a bad row, a lost connection): stop reading the source then.
  sink.done.catch((err) => relay.abort(err));
  source.query(relay as unknown as pg.Submittable);
  try {
    await relay.done;
  } catch (err) {
    sink.fail(`source COPY failed: ${err instanceof Error ? err.message : String(err)}`);
    await sink.done.catch(() => {});
    throw err;
  }
  sink.finish();
  const rows = await sink.done;
  return { rows, bytes: relay.bytes };
}
