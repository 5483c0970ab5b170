/**
 * Catch up: sample lag until it stays under --max-lag-ms for N samples with no long transaction open
 * and no DDL drift. Watch the slot's retained WAL: warn past a threshold, and past the hard limit drop
 * the slot (and the subscription) before the source's disk fills.
 */
import { LagTimeoutError, objectNames, ReplicationFailedError, WalRetentionExceededError } from '@pgferry/core';
import { sleep } from '../db';
import { freezeHazards } from '../freeze';
import { longTransactions, readLag, schemaDrift, targetWriteTransactions } from '../lag';
import { dropSlot, dropSubscription } from '../replication';
import type { PhaseContext } from './context';

export interface GateStatus {
  open: boolean;
  reasons: string[];
}

const MiB = 1024 * 1024;

/** One sample: records lag, checks WAL retention, returns why the gate is closed (if it is). */
export async function sampleGate(
  ctx: PhaseContext,
  warned: { wal: boolean },
): Promise<{ lagMs: number; reasons: string[] }> {
  const names = objectNames(ctx.config.id);
  const lag = await readLag(ctx.source, names.slot);
  if (!lag) {
    throw new ReplicationFailedError(`replication slot ${names.slot} disappeared from the source`, {
      phase: 'catch-up',
      hint: 'roll back and migrate again',
    });
  }
  if (lag.retainedBytes > ctx.config.walAbortBytes) {
    await dropSubscription(ctx.target, names.subscription, { keepSlot: true }).catch(() => {});
    await dropSlot(ctx.source, names.slot);
    throw new WalRetentionExceededError(
      `slot ${names.slot} retained ${(lag.retainedBytes / MiB).toFixed(0)} MiB of WAL, past the abort limit of ${(ctx.config.walAbortBytes / MiB).toFixed(0)} MiB: the slot was dropped to protect the source's disk`,
      { phase: 'catch-up', hint: 'find why the target falls behind (target server log, lag), then migrate again' },
    );
  }
  if (lag.retainedBytes > ctx.config.walWarnBytes && !warned.wal) {
    warned.wal = true;
    const message = `slot ${names.slot} retains ${(lag.retainedBytes / MiB).toFixed(0)} MiB of WAL on the source (warning at ${(ctx.config.walWarnBytes / MiB).toFixed(0)} MiB, abort at ${(ctx.config.walAbortBytes / MiB).toFixed(0)} MiB)`;
    ctx.log(`warning: ${message}`);
    await ctx.update((s) => {
      s.warnings = [...(s.warnings ?? []), message];
    });
  }
  const reasons: string[] = [];
  if (!lag.active) reasons.push('the subscription is not connected to the slot');
  if (lag.ms >= ctx.config.maxLagMs) reasons.push(`lag ${lag.ms} ms ≥ ${ctx.config.maxLagMs} ms`);
  const open = await longTransactions(ctx.source, ctx.config.longTransactionMs);
  for (const t of open)
    reasons.push(`transaction pid ${t.pid} (user ${t.user}) open for ${Math.round(t.ageMs / 1000)} s: ${t.query}`);
  for (const t of await targetWriteTransactions(ctx.target)) {
    reasons.push(
      `write transaction pid ${t.pid} (user ${t.user}) open on the target: the reverse slot cannot be created until it ends`,
    );
  }
  // Whatever would let a write past the freeze keeps the gate closed, named with its remedy.
  for (const h of await freezeHazards(ctx.source)) reasons.push(h.message);
  const drift = await schemaDrift(ctx.source, ctx.target);
  for (const d of drift) reasons.push(`DDL on the source: ${d}`);
  const sample = { at: new Date().toISOString(), bytes: lag.bytes, ms: lag.ms };
  await ctx.update((s) => {
    s.lag = [...(s.lag ?? []).slice(-59), sample];
    s.walRetainedBytes = lag.retainedBytes;
    s.ddlDrift = drift;
  });
  return { lagMs: lag.ms, reasons };
}

/** Phase "Catch up": returns once the gate has been open for `lagSamples` consecutive samples. */
export async function catchUp(ctx: PhaseContext): Promise<string> {
  const started = Date.now();
  const warned = { wal: false };
  let streak = 0;
  let lastReasons = '';
  for (;;) {
    const { lagMs, reasons } = await sampleGate(ctx, warned);
    streak = reasons.length === 0 ? streak + 1 : 0;
    const text = reasons.join('; ');
    if (text && text !== lastReasons) ctx.log(`cutover gate closed: ${text}`);
    lastReasons = text;
    if (streak >= ctx.config.lagSamples) {
      return `lag ${lagMs} ms under ${ctx.config.maxLagMs} ms for ${streak} samples; no long transactions; schemas agree`;
    }
    if (ctx.config.catchUpTimeoutMs > 0 && Date.now() - started > ctx.config.catchUpTimeoutMs) {
      throw new LagTimeoutError(
        `the cutover gate did not open within ${Math.round(ctx.config.catchUpTimeoutMs / 1000)} s: ${text || 'lag unstable'}`,
        {
          phase: 'catch-up',
          hint: 'replication keeps running and nothing was removed; fix the reason above and run `pgferry resume` (or `pgferry rollback`)',
        },
      );
    }
    await sleep(ctx.config.lagSampleIntervalMs);
  }
}
