/**
 * Bulk load. `snapshot` (default): publication and slot first, the slot's exported snapshot held open
 * while `--jobs` streams COPY every table inside it (large tables split into ctid ranges), then
 * indexes and constraints. `native`: a subscription with copy_data. `dump`: pg_dump --snapshot to the
 * artifact store, then pg_restore --jobs.
 */
import { randomUUID } from 'node:crypto';
import { statSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import {
  BulkLoadFailedError,
  type CopyPlan,
  type MigrationState,
  objectNames,
  type PlannedCopy,
  splitIntoShares,
} from '@pgferry/core';
import type pg from 'pg';
import { copyableTables, listTables, SCHEDULER_EXTENSIONS, type TableInfo } from '../catalog';
import { relayCopy } from '../copy-relay';
import { undoOnInterrupt } from '../critical';
import { connectClient, type Db, ident, qualified, sleep } from '../db';
import { dumpInto, restoreFrom } from '../dump-stream';
import {
  createSlotWithSnapshot,
  createSubscription,
  dropSlot,
  dropSubscription,
  ensurePublication,
  slotExists,
} from '../replication';
import { artifactFile, findTool, runTool, toolConnection } from '../tools';
import { type DumpStore, type PhaseContext, partitionsViaRoot, type StoredDump, sourceMajor } from './context';
import {
  buildPostData,
  buildPostDataLines,
  buildTablePostData,
  type PostDataPlan,
  planPostData,
  prepareTablePostData,
  type TablePostDataPrep,
} from './prepare-schema';

/**
 * Builds tables' own indexes and constraints one table at a time while the copy goes on, so the
 * biggest table's index build overlaps the copy of the rest instead of following it. The post-data
 * plan and what each big table's build needs from the catalogs are read while the slot is made and
 * the copy runs, so a build starts the moment its table's last rows are in.
 */
/** How often a stopped builder cancels its builds again until none runs (see EarlyIndexBuilder.stop). */
const STOP_POLL_MS = 200;

class EarlyIndexBuilder {
  private chain: Promise<void> = Promise.resolve();
  error: unknown;
  /** TOC lines built so far (left out of the final post-data restore). */
  readonly built = new Set<string>();
  /** Tables analyzed right after their indexes (left out of the final ANALYZE). */
  readonly analyzed = new Set<number>();
  tables = 0;
  /** Big tables analyzed during the copy (the rest of `analyzed` are small ones). */
  bigAnalyzed = 0;
  /** Small tables whose own indexes were built during the copy, in batches (see streamIdle). */
  smallTables = 0;
  /** Small tables copied whose indexes wait for the next batch. */
  private readonly smallCopied: TableInfo[] = [];
  private readonly analyses: Promise<void>[] = [];
  /** Set once every row is in: a build that ends later leaves its ANALYZE to catch-up (`deferred`). */
  copyEnded = false;
  /** Tables built after the copy ended, whose statistics catch-up gathers (state.tablesToAnalyze). */
  readonly deferred = new Map<number, string>();
  /** Per big table, what its build reads from the catalogs, asked for before its rows are in. */
  private readonly prepared: Promise<Map<number, Promise<TablePostDataPrep>>>;

  constructor(
    private readonly ctx: PhaseContext,
    private readonly plan: Promise<PostDataPlan>,
    tables: TableInfo[],
  ) {
    const big = tables.filter((t) => t.heapBytes >= ctx.config.earlyIndexBytes);
    this.prepared = plan.then((p) => {
      const out = new Map<number, Promise<TablePostDataPrep>>();
      for (const t of big) {
        const lines = p.byTable.get(t.oid);
        if (!lines?.length) continue;
        const prep = prepareTablePostData(ctx, lines);
        // Failed, it fails its build (awaited there), not the process.
        prep.catch(() => {});
        out.set(t.oid, prep);
      }
      return out;
    });
    // A plan that cannot be made fails the load at the next item, not after the whole copy.
    this.prepared.catch((err) => {
      this.error ??= err;
    });
  }

  /** Called when every range of `table` has been copied. */
  tableCopied(table: TableInfo) {
    // Small tables' indexes cost less than a pg_restore of their own: they wait for a batch.
    if (table.heapBytes < this.ctx.config.earlyIndexBytes) {
      this.smallCopied.push(table);
      return;
    }
    this.chain = this.chain.then(async () => {
      if (this.error) return;
      try {
        const plan = await this.plan;
        const lines = plan.byTable.get(table.oid);
        if (!lines?.length) return;
        const prep = await (await this.prepared).get(table.oid);
        await this.ctx.faults?.earlyBuild?.(qualified(table));
        // The load may have failed meanwhile (see stop).
        if (this.error) return;
        await buildTablePostData(this.ctx, table.oid, lines, prep);
        for (const l of lines) this.built.add(l);
        this.tables++;
        // Its statistics too, while the copy goes on, unless an index it has is still to come. Beside
        // the next table's build (and the final post-data restore), not before it: no lock in common.
        // Once the copy has ended, nothing is left to overlap here: catch-up gathers them while
        // replication starts (the gate waits for them), instead of the load waiting for them.
        if (plan.lateStats.has(table.oid)) return;
        if (this.copyEnded) this.deferred.set(table.oid, qualified(table));
        else
          this.analyses.push(
            this.ctx.target.query(`ANALYZE ${qualified(table)}`).then(
              () => {
                this.analyzed.add(table.oid);
                this.bigAnalyzed++;
              },
              (err) => {
                this.error ??= err;
              },
            ),
          );
      } catch (err) {
        this.error = err;
      }
    });
  }

  /**
   * A copy stream found nothing left to start while another still copies: the small tables copied so
   * far get their own indexes and constraints now, in one pg_restore, and their statistics, while the
   * other streams finish their big tables (on a database of one big table and small ones, that is CPU
   * the copy leaves idle). Those copied later wait for the next idle stream or the final post-data.
   */
  streamIdle() {
    if (this.copyEnded || !this.smallCopied.length) return;
    const batch = this.smallCopied.splice(0);
    this.chain = this.chain.then(async () => {
      if (this.error) return;
      try {
        const plan = await this.plan;
        const lines = batch.flatMap((t) => plan.byTable.get(t.oid) ?? []);
        if (lines.length) await buildPostDataLines(this.ctx, `post-data-small-${batch[0]?.oid}`, lines);
        for (const l of lines) this.built.add(l);
        this.smallTables += batch.filter((t) => plan.byTable.get(t.oid)?.length).length;
        const analyze = batch.filter((t) => !t.unlogged && !plan.lateStats.has(t.oid));
        if (this.copyEnded || !analyze.length) return;
        this.analyses.push(
          analyzeTables(this.ctx, analyze).then(
            () => {
              for (const t of analyze) this.analyzed.add(t.oid);
            },
            (err) => {
              this.error ??= err;
            },
          ),
        );
      } catch (err) {
        this.error = err;
      }
    });
  }

  /** Every build started so far is done (statistics may still be gathered: see `statistics`). */
  async finish(): Promise<{ plan: PostDataPlan; built: Set<string> }> {
    await this.chain;
    if (this.error) throw this.error;
    return { plan: await this.plan, built: this.built };
  }

  /**
   * The load failed: no build that has not started yet starts, and those running (their pg_restore
   * and key-building sessions on the target) are cancelled, again until none is left, so that the
   * failure is reported (and the rollback begins) at once, not after hours of index builds of a load
   * that is thrown away. Resolves once nothing of the builder runs.
   */
  async stop(err: unknown): Promise<void> {
    this.error ??= err;
    let settled = false;
    const done = this.statistics()
      .catch(() => {})
      .finally(() => {
        settled = true;
      });
    const app = `${objectNames(this.ctx.config.id).applicationName}:pg_restore`;
    while (!settled) {
      await this.ctx.target
        .query(
          'SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()',
          [app],
        )
        .catch(() => {});
      await Promise.race([done, sleep(STOP_POLL_MS)]);
    }
  }

  /** Every build is done, and every ANALYZE they started (and the catalog reads ahead of them). */
  async statistics(): Promise<void> {
    await this.prepared.catch(() => {});
    await this.chain;
    await Promise.all(this.analyses);
    if (this.error) throw this.error;
  }
}

export interface CopyItem {
  table: TableInfo;
  /** ctid block range [from, to); undefined = whole table. */
  blocks?: { from: number; to?: number };
  estBytes: number;
  /** `char(n)` columns sent without their trailing blanks (the target's input adds them back). */
  unpadded?: string[];
}

/** A table goes in binary COPY format when every column it sends can. */
const binaryCopy = (t: TableInfo) => t.columns.every((c) => c.binary || c.generated);

/** Tables smaller than this are copied as they are: what trimming saves on them is not worth a sample. */
const UNPAD_MIN_BYTES = 8 * 1024 ** 2;
/** A `char(n)` column is sent trimmed when the sampled rows carry at least this many blank bytes on average. */
const UNPAD_MIN_BLANKS = 16;
/** Pages read (at random, the same ones every time) to measure the blanks. */
const UNPAD_SAMPLE_PAGES = 256;
/** The source's bytes of a `char(n)` value without trailing blanks (what binary COPY sends, less them). */
const unpaddedSql = (column: string) =>
  `pg_catalog.rtrim(pg_catalog.bpcharsend(${ident(column)}), '\\x20'::pg_catalog.bytea)`;

/**
 * The `char(n)` columns of a table worth sending without their padding. A wide `char(n)` column is
 * mostly blanks that the target must receive and count character by character (pgbench's
 * `filler char(84)`: 84 of a row's 114 bytes, a third of the target's COPY time). Sent without
 * them, `char(n)`'s input function pads the value back to n characters: the stored value is the
 * same. Only binary COPY: there the bytes of bytea and of char(n) travel alike. `rtrim(bytea)`
 * needs PostgreSQL 14 on the source.
 */
async function unpaddedColumns(ctx: PhaseContext, t: TableInfo, sourceVersion: number): Promise<string[]> {
  const padded = t.columns.filter((c) => c.padded && !c.generated);
  if (!padded.length || sourceVersion < 14 || t.heapBytes < UNPAD_MIN_BYTES) return [];
  if (!binaryCopy(t)) return [];
  // A few pages at random: bounded reading whatever the table holds (dead rows, a huge heap).
  const percent = Math.min(100, (100 * UNPAD_SAMPLE_PAGES * 8192) / t.heapBytes);
  try {
    const blanks = await ctx.source.one<Record<string, string | null>>(
      `SELECT ${padded
        .map(
          (c, i) =>
            `pg_catalog.avg(pg_catalog.octet_length(pg_catalog.bpcharsend(${ident(c.name)})) - pg_catalog.octet_length(${unpaddedSql(c.name)})) AS c${i}`,
        )
        .join(', ')} FROM ONLY ${qualified(t)} TABLESAMPLE SYSTEM (${percent.toFixed(6)}) REPEATABLE (1)`,
    );
    return padded.filter((_, i) => Number(blanks[`c${i}`] ?? 0) >= UNPAD_MIN_BLANKS).map((c) => c.name);
  } catch (err) {
    // Calling bpcharsend or rtrim needs EXECUTE on them (COPY's own output needs none): a source
    // that revoked it is copied as it stores its values. Anything else fails the load, as it would.
    if ((err as { cause?: { code?: string } }).cause?.code !== '42501') throw err;
    ctx.log(
      `${qualified(t)}: char(n) columns copied with their padding (${err instanceof Error ? err.message : String(err)})`,
    );
    return [];
  }
}

/** Work items, largest first; tables above the split size become ctid block ranges of about that size. */
export async function planCopy(ctx: PhaseContext, tables: TableInfo[], streams = ctx.config.jobs): Promise<CopyItem[]> {
  const items: CopyItem[] = [];
  const sourceVersion = await sourceMajor(ctx);
  for (const t of copyableTables(tables)) {
    const unpadded = await unpaddedColumns(ctx, t, sourceVersion);
    const trim = unpadded.length ? { unpadded } : {};
    if (t.heapBytes <= ctx.config.splitTableBytes) {
      items.push({ table: t, estBytes: t.heapBytes, ...trim });
      continue;
    }
    const { pages } = await ctx.source.one<{ pages: number }>(
      "SELECT pg_relation_size($1::regclass) / current_setting('block_size')::int AS pages",
      [qualified(t)],
    );
    // At least one range per stream: the whole crew copies a big table, so it is finished early and
    // its indexes build while the rest is copied.
    const parts = Math.max(2, streams, Math.ceil(t.heapBytes / ctx.config.splitTableBytes));
    const step = Math.max(1, Math.ceil(pages / parts));
    for (let from = 0; from < pages; from += step) {
      // The last range is open-ended: rows may live past the page count read a moment ago.
      const to = from + step >= pages ? undefined : from + step;
      items.push({ table: t, blocks: { from, to }, estBytes: Math.round(t.heapBytes / parts), ...trim });
    }
  }
  return items.sort((a, b) => b.estBytes - a.estBytes);
}

function copySql(item: CopyItem, binary: boolean, freeze: boolean) {
  const columns = item.table.columns.filter((c) => !c.generated).map((c) => c.name);
  const list = columns.map(ident).join(', ');
  // What the source sends, column by column (trimmed char(n) values only in binary).
  const unpadded = binary ? new Set(item.unpadded) : new Set<string>();
  const selected = columns.map((c) => (unpadded.has(c) ? unpaddedSql(c) : ident(c))).join(', ');
  const where = item.blocks
    ? ` WHERE ctid >= '(${item.blocks.from},0)'::tid${item.blocks.to !== undefined ? ` AND ctid < '(${item.blocks.to},0)'::tid` : ''}`
    : '';
  const outOptions = binary ? ' (FORMAT binary)' : '';
  const inOptions = [binary ? 'FORMAT binary' : '', freeze ? 'FREEZE' : ''].filter(Boolean).join(', ');
  // A whole table is read by COPY itself (no executor, no projection); a range or a trimmed
  // column needs a query. COPY of a table never includes its inheritance children, like FROM ONLY.
  const from =
    item.blocks || unpadded.size
      ? `(SELECT ${selected} FROM ONLY ${qualified(item.table)}${where})`
      : `${qualified(item.table)} (${list})`;
  return {
    out: `COPY ${from} TO STDOUT${outOptions}`,
    in: `COPY ${qualified(item.table)} (${list}) FROM STDIN${inOptions ? ` (${inOptions})` : ''}`,
  };
}

/** Copy every item inside the exported snapshot with `jobs` parallel streams. */
export async function copyAll(
  ctx: PhaseContext,
  items: CopyItem[],
  snapshot: string,
  indexes?: EarlyIndexBuilder,
  /** Stops the copy between two items (a share worker whose execution is gone). */
  signal?: AbortSignal,
): Promise<{ rows: number; bytes: number }> {
  // Tables other tables reference through a foreign key (when a restarted load finds constraints
  // already built) cannot be truncated alone, so they are loaded without TRUNCATE + FREEZE.
  const referenced = new Set(
    (
      await ctx.target.query<{ t: string }>(
        "SELECT DISTINCT format('%s.%s', n.nspname, c.relname) AS t FROM pg_constraint k JOIN pg_class c ON c.oid = k.confrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE k.contype = 'f'",
      )
    ).map((r) => r.t),
  );
  const total = items.reduce((s, i) => s + i.estBytes, 0);
  const rowsTotal = [...new Map(items.map((i) => [i.table.oid, Math.max(0, i.table.rowEstimate)])).values()].reduce(
    (a, b) => a + b,
    0,
  );
  /** Bytes sent; bytes counted for progress by the items done, and by each item being copied (see below). */
  let bytes = 0;
  let progressed = 0;
  const inFlight = new Map<CopyItem, number>();
  let rows = 0;
  let rowsSeen = 0;
  const report = () => {
    let done = progressed;
    for (const b of inFlight.values()) done += b;
    ctx.progress?.({ step: 'copy', done, total, unit: 'bytes', rows: rowsSeen, rowsTotal });
  };
  let next = 0;
  const left = new Map<number, number>();
  for (const i of items) left.set(i.table.oid, (left.get(i.table.oid) ?? 0) + 1);
  const app = `${objectNames(ctx.config.id).applicationName}:copy`;
  // The first failure stops every stream: the others' copies in flight are cut off (their target
  // transactions roll back) and no new item starts, so a failed phase does not go on copying.
  let failure: { error: unknown } | undefined;
  const open = new Set<pg.Client>();
  /** Streams that have not run out of items yet. */
  let streaming = 0;
  const worker = async () => {
    let src: pg.Client | undefined;
    let tgt: pg.Client | undefined;
    try {
      src = await connectClient(ctx.config.sourceUrl, { side: 'source', applicationName: app });
      open.add(src);
      tgt = await connectClient(ctx.config.targetUrl, { side: 'target', applicationName: app });
      open.add(tgt);
      if (failure) return;
      await src.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      await src.query(`SET TRANSACTION SNAPSHOT '${snapshot.replace(/'/g, '')}'`);
      await tgt.query('SET synchronous_commit = off');
      // reg* values travel as names: qualified on the way out, resolved the same way on the way in.
      await src.query('SET search_path = pg_catalog');
      await tgt.query('SET search_path = pg_catalog');
      // Copied rows fire no triggers and check no foreign keys: they were checked on the source.
      await tgt.query("SET session_replication_role = 'replica'");
      for (;;) {
        // An index build that failed fails the load now, not after hours more of copying.
        if (indexes?.error) throw indexes.error;
        if (signal?.aborted)
          throw new BulkLoadFailedError('the copy was stopped: its execution ended', { phase: 'bulk-load' });
        const item = failure ? undefined : items[next++];
        if (!item) {
          // Only while another stream still copies: after the last one, the final post-data builds them.
          streaming--;
          if (!failure && streaming > 0) indexes?.streamIdle();
          break;
        }
        const binary = binaryCopy(item.table);
        // A whole table is truncated and loaded in one transaction: re-runnable, and COPY FREEZE
        // writes the rows already frozen so the target needs no anti-wraparound vacuum later.
        const whole = !item.blocks && !referenced.has(`${item.table.schema}.${item.table.name}`);
        const sql = copySql(item, binary, whole);
        await tgt.query('BEGIN');
        if (whole) await tgt.query(`TRUNCATE ONLY ${qualified(item.table)}`);
        // Progress is counted in the source's bytes on disk (the total is their sum): each item
        // counts up to its estimate while it copies, and its estimate once done. Bytes sent stand in
        // for them, except for a trimmed item, which sends far fewer than it holds: it counts by
        // rows when the table's row count is known.
        const trimmed = (item.unpadded?.length ?? 0) > 0;
        const itemRows = Math.max(0, item.table.rowEstimate) * (item.estBytes / Math.max(1, item.table.heapBytes));
        let itemBytes = 0;
        let itemMessages = 0;
        const credit = () =>
          Math.min(item.estBytes, trimmed && itemRows > 0 ? (item.estBytes * itemMessages) / itemRows : itemBytes);
        const copied = await relayCopy(src, tgt, sql.out, sql.in, (n, messages) => {
          itemBytes += n;
          itemMessages += messages;
          bytes += n;
          rowsSeen += messages; // one CopyData message per row
          inFlight.set(item, credit());
          report();
        });
        inFlight.delete(item);
        progressed += item.estBytes;
        report();
        rows += copied.rows;
        await tgt.query('COMMIT');
        const remaining = (left.get(item.table.oid) ?? 1) - 1;
        left.set(item.table.oid, remaining);
        if (remaining === 0) indexes?.tableCopied(item.table);
      }
      if (!failure) await src.query('COMMIT');
    } catch (error) {
      if (!failure) {
        failure = { error };
        for (const c of open) if (c !== src && c !== tgt) c.end().catch(() => {});
      }
    } finally {
      for (const c of [src, tgt]) {
        if (!c) continue;
        open.delete(c);
        await c.end().catch(() => {});
      }
    }
  };
  const jobs = Math.max(1, Math.min(ctx.config.jobs, items.length));
  streaming = jobs;
  await Promise.all(Array.from({ length: jobs }, worker));
  if (failure) throw failure.error;
  return { rows, bytes };
}

async function analyzeTables(ctx: PhaseContext, tables: TableInfo[], done: Set<number> = new Set()) {
  const queue = tables.filter((t) => !t.unlogged && !done.has(t.oid)).map(qualified);
  const worker = async () => {
    for (let t = queue.shift(); t; t = queue.shift()) await ctx.target.query(`ANALYZE ${t}`);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(ctx.config.jobs, queue.length)) }, worker));
}

