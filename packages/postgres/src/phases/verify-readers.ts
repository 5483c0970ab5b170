/**
 * Verify's readers of one side: up to `--jobs` connections of their own reading at once. A read asks
 * for as many readers as it has parts (ranges of one table's heap) and gets them all together, in order
 * of asking: readers holding a snapshot never wait on a connection another read holds, so reads cannot
 * wait on one another. The parts of one read are read at one point: the first reader takes a
 * REPEATABLE READ snapshot and exports it (pg_export_snapshot), every other reader imports it (SET
 * TRANSACTION SNAPSHOT) before any of them reads, as the load's streams do.
 *
 * Every reader holds the table's ACCESS SHARE lock before anyone reads (the first one before it takes
 * the snapshot), taken with NOWAIT. Otherwise a session asking for ACCESS EXCLUSIVE (DDL, TRUNCATE, a
 * replicated TRUNCATE on the replica) between two readers' first reads queues behind the first, the
 * second queues behind it, and the first's transaction ends only once the second has read: a wait
 * cycle no server sees, until lock_timeout. A lock not granted at once ends every reader's transaction
 * (the session asking passes) and all of them begin again, for LOCK_WAIT_MS at most; then the read fails
 * naming the table and the sessions holding or asking for that lock (VerifyLockedError: resumable, the
 * migration is never rolled back for it and the cutover does not go ahead on it). Taken before the
 * snapshot, the lock also keeps a table rewrite from committing between the snapshot and the reads (the
 * rows it rewrote would be invisible to the snapshot: an empty table).
 */
import { PgferryError, redactText, VerifyLockedError } from '@pgferry/core';
import type pg from 'pg';
import { connectClient, type Db, literal, sleep } from '../db';
import type { VerifyReaderPoint } from './context';

