/**
 * Cut over on the DMS path, as a list of steps:
 *   prepare reverse replication → freeze writes on the source → wait until DMS has applied everything
 *   committed before the freeze (its CDC latency 0 over a minute begun after the freeze) → stop the
 *   DMS task → sync sequences → start reverse replication (native PostgreSQL, target → source) →
 *   switch the connection → target writable.
 * As on the native path the source stays read-only, kept current by reverse replication, so rollback
 * (rollback.ts, after the switch) loses nothing. A drain over --max-drain-ms unfreezes the source and
 * hands back to catch-up; any other failure before the switch is undone: the task resumes, the source
 * is writable. DMS reports latency per minute, so its write gap is a minute or more: --max-drain-ms
 * must allow that (see DMS_MIN_DRAIN_MS).
 */
import { performance } from 'node:perf_hooks';
import {
  CutoverFailedError,
  type DmsReplication,
  DrainTimeoutError,
  errorMessage,
  FreezeFailedError,
  objectNames,
  PgferryError,
  PreparedTransactionsPendingError,
} from '@pgferry/core';
import { hasReplicaIdentity, listTables } from '../catalog';
import { critical } from '../critical';
import { sleep, tableLabel } from '../db';
import { freezeWrites, unfreezeWrites, waitPreparedTransactions, writesSince } from '../freeze';
import {
  applyTuning,
  type ChangeWatch,
  dropPublication,
  dropSlot,
  dropSubscription,
  ensurePublication,
  prepareSubscription,
  slotExists,
  startPreparedSubscription,
  watchChanges,
} from '../replication';
import { syncSequences } from '../sequences';
import { type PhaseContext, partitionsViaRoot, targetMajor } from './context';
import { recordForwardFreeze, redoSwitch, refuseUpstreamSubscriptions, settleSwitch, switchInGap } from './cutover';
import { dmsRef } from './dms';
import { runUndo, type UndoStep } from './undo';

/** CloudWatch's figure comes a minute at a time: a drain budget below two of them can never be met. */
export const DMS_MIN_DRAIN_MS = 120_000;

export interface DmsCutoverOptions {
  /** How often "drained?" is asked inside the gap (tests make it short). */
  pollMs?: number;
}

/** Undo a DMS cutover that has not switched: reverse objects gone, the task capturing changes again, source writable. */
async function undo(ctx: PhaseContext, dms: DmsReplication, cause: unknown, onlyUnfreeze = false) {
  const n = objectNames(ctx.config.id);
  const unfreeze: UndoStep[] = ctx.state.cutover?.wasFrozen
    ? []
    : [['unfreeze the source', () => unfreezeWrites(ctx.source)]];
  const steps: UndoStep[] = onlyUnfreeze
    ? unfreeze
    : [
        [
          `drop the prepared subscription ${n.reverseSubscription} on the source`,
          () => dropSubscription(ctx.source, n.reverseSubscription, { keepSlot: true }),
        ],
        [`drop the reverse slot ${n.reverseSlot} on the target`, () => dropSlot(ctx.target, n.reverseSlot)],
        ['resume the DMS task', () => resumeIfStopped(ctx, dms)],
        ...unfreeze,
      ];
  await runUndo(ctx, 'cutover', steps, { cause, command: `pgferry resume --id ${ctx.config.id}` });
}

async function resumeIfStopped(ctx: PhaseContext, dms: DmsReplication) {
  if (!ctx.state.dms?.stoppedAt) return;
  await dms.resume(dmsRef(ctx));
  await ctx.update((s) => {
    s.dms = { ...s.dms!, stoppedAt: undefined, resumedAt: new Date().toISOString() };
  });
}

/** Poll the port until DMS says it applied everything committed before `freezeAt`, within `budgetMs`. */
async function waitDrained(dms: DmsReplication, ctx: PhaseContext, freezeAt: string, budgetMs: number, pollMs: number) {
  const ref = dmsRef(ctx);
  const end = performance.now() + budgetMs;
  for (;;) {
    if (await dms.drained(ref, freezeAt)) return true;
    const left = end - performance.now();
    if (left <= 0) return false;
    await sleep(Math.min(pollMs, left));
  }
}

/** How long the watch slot's creation may wait for open transactions (on any database of the server). */
const WATCH_CREATE_MS = 10_000;
/** How long decoding what was written since the watch began may take, inside the (minute-long) gap. */
const WATCH_DECODE_MS = 30_000;

interface Watch {
  watch?: ChangeWatch;
  /** The source's tables when the watch began (a table made after the freeze is in no publication). */
  tables: Set<number>;
  /** Why there is no watch: late writes are then counted server-wide, and any refuses the cutover. */
  missing?: string;
  close(): Promise<void>;
}