/** Empty every copied table on the target: a restarted copy starts from a clean slate. */
async function truncateTarget(ctx: PhaseContext, tables: TableInfo[]) {
  const list = copyableTables(tables).map(qualified);
  if (list.length) await ctx.target.query(`TRUNCATE ${list.join(', ')}`);
}

/**
 * Ends the copy sessions an earlier attempt of this migration may have left running (a share worker
 * of a failed scaled-out load): a range it committed after the truncate below would be a duplicate.
 */
async function endStaleCopies(ctx: PhaseContext) {
  const app = `${objectNames(ctx.config.id).applicationName}:copy`;
  for (const db of [ctx.target, ctx.source]) {
    const stale = await db.query<{ pid: number }>(
      'SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() AND pid <> pg_backend_pid()',
      [app],
    );
    if (!stale.length) continue;
    // Read first, ended after: a qual's evaluation order is the planner's, never a filter to rely on.
    await db.query('SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid', [stale.map((r) => r.pid)]);
    ctx.log(`ended ${stale.length} copy session(s) of an earlier bulk load on the ${db.side}`);
  }
}

/** How the coordinator runs the copy's shares. */
export interface BulkLoadOptions {
  /** Names this attempt (the state machine passes its execution and entry time); a fresh one otherwise. */
  loadId?: string;
  /**
   * Other workers copy the shares (the state machine's Map runs `copyShare` once per share) when the
   * migration's copyWorkers is above 1: the coordinator records the plan, keeps the exporting session
   * open, and reads their reports through `read` every `pollMs`. `signal` ends the wait (the execution
   * is gone: the worker's heartbeat was refused). Without it the coordinator copies everything itself.
   */
  shares?: { read(): Promise<MigrationState>; pollMs?: number; signal?: AbortSignal };
}

