/**
 * A share worker of a scaled-out bulk load: it imports the coordinator's exported snapshot and copies
 * its share of the table ranges inside it (bulk-load.ts's COPY machinery), then reports rows and
 * bytes in the migration state, where the coordinator waits for every share.
 */
import {
  BulkLoadFailedError,
  type CopyPlanStatus,
  type CopyShareRecord,
  copyPlanStatus,
  errorMessage,
  type MigrationStore,
  PgferryError,
  redactText,
} from '@pgferry/core';
import { listTables } from '../catalog';
import { sleep } from '../db';
import { copyAll, copyItems } from './bulk-load';
import type { PhaseContext } from './context';

export interface ShareRef {
  loadId: string;
  /** 0-based index into the plan's shares. */
  share: number;
}

export interface ShareResult {
  share: number;
  rows: number;
  bytes: number;
  items: number;
  summary: string;
}

/** Writes of several workers to one migration record collide (optimistic locking): each retries. */
const CONFLICT_RETRIES = 30;

async function updateShare(ctx: PhaseContext, ref: ShareRef, change: (r: CopyShareRecord) => void) {
  for (let attempt = 0; ; attempt++) {
    try {
      await ctx.update((s) => {
        const record = s.copyPlan?.loadId === ref.loadId ? s.copyPlan.shares[ref.share] : undefined;
        if (!record)
          throw new BulkLoadFailedError(
            `the plan of bulk load ${ref.loadId} was replaced (now ${s.copyPlan?.loadId ?? 'none'})`,
            { phase: 'bulk-load' },
          );
        change(record);
      });
      return;
    } catch (err) {
      if ((err as Error).name !== 'StateConflictError' || attempt >= CONFLICT_RETRIES) throw err;
      await sleep(10 + Math.random() * 90);
    }
  }
}

/**
 * Task "Copy a share of the tables". A share is copied once per plan: a share started before and
 * never reported may have committed some of its ranges, so it fails (and with it the load, which a
 * resume starts again on an empty target) instead of copying them twice. `signal` stops it between
 * two items (its execution is gone: nobody will use what it copies).
 */
export async function copyShare(ctx: PhaseContext, ref: ShareRef, signal?: AbortSignal): Promise<ShareResult> {
  const label = `share ${ref.share + 1}`;
  const plan = ctx.state.copyPlan;
  if (!plan || plan.loadId !== ref.loadId)
    throw new BulkLoadFailedError(
      `${label} of bulk load ${ref.loadId} has no plan: the migration's plan is ${plan ? `that of bulk load ${plan.loadId}` : 'not recorded'}`,
      { phase: 'bulk-load', hint: 'a share runs only inside its own bulk load (the state machine starts it)' },
    );
  const record = plan.shares[ref.share];
  if (!record || plan.inProcess)
    throw new BulkLoadFailedError(
      `the plan of bulk load ${ref.loadId} has no ${label} for a worker (${plan.inProcess ? 'the coordinator copies it itself' : `${plan.shares.length} shares`})`,
      { phase: 'bulk-load' },
    );
  const label2 = `${label} of ${plan.shares.length}`;
  if (record.doneAt)
    return {
      share: ref.share,
      rows: record.rows ?? 0,
      bytes: record.bytes ?? 0,
      items: record.items.length,
      summary: `${label2}: already done`,
    };
  try {
    if (record.startedAt)
      throw new BulkLoadFailedError(
        `${label2} was started at ${record.startedAt} and never reported: some of its ranges may be copied already`,
        { phase: 'bulk-load', hint: 'resume the migration: the load starts again on an empty target' },
      );
    await updateShare(ctx, ref, (r) => {
      r.startedAt = new Date().toISOString();
    });
    const items = copyItems(record.items, await listTables(ctx.source));
    // copyAll's streams import the snapshot (SET TRANSACTION SNAPSHOT): it fails if the coordinator's
    // exporting session is gone, so no share copies outside the slot's snapshot.
    const { rows, bytes } = await copyAll(ctx, items, plan.snapshot, undefined, signal);
    await updateShare(ctx, ref, (r) => {
      Object.assign(r, { doneAt: new Date().toISOString(), rows, bytes });
    });
    return {
      share: ref.share,
      rows,
      bytes,
      items: items.length,
      summary: `${label2}: ${rows} rows (${(bytes / 1024 ** 2).toFixed(1)} MiB sent) of ${items.length} table range(s) copied`,
    };
  } catch (err) {
    // The coordinator ends the load on this report (its slot dropped): nothing half-loaded is kept.
    const failure = `${(err as Error).name ?? 'Error'}: ${redactText(errorMessage(err))}`;
    await updateShare(ctx, ref, (r) => {
      Object.assign(r, { failedAt: new Date().toISOString(), failure });
    }).catch(() => {});
    // Step Functions' Retry and Catch match on the error's name: a driver's error is named "error".
    if (err instanceof PgferryError) throw err;
    throw new BulkLoadFailedError(`${label2} failed: ${redactText(errorMessage(err))}`, {
      cause: err,
      phase: 'bulk-load',
      hint: 'fix the cause, then resume the migration: the load starts again on an empty target',
    });
  }
}

/** Task "Read the copy plan": what the state machine's poll needs, from the store alone. */
export async function readCopyPlan(
  store: Pick<MigrationStore, 'get'>,
  input: { migrationId: string; loadId: string },
): Promise<CopyPlanStatus> {
  return copyPlanStatus(await store.get(input.migrationId), input.loadId);
}
