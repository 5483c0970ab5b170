/**
 * Catch up: sample lag until it stays under --max-lag-ms for N samples with no long transaction open
 * and no DDL drift. Watch the slot's retained WAL: warn past a threshold, and past the hard limit drop
 * the slot (and the subscription) before the source's disk fills.
 */
import { LagTimeoutError, objectNames, ReplicationFailedError, WalRetentionExceededError } from '@pgferry/core';
import { EXCLUDED_SCHEMAS, listTables, publishedTables, USER_SEQUENCE } from '../catalog';
import { ident, qualified, sleep, tableLabel } from '../db';
import { freezeHazards } from '../freeze';
import { longTransactions, readLag, schemaDrift, targetWriteTransactions } from '../lag';
import { canCreateSubscription, dropSlot, dropSubscription } from '../replication';
import type { PhaseContext } from './context';

export interface GateStatus {
  open: boolean;
  reasons: string[];
}

const MiB = 1024 * 1024;

/** What a gate sample reads from both catalogs, kept between samples (see `catchUp`). */
interface CatalogCheck {
  reasons: string[];
  drift: string[];
  at: number;
}

/** The catalog checks (drift, tables, hazards, prerequisites) run at most this often, and on the sample that could open the gate. */
const CATALOG_CHECK_EVERY_MS = 5_000;

/** One sample: records lag, checks WAL retention, returns why the gate is closed (if it is). */
export async function sampleGate(
  ctx: PhaseContext,
  warned: { wal: boolean; catalog?: CatalogCheck },
  options: { catalog?: boolean } = {},
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
  // The catalogs of both sides: on a database of thousands of tables these queries cost the source
  // ~250 ms, so a caller may reuse the last answer (never for a sample that could open the gate).
  if (options.catalog !== false || !warned.catalog) {
    const found: string[] = [];
    // Whatever would let a write past the freeze keeps the gate closed, named with its remedy.
    for (const h of await freezeHazards(ctx.source, ctx.config)) found.push(h.message);
    const drift = await schemaDrift(ctx.source, ctx.target);
    for (const d of drift) found.push(`DDL on the source: ${d}`);
    // (A table on one side only is drift already; one on both may still not be replicated.)
    if (!drift.length) for (const u of await unreplicatedTables(ctx)) found.push(u);
    for (const r of await cutoverPrerequisites(ctx)) found.push(r);
    warned.catalog = { reasons: found, drift, at: Date.now() };
  }
  const { drift } = warned.catalog;
  reasons.push(...warned.catalog.reasons);
  const sample = { at: new Date().toISOString(), bytes: lag.bytes, ms: lag.ms };
  await ctx.update((s) => {
    s.lag = [...(s.lag ?? []).slice(-59), sample];
    s.walRetainedBytes = lag.retainedBytes;
    s.ddlDrift = drift;
  });
  return { lagMs: lag.ms, reasons };
}

/**
 * Tables the source has but replication does not carry. The publication lists its tables (not FOR ALL
 * TABLES), so a table created on the source after the load, even one created on the target too (no
 * schema drift then), is not replicated: its rows would stay behind at the switch.
 */
async function unreplicatedTables(ctx: PhaseContext): Promise<string[]> {
  const names = objectNames(ctx.config.id);
  const [tables, published, subscribed] = await Promise.all([
    listTables(ctx.source, { sizes: false }),
    ctx.source.query<{ t: string }>(
      `SELECT format('%s.%s', n.nspname, c.relname) AS t FROM pg_publication_rel r
         JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = $1`,
      [names.publication],
    ),
    ctx.target.query<{ t: string; state: string }>(
      `SELECT format('%s.%s', n.nspname, c.relname) AS t, r.srsubstate AS state FROM pg_subscription_rel r
         JOIN pg_subscription s ON s.oid = r.srsubid JOIN pg_class c ON c.oid = r.srrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE s.subname = $1`,
      [names.subscription],
    ),
  ]);
  const inPublication = new Set(published.map((r) => r.t));
  const state = new Map(subscribed.map((r) => [r.t, r.state]));
  const out: string[] = [];
  for (const t of publishedTables(tables)) {
    const label = tableLabel(t);
    if (!inPublication.has(label))
      out.push(
        `table ${label} is not replicated (created on the source after the load): on the source run ALTER PUBLICATION ${ident(names.publication)} ADD TABLE ${qualified(t)}, then on the target ALTER SUBSCRIPTION ${ident(names.subscription)} REFRESH PUBLICATION (which copies its rows); or drop it`,
      );
    else if (!state.has(label))
      out.push(
        `table ${label} is published but the target does not replicate it yet: on the target run ALTER SUBSCRIPTION ${ident(names.subscription)} REFRESH PUBLICATION`,
      );
    else if (state.get(label) !== 'r') out.push(`table ${label} is still being copied by the subscription`);
  }
  return out;
}

/** What the write gap itself would fail on, found before the freeze instead of inside it. */
export async function cutoverPrerequisites(ctx: PhaseContext): Promise<string[]> {
  const out: string[] = [];
  // Every sequence's value is copied in the write gap: one the target lacks would fail it there.
  const names = `SELECT format('%I.%I', n.nspname, c.relname) AS s FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE ${USER_SEQUENCE}`;
  const [src, tgt] = await Promise.all([
    ctx.source.query<{ s: string }>(names, [EXCLUDED_SCHEMAS]),
    ctx.target.query<{ s: string }>(names, [EXCLUDED_SCHEMAS]),
  ]);
  const onTarget = new Set(tgt.map((r) => r.s));
  for (const { s } of src)
    if (!onTarget.has(s))
      out.push(
        `sequence ${s} exists on the source but not on the target (created after the load): create it on the target too (the cutover copies its value)`,
      );
  if (!(await canCreateSubscription(ctx.source)))
    out.push(
      'the source role (--source) may not create the reverse subscription the cutover sets up on the source (so a rollback loses nothing): it needs superuser, rds_superuser on RDS, or from PostgreSQL 16 on pg_create_subscription and CREATE on the database',
    );
  return out;
}

/** Phase "Catch up": returns once the gate has been open for `lagSamples` consecutive samples. */
export async function catchUp(ctx: PhaseContext): Promise<string> {
  const started = Date.now();
  const warned: { wal: boolean; catalog?: CatalogCheck } = { wal: false };
  let streak = 0;
  let lastReasons = '';
  for (;;) {
    const catalog =
      streak + 1 >= ctx.config.lagSamples ||
      !warned.catalog ||
      Date.now() - warned.catalog.at >= CATALOG_CHECK_EVERY_MS;
    const { lagMs, reasons } = await sampleGate(ctx, warned, { catalog });
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