interface LoadRun {
  loadId: string;
  shares?: BulkLoadOptions['shares'];
}

const nothingForWorkers = (loadId: string, snapshot = '', slotLsn = ''): CopyPlan => ({
  loadId,
  snapshot,
  slotLsn,
  plannedAt: new Date().toISOString(),
  shares: [],
  inProcess: true,
});

async function snapshotLoad(
  ctx: PhaseContext,
  tables: TableInfo[],
  via: 'copy' | 'dump',
  run: LoadRun,
  indexes?: EarlyIndexBuilder,
) {
  const names = objectNames(ctx.config.id);
  await ensurePublication(ctx.source, names.publication, tables, { viaRoot: await partitionsViaRoot(ctx) });
  if (await slotExists(ctx.source, names.slot)) {
    // The exported snapshot died with the previous run's connection: the copy cannot resume inside
    // it, so start over with a new slot and an empty target.
    ctx.log('a previous bulk load did not finish: dropping its slot and starting the copy again');
    await dropSlot(ctx.source, names.slot);
  }
  await endStaleCopies(ctx);
  await truncateTarget(ctx, tables);
  const major = await sourceMajor(ctx);
  const exported = await createSlotWithSnapshot(ctx.source, ctx.config.sourceUrl, names.slot, {
    applicationName: `${names.applicationName}:slot`,
    timeoutMs: ctx.config.slotWaitTimeoutMs,
    log: ctx.log,
    major,
  });
  // Interrupted, the copy cannot go on in this snapshot (a resume starts it again with a new slot):
  // the slot would only retain WAL on the source meanwhile, so a signal drops it. The failure path
  // drops it too, through the same promise (two drops at once would end each other's session).
  let dropping: Promise<string> | undefined;
  const drop = () => {
    dropping ??= (async () => {
      await exported.close().catch(() => {});
      await dropSlot(ctx.source, names.slot);
      return `dropped replication slot ${names.slot} of the unfinished copy`;
    })();
    return dropping;
  };
  return await undoOnInterrupt(drop, async () => {
    try {
      // The state machine waits for the store's event of this attempt's dump: an earlier attempt's
      // object goes first, so that nothing but this dump can be announced.
      const announced = via === 'dump' && run.shares !== undefined && ctx.dumpStore?.announces === true;
      if (announced) await ctx.dumpStore?.discard?.(ctx.config.id);
      await ctx.update((s) => {
        s.slotLsn = exported.lsn;
        if (via === 'dump' && run.shares)
          s.copyPlan = {
            ...nothingForWorkers(run.loadId, exported.snapshot, exported.lsn),
            ...(announced ? { dumpUpload: {} } : {}),
          };
      });
      ctx.log(`slot ${names.slot} created at ${exported.lsn}; copying inside snapshot ${exported.snapshot}`);
      return await loadInSnapshot(ctx, tables, via, exported, major, run, indexes);
    } catch (err) {
      // No slot may outlive a failed copy: it would retain WAL on the source forever.
      await drop().catch(() => {});
      throw err;
    } finally {
      await exported.close().catch(() => {});
    }
  });
}

