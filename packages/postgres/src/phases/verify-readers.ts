/**
 * Verify's readers of one side: up to `--jobs` connections of their own reading at once. A read asks
 * for as many readers as it has parts (ranges of one table's heap) and gets them all together, in order
 * of asking: readers holding a snapshot never wait on a connection another read holds, so reads cannot
 * wait on one another. The parts of one read are read at one point: the first reader takes a
 * REPEATABLE READ snapshot and exports it (pg_export_snapshot), every other reader imports it (SET
 * TRANSACTION SNAPSHOT) before any of them reads, as the load's streams do.
 */
import { PgferryError, redactText } from '@pgferry/core';
import type pg from 'pg';
import { connectClient, type Db, literal } from '../db';
import type { VerifyReaderPoint } from './context';

/** Queries on one connection, as rows (a side's errors named as the pool's are). */
export type Query = Db['query'];

export const rowsOf =
  (client: pg.ClientBase, side: Db['side']): Query =>
  async (sql, params) => {
    try {
      return (await client.query(sql, params)).rows;
    } catch (err) {
      const e = err as { message?: string };
      throw new PgferryError(`${side}: ${redactText(e.message ?? String(err))}`, {
        cause: err,
        hint: `while running: ${redactText(sql.trim().split('\n')[0] ?? '').slice(0, 120)}`,
      });
    }
  };

/** One read of a side: what each of its readers reads (one part each), and the readers' checkpoint for tests. */
export interface SideRead<T> {
  parts: ((query: Query) => Promise<T>)[];
  /** What the fault point is told the read is of (a table's label). */
  label: string;
  /** Whether this is the live side (read first, its WAL position taken in its snapshot). */
  live: boolean;
}

export class SideReaders {
  private readonly idle: pg.Client[] = [];
  private readonly opened = new Set<pg.Client>();
  private free: number;
  private readonly waiting: { n: number; grant: () => void }[] = [];
  private readonly clock = new ReadingClock();
  /** Closed: a read still in flight (another failed and verify ended) opens no connection and keeps none. */
  private closed = false;

  constructor(
    readonly db: Db,
    /** Readers at most (`--jobs`). */
    readonly size: number,
    private readonly applicationName: string,
    private readonly point?: (p: VerifyReaderPoint) => Promise<void>,
  ) {
    this.free = size;
  }

  /**
   * Reads `read`'s parts at one point of this side, each by its own reader, and returns their results
   * in order. `positioned` gets the side's WAL insert position, read in the first reader's snapshot
   * (after it: every commit the read sees is before it), before anyone reads.
   */
  async atOnePoint<T>(read: SideRead<T>, positioned?: (lsn: string) => void): Promise<T[]> {
    const n = Math.max(1, Math.min(read.parts.length, this.size));
    if (n < read.parts.length) throw new Error(`verify: ${read.parts.length} parts for ${this.size} readers`);
    const clients = await this.take(n);
    const say = (reader: number, stage: VerifyReaderPoint['stage']) =>
      this.point?.({ side: this.db.side, live: read.live, table: read.label, reader, readers: n, stage });
    let broken = false;
    try {
      const [lead, ...others] = clients as [pg.Client, ...pg.Client[]];
      await say(0, 'start');
      await lead.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      // The snapshot is taken by this first statement, the position read during it: after the snapshot.
      const [first] = await rowsOf(
        lead,
        this.db.side,
      )<{ lsn: string; snapshot: string | null }>(
        `SELECT pg_current_wal_insert_lsn()::text AS lsn, ${n > 1 ? 'pg_export_snapshot()' : 'NULL'} AS snapshot`,
      );
      await say(0, 'snapshot');
      positioned?.(first?.lsn as string);
      // Every reader in the snapshot before anyone reads: the exporting transaction stays open until then.
      await settled(
        others.map(async (c, i) => {
          await say(i + 1, 'start');
          await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
          await rowsOf(c, this.db.side)(`SET TRANSACTION SNAPSHOT ${literal(first?.snapshot ?? '')}`);
          await say(i + 1, 'snapshot');
        }),
      );
      this.clock.reading(n);
      try {
        return await settled(
          clients.map((c, i) => (read.parts[i] as SideRead<T>['parts'][number])(rowsOf(c, this.db.side))),
        );
      } finally {
        this.clock.reading(-n);
      }
    } catch (err) {
      broken = true;
      throw err;
    } finally {
      // A read-only transaction: COMMIT ends it. A failed reader's connection is ended instead (its
      // transaction with it), never handed to another read.
      if (!broken) await Promise.all(clients.map((c) => c.query('COMMIT'))).catch(() => (broken = true));
      this.give(clients, broken);
    }
  }

  /** Time during which at least one reader of this side was reading (not the sum of the readers' times). */
  get busyMs(): number {
    return this.clock.busyMs;
  }

  /** The most readers reading this side at once. */
  get peak(): number {
    return this.clock.peak;
  }

  /** Ends every connection (the reads are done). */
  async close(): Promise<void> {
    this.closed = true;
    // Reads still waiting for readers go on to find them closed (and fail) instead of waiting for ever.
    for (const w of this.waiting.splice(0)) w.grant();
    const all = [...this.opened];
    this.opened.clear();
    this.idle.length = 0;
    await Promise.all(all.map((c) => c.end().catch(() => {})));
  }

  /** n readers' connections, once n are free and every read that asked before has had its own. */
  private async take(n: number): Promise<pg.Client[]> {
    if (this.waiting.length === 0 && this.free >= n) this.free -= n;
    else await new Promise<void>((grant) => this.waiting.push({ n, grant }));
    const clients: pg.Client[] = [];
    try {
      while (clients.length < n) {
        if (this.closed) throw new PgferryError(`${this.db.side}: verify's readers are closed`);
        const c =
          this.idle.pop() ??
          (await connectClient(this.db.url, { side: this.db.side, applicationName: this.applicationName }));
        this.opened.add(c);
        clients.push(c);
      }
      return clients;
    } catch (err) {
      this.give(clients, true, n);
      throw err;
    }
  }

  /** Back to the idle ones (or ended, after a failure), and their places to whoever waits. */
  private give(clients: pg.Client[], broken: boolean, places = clients.length) {
    for (const c of clients) {
      if (broken || this.closed) {
        this.opened.delete(c);
        c.end().catch(() => {});
      } else this.idle.push(c);
    }
    this.free += places;
    for (let w = this.waiting[0]; w && w.n <= this.free; w = this.waiting[0]) {
      this.waiting.shift();
      this.free -= w.n;
      w.grant();
    }
  }
}

/**
 * How long, and by how many readers at most, one side was read: readers start and stop reading (`delta`
 * of them at `now`); the time counted is the time at least one was reading, so that a side's MiB/s
 * is its bytes over the time it was being read, however many readers shared that time.
 */
export class ReadingClock {
  private now = 0;
  private since = 0;
  busyMs = 0;
  peak = 0;

  reading(delta: number, at = performance.now()) {
    if (this.now === 0 && delta > 0) this.since = at;
    this.now += delta;
    if (this.now === 0) this.busyMs += at - this.since;
    this.peak = Math.max(this.peak, this.now);
  }
}

/** Every promise settled; then the first failure thrown, or all the results. */
async function settled<T>(promises: Promise<T>[]): Promise<T[]> {
  const all = await Promise.allSettled(promises);
  const failed = all.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return all.map((r) => (r as PromiseFulfilledResult<T>).value);
}