/** The late-write watch, made before the freeze; without one the cutover still goes, more cautiously. */
async function openWatch(ctx: PhaseContext): Promise<Watch> {
  const n = objectNames(ctx.config.id);
  const viaRoot = await partitionsViaRoot(ctx);
  const all = await listTables(ctx.source, { sizes: false });
  const tables = new Set(all.map((t) => t.oid));
  // Every table whose rows the watch would publish, through its root or not: one without a replica
  // identity would have the application's UPDATE and DELETE on it fail.
  const without = all.filter((t) => t.kind !== 'partitioned' && !t.unlogged && !hasReplicaIdentity(t));
  let missing: string;
  if (without.length) {
    const names = without.slice(0, 5).map(tableLabel).join(', ');
    missing = `no watch: ${without.length} table(s) without a replica identity (${names}${without.length > 5 ? ', …' : ''}), whose updates cannot be published without making the application's UPDATE and DELETE on them fail`;
  } else {
    try {
      const watch = await watchChanges(ctx.source, n.watch, all, {
        applicationName: `${n.applicationName}:watch`,
        timeoutMs: WATCH_CREATE_MS,
        viaRoot,
      });
      return { watch, tables, close: () => watch.close() };
    } catch (err) {
      missing = `no watch: ${errorMessage(err)}`;
    }
  }
  ctx.log(`cutover: ${missing}; a transaction anywhere on the source server after the freeze will stop the cutover`);
  return { missing, tables, close: async () => {} };
}

/**
 * Stop the cutover if a change to a replicated table was committed on the source after the freeze. Xids
 * committed since the freeze are counted first (none: nothing to decode, and no table was made); they
 * may be another database's or autovacuum's, so the watch then says whether any of them changed a
 * replicated table. A table made since the watch began is in no publication: that stops it too, as does
 * any such xid without the watch (or when decoding runs out of time).
 */
async function refuseLateWrites(ctx: PhaseContext, w: Watch, xmax: string, own: string[]): Promise<void> {
  const xids = await writesSince(ctx.source, xmax, own);
  if (xids === 0) return;
  const made = (await listTables(ctx.source, { sizes: false })).filter((t) => !w.tables.has(t.oid));
  if (made.length)
    throw new CutoverFailedError(
      `table(s) ${made.map(tableLabel).join(', ')} were created on the source during the cutover, by a session that turned default_transaction_read_only off; DMS would not carry what was written to them`,
      {
        phase: 'cutover',
        hint: 'find that session in pg_stat_activity on the source and stop it (it ignores the freeze), then cut over again',
      },
    );
  const changes = w.watch ? await w.watch.changesFrom(xmax, WATCH_DECODE_MS) : undefined;
  if (changes === 0) return;
  if (changes !== undefined)
    throw new CutoverFailedError(
      `${changes} change(s) to replicated tables were committed on the source after the freeze, by a session that turned default_transaction_read_only off`,
      {
        phase: 'cutover',
        hint: 'find that writer in pg_stat_activity on the source and stop it (it ignores the freeze), then cut over again',
      },
    );
  const why = w.missing ?? `decoding them took over ${WATCH_DECODE_MS / 1000} s`;
  throw new CutoverFailedError(
    `${xids} transaction(s) committed on the source server after the freeze, and pgferry could not tell whether any changed a replicated table (${why})`,
    {
      phase: 'cutover',
      hint: 'make sure nothing writes to the source database (pg_stat_activity), then cut over again',
    },
  );
}