const plannedCopy = (i: CopyItem): PlannedCopy => ({
  schema: i.table.schema,
  name: i.table.name,
  ...(i.blocks ? { blocks: i.blocks } : {}),
  estBytes: i.estBytes,
  ...(i.unpadded?.length ? { unpadded: i.unpadded } : {}),
});

/** A plan's items back as copy items of `tables` (the share worker's own catalog read). */
export function copyItems(planned: PlannedCopy[], tables: TableInfo[]): CopyItem[] {
  const byName = new Map(tables.map((t) => [`${t.schema}.${t.name}`, t]));
  return planned.map((p) => {
    const table = byName.get(`${p.schema}.${p.name}`);
    if (!table)
      throw new BulkLoadFailedError(`table ${p.schema}.${p.name} of the copy plan is not on the source any more`, {
        phase: 'bulk-load',
        hint: 'a table was dropped or renamed during the load: resume the migration to plan the copy again',
      });
    return { table, blocks: p.blocks, estBytes: p.estBytes, unpadded: p.unpadded };
  });
}

/** The copy plan of attempt `loadId`, read again; the load ends when its execution did or another attempt replaced it. */
async function ownPlan(
  shares: NonNullable<BulkLoadOptions['shares']>,
  loadId: string,
  waiting: string,
): Promise<CopyPlan> {
  if (shares.signal?.aborted)
    throw new BulkLoadFailedError(`the bulk load was stopped ${waiting} (its execution ended)`, {
      phase: 'bulk-load',
      hint: 'resume the migration: the load starts again on an empty target',
    });
  const plan = (await shares.read()).copyPlan;
  if (plan?.loadId !== loadId)
    throw new BulkLoadFailedError(`another bulk load (${plan?.loadId ?? 'none'}) replaced the plan of ${loadId}`, {
      phase: 'bulk-load',
      hint: 'one bulk load of a migration runs at a time: stop the other execution, then resume',
    });
  return plan;
}