/** How long a read's readers keep beginning again while their table's lock is not granted at once. */
export const LOCK_WAIT_MS = 30_000;

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
  /** The table every part reads, as SQL (schema-qualified, quoted): locked by every reader before anyone reads. */
  relation: string;
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
    /** How long a read keeps beginning again while its table's lock is not granted at once. */
    private readonly lockWaitMs = LOCK_WAIT_MS,
    /** Run on each reader's connection once it is opened (settings of how values read as text). */
    private readonly setup?: string,
  ) {
    this.free = size;
  }

  /**
   * Reads `read`'s parts at one point of this side, each by its own reader, and returns their results
   * in order. `positioned` gets the side's WAL insert position, read in the first reader's snapshot
   * (after it: every commit the read sees is before it), once, when every reader holds the table's lock
   * in that snapshot and before anyone reads (readers that had to begin again, a lock not granted at
   * once, tell only the position of the attempt that read).
   */
  async atOnePoint<T>(read: SideRead<T>, positioned?: (lsn: string) => void): Promise<T[]> {
    const n = Math.max(1, Math.min(read.parts.length, this.size));
    if (n < read.parts.length) throw new Error(`verify: ${read.parts.length} parts for ${this.size} readers`);
    const clients = await this.take(n);
    const say = (reader: number, stage: VerifyReaderPoint['stage']) =>
      this.point?.({ side: this.db.side, live: read.live, table: read.label, reader, readers: n, stage });
    let broken = false;
    try {
      await this.enter(clients, read, say, positioned);
      this.clock.reading(n);
      try {
        return await settled(
          clients.map(async (c, i) => {
            await say(i, 'reading');
            return (read.parts[i] as SideRead<T>['parts'][number])(rowsOf(c, this.db.side));
          }),
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

  /**
   * Every reader in one transaction, holding the table's ACCESS SHARE lock, in the first reader's
   * snapshot (taken once it holds the lock), whose WAL position `positioned` is told. While the lock is
   * not granted at once to one of them, all their transactions end and they begin again, for
   * lockWaitMs at most.
   */
  private async enter(
    clients: pg.Client[],
    read: SideRead<unknown>,
    say: (reader: number, stage: VerifyReaderPoint['stage']) => Promise<void> | undefined,
    positioned?: (lsn: string) => void,
  ): Promise<void> {
    const [lead, ...others] = clients as [pg.Client, ...pg.Client[]];
    const lock = (c: pg.Client) =>
      rowsOf(c, this.db.side)(`LOCK TABLE ONLY ${read.relation} IN ACCESS SHARE MODE NOWAIT`);
    const started = performance.now();
    for (let attempt = 0; ; attempt++) {
      try {
        await say(0, 'start');
        await lead.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
        // The lock before the snapshot (LOCK takes none): no rewrite of the table commits after it.
        await lock(lead);
        // The snapshot is taken by this first query, the position read during it: after the snapshot.
        const [first] = await rowsOf(
          lead,
          this.db.side,
        )<{ lsn: string; snapshot: string | null }>(
          `SELECT pg_current_wal_insert_lsn()::text AS lsn, ${clients.length > 1 ? 'pg_export_snapshot()' : 'NULL'} AS snapshot`,
        );
        await say(0, 'snapshot');
        // Every reader in the snapshot and holding the lock before anyone reads: the exporting
        // transaction stays open until then.
        await settled(
          others.map(async (c, i) => {
            await say(i + 1, 'start');
            await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
            await rowsOf(c, this.db.side)(`SET TRANSACTION SNAPSHOT ${literal(first?.snapshot ?? '')}`);
            await lock(c);
            await say(i + 1, 'snapshot');
          }),
        );
        // Told only now, once this attempt cannot begin again: a position told before every reader held
        // the lock sent the other side to wait for, and read at, a point a retry then left behind.
        positioned?.(first?.lsn as string);
        return;
      } catch (err) {
        if (!lockNotAvailable(err)) throw err;
        // All out of their transactions, so that the session asking for the lock gets it; then again.
        await Promise.all(clients.map((c) => c.query('ROLLBACK')));
        if (performance.now() - started >= this.lockWaitMs) throw await this.blocked(read, err);
        await sleep(Math.min(1_000, 25 * 2 ** attempt));
      }
    }
  }

  /** The error of a read whose table's lock was never granted at once: the table and who holds or asks for it. */
  private async blocked(read: SideRead<unknown>, err: unknown): Promise<VerifyLockedError> {
    const who = await this.db
      .query<{ pid: number; granted: boolean; app: string | null; usr: string | null; state: string | null }>(
        `SELECT l.pid, l.granted, a.application_name AS app, a.usename::text AS usr, a.state
           FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'relation' AND l.relation = to_regclass($1)
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.mode = 'AccessExclusiveLock' AND l.pid <> pg_backend_pid()
          ORDER BY l.granted DESC, l.pid`,
        [read.relation],
      )
      .catch(() => []);
    const sessions = who.map(
      (w) =>
        `pid ${w.pid} (${w.granted ? 'holds it' : 'asks for it'}; application ${JSON.stringify(w.app ?? '')}, user ${JSON.stringify(w.usr ?? '')}, ${w.state ?? 'state unknown'})`,
    );
    const s = Math.round(this.lockWaitMs / 1000);
    return new VerifyLockedError(
      `${this.db.side}: verify could not read ${read.label}: its ACCESS EXCLUSIVE lock was held or asked for by another session for ${s} s: ${sessions.length ? sessions.join(', ') : 'the session had ended when looked for'}`,
      {
        cause: err,
        field: read.label,
        hint: `${read.label} is not verified; nothing was undone (before the switch: nothing switched or frozen, replication goes on). Let that session's DDL, TRUNCATE, VACUUM FULL or CLUSTER finish, or end it on the ${this.db.side} (SELECT pg_terminate_backend(<pid>)); then verify again (before the switch, \`pgferry resume --id <id>\` does).`,
      },
    );
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
        let c = this.idle.pop();
        if (!c) {
          c = await connectClient(this.db.url, { side: this.db.side, applicationName: this.applicationName });
          this.opened.add(c);
          if (this.setup) await c.query(this.setup);
        }
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

/** A lock asked for with NOWAIT and not granted at once (lock_not_available), from rowsOf or pg. */
function lockNotAvailable(err: unknown): boolean {
  const e = err as { code?: string; cause?: { code?: string } };
  return e?.code === '55P03' || e?.cause?.code === '55P03';
}

/** Every promise settled; then the first failure thrown, or all the results. */
async function settled<T>(promises: Promise<T>[]): Promise<T[]> {
  const all = await Promise.allSettled(promises);
  const failed = all.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return all.map((r) => (r as PromiseFulfilledResult<T>).value);
}