export async function dmsCutover(
  ctx: PhaseContext,
  dms: DmsReplication,
  options: DmsCutoverOptions = {},
): Promise<string> {
  const n = objectNames(ctx.config.id);
  const c = ctx.state.cutover;
  if (c?.switchAt) return `already done: switched at ${c.switchAt} (write gap ${c.writeGapMs} ms)`;
  if (c?.switchStartedAt) {
    // Everything before the switch was done: switching again (idempotent) and recording it is the way out.
    await redoSwitch(ctx);
    return 'switch finished after an interruption';
  }
  // A cutover stopped inside its gap (its task maybe stopped): undone, then done again.
  if (c?.freezeAt || ctx.state.dms?.stoppedAt) await undo(ctx, dms, undefined);
  await refuseUpstreamSubscriptions(ctx);
  try {
    const targetTables = await listTables(ctx.target, { sizes: false });
    await ensurePublication(ctx.target, n.reversePublication, targetTables, { viaRoot: await partitionsViaRoot(ctx) });
    const tuning = await applyTuning(ctx.source, await targetMajor(ctx), targetTables);
    await prepareSubscription(ctx.source, n.reverseSubscription, ctx.config.targetUrl, n.reversePublication, tuning);
    // DMS does not carry sequences: synced once outside the gap, then only those that moved since.
    await syncSequences(ctx.source, ctx.target);
  } catch (err) {
    await dropSubscription(ctx.source, n.reverseSubscription, { keepSlot: true }).catch(() => {});
    throw new CutoverFailedError(`preparing the cutover failed; nothing was frozen: ${errorMessage(err)}`, {
      cause: err,
      phase: 'cutover',
      hint: 'the source must reach the target for reverse replication, and every source sequence must exist on the target; then cut over again',
    });
  }
  const watch = await openWatch(ctx);
  const record = await critical(async () => {
    const { freezeAt } = await recordForwardFreeze(ctx);
    const t0 = performance.now();
    let freeze: Awaited<ReturnType<typeof freezeWrites>>;
    try {
      freeze = await freezeWrites(ctx.source, { preparedOrphanMs: ctx.config.preparedOrphanMs });
      // What the source decodes meanwhile is read as it comes, so that the last read is short.
      watch.watch?.follow(freeze.xmax);
      await waitPreparedTransactions(ctx.source, ctx.config.maxPreparedWaitMs);
    } catch (err) {
      await undo(ctx, dms, err, err instanceof PreparedTransactionsPendingError);
      if (err instanceof FreezeFailedError || err instanceof PreparedTransactionsPendingError) throw err;
      throw new CutoverFailedError(`the write freeze failed; the source was unfrozen: ${errorMessage(err)}`, {
        cause: err,
        phase: 'cutover',
      });
    }
    const drainStart = performance.now();
    if (!(await waitDrained(dms, ctx, freezeAt.toISOString(), ctx.config.maxDrainMs, options.pollMs ?? 5000))) {
      const cause = new DrainTimeoutError(`DMS did not report a drain within ${ctx.config.maxDrainMs} ms`);
      await undo(ctx, dms, cause, true);
      await ctx.update((s) => {
        s.events = [
          ...s.events,
          {
            at: new Date().toISOString(),
            message: `DMS drain abandoned after ${Math.round(performance.now() - drainStart)} ms (budget ${ctx.config.maxDrainMs} ms): source unfrozen`,
          },
        ];
      });
      throw new DrainTimeoutError(
        `DMS did not report every change before the freeze applied (CDC latency 0 over a minute begun after it) within the drain budget of ${ctx.config.maxDrainMs} ms; the source was unfrozen`,
        {
          phase: 'cutover',
          hint: `pgferry returns to catch-up and tries again; DMS reports latency once a minute, so --max-drain-ms needs ${DMS_MIN_DRAIN_MS} or more on this path`,
        },
      );
    }
    const drainMs = Math.round(performance.now() - drainStart);
    let sequences = 0;
    try {
      await dms.stop(dmsRef(ctx));
      await ctx.update((s) => {
        s.dms = { ...s.dms!, stoppedAt: new Date().toISOString() };
      });
      sequences = await syncSequences(ctx.source, ctx.target);
      // A session that turned read-only off may have written after the drain; DMS no longer carries it.
      await refuseLateWrites(ctx, watch, freeze.xmax, freeze.ownXids);
      if (!(await slotExists(ctx.target, n.reverseSlot)))
        await ctx.target.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [n.reverseSlot]);
      await startPreparedSubscription(ctx.source, n.reverseSubscription, n.reverseSlot);
      await unfreezeWrites(ctx.target);
      await ctx.update((s) => {
        s.cutover = { ...s.cutover, switchStartedAt: new Date().toISOString() };
      });
    } catch (err) {
      await undo(ctx, dms, err);
      throw new CutoverFailedError(
        `cutover failed before the switch; the DMS task resumed and the source was unfrozen: ${errorMessage(err)}`,
        { cause: err, phase: 'cutover', hint: err instanceof PgferryError ? err.hint : undefined },
      );
    }
    // A failure here, once the application may have moved, is never undone (switchInGap).
    const switchRecord = await switchInGap(ctx, (err) => undo(ctx, dms, err));
    const writeGapMs = Math.round(performance.now() - t0);
    const done = {
      ...ctx.state.cutover,
      drainedAt: new Date(freezeAt.getTime() + (performance.now() - t0)).toISOString(),
      switchAt: new Date(freezeAt.getTime() + writeGapMs).toISOString(),
      writeGapMs,
      drainMs,
      sessionsEnded: freeze.sessionsEnded,
      sequencesSynced: sequences,
      ...(switchRecord ? { switchRecord } : {}),
    };
    await ctx.update((s) => {
      s.cutover = done;
    });
    return done;
  }).finally(() => watch.close());
  // The gap is over once the switch is accepted; its propagation (Route 53's INSYNC) is waited for now.
  await settleSwitch(ctx);
  // Forward replication was DMS's: nothing of pgferry's forward objects to drop (the task goes at clean-up).
  await dropPublication(ctx.source, n.publication).catch(() => {});
  const stopped = ctx.state.dms?.kind === 'serverless' ? 'DMS Serverless replication stopped' : 'DMS task stopped';
  return `write gap ${record.writeGapMs} ms (DMS drain ${record.drainMs} ms); ${record.sessionsEnded} session(s) ended; ${stopped}; ${record.sequencesSynced} sequence(s) synced; reverse replication ${n.reverseSubscription} running; source left read-only`;
}