/**
 * The coordinator's wait: every share reported done (their rows and bytes), or one failed (the load
 * ends with its error), or the execution is gone. The exporting session stays open meanwhile.
 */
async function awaitShares(
  ctx: PhaseContext,
  loadId: string,
  shares: NonNullable<BulkLoadOptions['shares']>,
): Promise<{ rows: number; bytes: number }> {
  let reported = -1;
  for (;;) {
    const plan = await ownPlan(shares, loadId, 'while its workers copied');
    const count = plan.shares.length;
    const failed = plan.shares.findIndex((s) => s.failedAt);
    if (failed >= 0)
      throw new BulkLoadFailedError(`share ${failed + 1} of ${count} failed: ${plan.shares[failed]?.failure}`, {
        phase: 'bulk-load',
        hint: 'fix the cause, then resume the migration: the load starts again on an empty target',
      });
    const done = plan.shares.filter((s) => s.doneAt);
    const total = plan.shares.reduce((sum, s) => sum + s.estBytes, 0);
    ctx.progress?.({ step: 'copy', done: done.reduce((sum, s) => sum + s.estBytes, 0), total, unit: 'bytes' });
    if (done.length === count)
      return {
        rows: done.reduce((sum, s) => sum + (s.rows ?? 0), 0),
        bytes: done.reduce((sum, s) => sum + (s.bytes ?? 0), 0),
      };
    if (done.length !== reported) ctx.log(`${done.length} of ${count} shares copied`);
    reported = done.length;
    await sleep(shares.pollMs ?? 2000);
  }
}

async function loadInSnapshot(
  ctx: PhaseContext,
  tables: TableInfo[],
  via: 'copy' | 'dump',
  exported: { snapshot: string; lsn: string },
  major: number,
  run: LoadRun,
  indexes?: EarlyIndexBuilder,
): Promise<string> {
  const { snapshot } = exported;
  if (via === 'copy') {
    const workers = run.shares ? Math.max(1, ctx.config.copyWorkers ?? 1) : 1;
    // Large tables split so that every stream of every worker has a range of them.
    const items = await planCopy(ctx, tables, ctx.config.jobs * workers);
    const parts = splitIntoShares(items, workers);
    const inProcess = parts.length === 1;
    await ctx.update((s) => {
      s.copyPlan = {
        loadId: run.loadId,
        snapshot,
        slotLsn: exported.lsn,
        plannedAt: new Date().toISOString(),
        // Copied here, the items are not written out: a plan of thousands of tables is not small.
        shares: parts.map((p) => ({
          items: inProcess ? [] : p.map(plannedCopy),
          estBytes: p.reduce((sum, i) => sum + i.estBytes, 0),
        })),
        ...(inProcess ? { inProcess } : {}),
      };
    });
    const started = performance.now();
    const { rows, bytes } =
      inProcess || !run.shares
        ? await copyAll(ctx, items, snapshot, indexes)
        : await awaitShares(ctx, run.loadId, run.shares);
    const seconds = (performance.now() - started) / 1000;
    await ctx.update((s) => {
      s.rowsCopied = rows;
      s.bytesCopied = bytes;
      const share = inProcess && s.copyPlan?.loadId === run.loadId ? s.copyPlan.shares[0] : undefined;
      if (share) Object.assign(share, { doneAt: new Date().toISOString(), rows, bytes });
    });
    const unpadded = new Set(items.filter((i) => i.unpadded?.length).map((i) => i.table.oid)).size;
    // What travelled, not what the tables hold: trimmed char(n) values are far smaller than stored.
    const trimmed = unpadded ? `; the target added back the char(n) padding of ${unpadded} table(s)` : '';
    const streams = Math.min(ctx.config.jobs, items.length);
    const by = inProcess ? `${streams} streams` : `${parts.length} workers of ${ctx.config.jobs} streams`;
    return `${rows} rows (${(bytes / 1024 / 1024).toFixed(1)} MiB sent) copied by ${by} from ${copyableTables(tables).length} tables in ${seconds.toFixed(1)} s${trimmed}`;
  }
  // pg_dump carries only the rows an extension's filter picks from its configuration tables and adds
  // them to those the target's extension made; pgferry copies such tables whole, in every strategy,
  // so that they equal the source's (and verify). They are small and go over COPY in the same snapshot.
  const configTables = copyableTables(tables).filter((t) => t.extension);
  const restored = await dumpAndRestore(ctx, snapshot, major, configTables, run);
  if (configTables.length === 0) return restored;
  const { rows } = await copyAll(ctx, await planCopy(ctx, configTables), snapshot);
  return `${restored}; ${rows} rows of ${configTables.length} extension configuration table(s) copied`;
}

/** The configuration tables and sequences of SCHEDULER_EXTENSIONS, quoted. */
async function schedulerRelations(db: Db): Promise<string[]> {
  const rows = await db.query<{ t: string }>(
    `SELECT format('%I.%I', n.nspname, c.relname) AS t
       FROM pg_extension x CROSS JOIN LATERAL unnest(x.extconfig) AS cfg(oid)
       JOIN pg_class c ON c.oid = cfg.oid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE x.extname = ANY ($1) ORDER BY 1`,
    [SCHEDULER_EXTENSIONS],
  );
  return rows.map((r) => r.t);
}

async function dumpAndRestore(
  ctx: PhaseContext,
  snapshot: string,
  major: number,
  configTables: TableInfo[],
  run: LoadRun,
): Promise<string> {
  const pgDump = await findTool('pg_dump', major);
  const pgRestore = await findTool('pg_restore', 0);
  if (ctx.dumpStore) return dumpThroughStore(ctx, ctx.dumpStore, snapshot, pgDump, pgRestore, configTables, run);
  const file = artifactFile(ctx.artifactDir, 'data.dump');
  const src = toolConnection(ctx.config.sourceUrl, `${objectNames(ctx.config.id).applicationName}:pg_dump`);
  const dumped = await runTool(
    pgDump,
    [
      '--data-only',
      '--format=custom',
      `--snapshot=${snapshot}`,
      '--no-publications',
      '--no-subscriptions',
      '--exclude-schema=pgferry',
      // A quoted name is a pattern whose every character is literal.
      ...configTables.map((t) => `--exclude-table-data=${qualified(t)}`),
      // A scheduler's jobs stay behind (SCHEDULER_EXTENSIONS): the target would run them too.
      ...(await schedulerRelations(ctx.source)).map((t) => `--exclude-table-data=${t}`),
      '--file',
      file,
      '--dbname',
      src.url,
    ],
    src.env,
  );
  if (dumped.code !== 0)
    throw new BulkLoadFailedError(`pg_dump --snapshot failed: ${dumped.stderr.trim()}`, { phase: 'bulk-load' });
  const tgt = toolConnection(ctx.config.targetUrl, `${objectNames(ctx.config.id).applicationName}:pg_restore`);
  const restored = await runTool(
    pgRestore,
    ['--data-only', '--jobs', String(ctx.config.jobs), '--exit-on-error', '--dbname', tgt.url, file],
    tgt.env,
  );
  if (restored.code !== 0)
    throw new BulkLoadFailedError(`pg_restore of the data failed: ${restored.stderr.trim()}`, { phase: 'bulk-load' });
  const { size } = statSync(file);
  return `data dumped to ${file} (${(size / 1024 / 1024).toFixed(1)} MiB) and restored with ${ctx.config.jobs} jobs`;
}

/** How long the coordinator waits for its dump's event once the upload is complete (EventBridge delivers in seconds). */
export const DUMP_EVENT_WAIT_MS = 15 * 60_000;

/**
 * The coordinator's wait for the store's event of its dump (S3 `Object Created`, handled by packages/aws
 * handleS3ObjectCreated): the handler confirms the object (digest and size read back) or refuses it in
 * the copy plan. The exporting session stays open meanwhile; nothing is restored before the event.
 */
async function awaitDumpAnnounced(
  ctx: PhaseContext,
  loadId: string,
  shares: NonNullable<BulkLoadOptions['shares']>,
  stored: StoredDump,
): Promise<void> {
  const started = Date.now();
  ctx.log(`waiting for the S3 event of ${stored.where}`);
  for (;;) {
    const plan = await ownPlan(shares, loadId, 'while it waited for its dump upload event');
    const upload = plan.dumpUpload;
    if (upload?.refused)
      throw new BulkLoadFailedError(
        `the dump ${stored.where} was refused when its upload event came: ${upload.refused}`,
        {
          phase: 'bulk-load',
          hint: 'resume the migration: the load dumps again into a new object',
        },
      );
    const confirmed = upload?.confirmed;
    if (confirmed && confirmed.sha256 === stored.sha256 && confirmed.size === stored.size) {
      ctx.log(`the S3 event of ${stored.where} came after ${((Date.now() - started) / 1000).toFixed(1)} s`);
      return;
    }
    if (Date.now() - started > DUMP_EVENT_WAIT_MS)
      throw new BulkLoadFailedError(
        `no S3 event announced ${stored.where} within ${DUMP_EVENT_WAIT_MS / 60_000} minutes of its upload${confirmed ? ` (the last one announced sha256 ${confirmed.sha256.slice(0, 12)}…, not this dump's ${stored.sha256.slice(0, 12)}…)` : ''}`,
        {
          phase: 'bulk-load',
          hint: 'the artifacts bucket must send its events to EventBridge (the stack turns that on) and the rule must target the dump handler; check both, then resume',
        },
      );
    await sleep(shares.pollMs ?? 2000);
  }
}

/**
 * The `dump` strategy in AWS: pg_dump in the slot's exported snapshot streamed into the store (S3),
 * then the stored object streamed into pg_restore, its digest checked on the way (the restore is one
 * transaction, so a dump refused at its end leaves nothing). Nothing is staged on local disk.
 */
async function dumpThroughStore(
  ctx: PhaseContext,
  store: DumpStore,
  snapshot: string,
  pgDump: string,
  pgRestore: string,
  configTables: TableInfo[],
  run: LoadRun,
): Promise<string> {
  const app = objectNames(ctx.config.id).applicationName;
  const stored = await dumpInto(
    {
      pgDump,
      sourceUrl: ctx.config.sourceUrl,
      snapshot,
      applicationName: `${app}:pg_dump`,
      excludeTableData: [...configTables.map(qualified), ...(await schedulerRelations(ctx.source))],
    },
    (dump) => store.put(ctx.config.id, dump),
  );
  if (ctx.state.copyPlan?.loadId === run.loadId && ctx.state.copyPlan.dumpUpload && run.shares)
    await awaitDumpAnnounced(ctx, run.loadId, run.shares, stored);
  ctx.log(`data dumped to ${stored.where} (sha256 ${stored.sha256.slice(0, 12)}…); restoring from it`);
  const { bytes } = await restoreFrom(
    { pgRestore, targetUrl: ctx.config.targetUrl, applicationName: `${app}:pg_restore`, from: stored.where },
    await store.open(stored),
  );
  return `data dumped to ${stored.where} (${(stored.size / 1024 / 1024).toFixed(1)} MiB, sha256 checked) and restored from it (${bytes} bytes)`;
}

/** native: PostgreSQL's own table sync through a subscription that creates its slot and copies. */
async function nativeLoad(ctx: PhaseContext, tables: TableInfo[]): Promise<string> {
  const names = objectNames(ctx.config.id);
  await ensurePublication(ctx.source, names.publication, tables, { viaRoot: await partitionsViaRoot(ctx) });
  const existing = await ctx.target.query('SELECT 1 FROM pg_subscription WHERE subname = $1', [names.subscription]);
  if (existing.length === 0) {
    if (await slotExists(ctx.source, names.slot)) await dropSlot(ctx.source, names.slot);
    await truncateTarget(ctx, tables);
    await createSubscription(ctx.target, names.subscription, ctx.config.sourceUrl, names.publication, names.slot, {
      copyData: true,
      createSlot: true,
    });
  }
  const started = Date.now();
  for (;;) {
    const states = await ctx.target.query<{ state: string; n: number }>(
      `SELECT srsubstate AS state, count(*)::int AS n FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
        WHERE s.subname = $1 GROUP BY 1`,
      [names.subscription],
    );
    const total = states.reduce((s, r) => s + r.n, 0);
    const ready = states.filter((r) => r.state === 'r').reduce((s, r) => s + r.n, 0);
    ctx.progress?.({ step: 'table sync', done: ready, total, unit: 'tables' });
    if (total > 0 && ready === total) break;
    if (total === 0 && Date.now() - started > 5000) break;
    if (Date.now() - started > ctx.config.catchUpTimeoutMs && ctx.config.catchUpTimeoutMs > 0) {
      await dropSubscription(ctx.target, names.subscription);
      throw new BulkLoadFailedError('native table sync did not finish in time', {
        phase: 'bulk-load',
        hint: 'check the target server log for table sync errors',
      });
    }
    await sleep(500);
  }
  const slot = await ctx.source.query<{ lsn: string }>(
    'SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1',
    [names.slot],
  );
  await ctx.update((s) => {
    s.slotLsn = slot[0]?.lsn;
  });
  return `native table sync finished for ${copyableTables(tables).length} tables`;
}

/**
 * Phase "Bulk load", the coordinator: slot and exported snapshot, the copy planned in shares and
 * recorded (`copyPlan`), copied here or by the workers of `options.shares`, then indexes, constraints
 * and statistics. Idempotent: a finished load is recorded; an unfinished one starts again cleanly.
 */
export async function bulkLoad(ctx: PhaseContext, options: BulkLoadOptions = {}): Promise<string> {
  const run: LoadRun = { loadId: options.loadId ?? randomUUID(), shares: options.shares };
  const strategy = ctx.config.strategy;
  // The state machine's poll waits for a plan of this attempt: one with nothing for the workers when
  // there is nothing to copy in shares.
  const noShares = ctx.state.phases['bulk-load']?.endedAt || ctx.state.dataLoadedAt || strategy === 'native';
  if (run.shares && noShares)
    await ctx.update((s) => {
      s.copyPlan = nothingForWorkers(run.loadId);
    });
  const done = ctx.state.phases['bulk-load']?.endedAt;
  if (done) return 'already done';
  const tables = await listTables(ctx.source);
  await ctx.update((s) => {
    s.tables = tables.map((t) => ({ schema: t.schema, name: t.name }));
  });
  let summary: string;
  let early: EarlyIndexBuilder | undefined;
  if (ctx.state.dataLoadedAt) {
    summary = 'data already loaded';
  } else {
    // Planned while the slot is made (the plan is read once the first big table is copied).
    if (strategy === 'snapshot') early = new EarlyIndexBuilder(ctx, planPostData(ctx), tables);
    try {
      summary =
        strategy === 'native'
          ? await nativeLoad(ctx, tables)
          : await snapshotLoad(ctx, tables, strategy === 'dump' ? 'dump' : 'copy', run, early);
    } catch (err) {
      // No pg_restore or ANALYZE may run on after the phase failed, nor hold its report back.
      await early?.stop(err);
      throw err;
    }
    if (early) early.copyEnded = true;
    ctx.faults?.copyEnded?.();
    await ctx.update((s) => {
      s.dataLoadedAt = new Date().toISOString();
    });
  }
  ctx.log('building indexes and constraints');
  let started = performance.now();
  // The rest of post-data is built while the tables built early are still being analyzed.
  const [built, analyzed] = await Promise.allSettled([
    early ? early.finish().then((e) => buildPostData(ctx, e)) : buildPostData(ctx),
    early?.statistics(),
  ]);
  if (built.status === 'rejected') throw built.reason;
  if (analyzed.status === 'rejected') throw analyzed.reason;
  const post = built.value;
  const postSeconds = (performance.now() - started) / 1000;
  if (early?.tables)
    summary += `; indexes of ${early.tables} big tables built during the copy (${early.bigAnalyzed} analyzed then too)`;
  if (early?.smallTables)
    summary += `; indexes of ${early.smallTables} small table(s) built during the copy (${early.analyzed.size - early.bigAnalyzed} analyzed then too)`;
  // Fresh statistics before the application arrives; one table per job, as the copy did. Those of the
  // tables built after the copy ended are gathered by catch-up (finishLoad), recorded before the phase ends.
  const deferred = [...(early?.deferred.values() ?? [])];
  if (deferred.length)
    await ctx.update((s) => {
      s.tablesToAnalyze = [...new Set([...(s.tablesToAnalyze ?? []), ...deferred])];
    });
  started = performance.now();
  await analyzeTables(ctx, tables, new Set([...(early?.analyzed ?? []), ...(early?.deferred.keys() ?? [])]));
  const analyzeSeconds = (performance.now() - started) / 1000;
  const later = deferred.length ? `; statistics of ${deferred.join(', ')} gathered while replication starts` : '';
  return `${summary}; ${post} in ${postSeconds.toFixed(1)} s; analyzed in ${analyzeSeconds.toFixed(1)} s${later}`;
}
