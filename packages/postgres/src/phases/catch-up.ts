/**
 * Catch up: sample lag until, for N samples, it stays under --max-lag-ms and --max-lag-mb without
 * growing and with a drain predicted within --max-drain-ms, with no long transaction open and no DDL drift. Watch the slot's retained WAL: warn past a threshold, and past the hard limit drop
 * the slot (and the subscription) before the source's disk fills.
 */
import {
  AfterLoadFailedError,
  applyFallsBehind,
  ConnectionLostError,
  cutoverWindowOpensAt,
  type DeferredForeignKey,
  describeCutoverWindow,
  errorMessage,
  LAG_HISTORY,
  type LagFigures,
  type LagPoint,
  type LagSample,
  LagTimeoutError,
  lagFigures,
  lagReasons,
  type MigrationState,
  mbps,
  mib,
  objectNames,
  ReplicationFailedError,
  VerificationFailedError,
  WalRetentionExceededError,
} from '@pgferry/core';
import { EXCLUDED_SCHEMAS, listTables, publishedTables, USER_SEQUENCE } from '../catalog';
import { connectClient, ident, isConnectionLoss, qualified, sleep, tableLabel } from '../db';
import { freezeHazards } from '../freeze';
import { applyBottlenecks, longTransactions, readLag, schemaDrift, targetWriteTransactions } from '../lag';
import { canCreateSubscription, dropSlot, dropSubscription } from '../replication';
import { type CatalogContext, type PhaseContext, partitionsViaRoot } from './context';
import { verifySummary, verifyTables } from './verify';

export interface GateStatus {
  open: boolean;
  reasons: string[];
}

const MiB = 1024 * 1024;

/** What a gate sample reads from both catalogs, kept between samples (see `catchUp`). */
interface CatalogCheck {
  reasons: string[];
  /** Only the cutover needs these put right (freeze hazards, prerequisites): see GateOptions.beforeCutover. */
  beforeCutover: string[];
  drift: string[];
  at: number;
}

/** What the gate remembers between samples: lag readings, the last catalog check, warnings given. */
export interface GateMemory {
  wal: boolean;
  catalog?: CatalogCheck;
  /** Lag readings, oldest first (LAG_HISTORY at most), and the figures computed at each. */
  points?: LagPoint[];
  figures?: LagFigures[];
  /** The likely causes of a slow apply, looked up once per catch-up. */
  bottlenecks?: string[];
}

/** The catalog checks (drift, tables, hazards, prerequisites) run at most this often, and on the sample that could open the gate. */
const CATALOG_CHECK_EVERY_MS = 5_000;

/**
 * While there is nothing to catch up (no reason to keep the gate closed and at most IDLE_LAG_BYTES
 * unconfirmed), samples come every IDLE_SAMPLE_INTERVAL_MS: the gate's streak then takes a fraction
 * of a second instead of lagSamples intervals. Any backlog brings the configured interval back, so
 * that growth is judged over a real span while there is something to drain.
 */
export const IDLE_SAMPLE_INTERVAL_MS = 100;
export const IDLE_LAG_BYTES = 64 * 1024;

export function sampleIntervalMs(figures: LagFigures, reasons: string[], intervalMs: number): number {
  const idle = reasons.length === 0 && figures.bytes <= IDLE_LAG_BYTES;
  return idle ? Math.min(intervalMs, IDLE_SAMPLE_INTERVAL_MS) : intervalMs;
}

/** One lag reading of the forward slot, added to the gate's memory; the slot's retention is watched too. */
export async function sampleLag(ctx: PhaseContext, memory: GateMemory) {
  const names = objectNames(ctx.config.id);
  const lag = await readLag(ctx.source, names.slot);
  if (!lag) {
    throw new ReplicationFailedError(`replication slot ${names.slot} disappeared from the source`, {
      phase: 'catch-up',
      hint: 'roll back and migrate again',
    });
  }
  const points = [...(memory.points ?? []).slice(-(LAG_HISTORY - 1)), lag.point];
  const figures = lagFigures(points);
  memory.points = points;
  memory.figures = [...(memory.figures ?? []).slice(-(LAG_HISTORY - 1)), figures];
  return { lag, figures };
}

/** What the load left to do on the target while replication runs (see finishLoad). */
interface AfterLoad {
  /** Tables whose statistics are still to gather (`state.tablesToAnalyze`), in order. */
  analyze: string[];
  /** Foreign keys not validated yet, in order. */
  pending: DeferredForeignKey[];
  error?: unknown;
  stopped: boolean;
  /** Every statement run (or the runner stopped); `analyzed`: the statistics gathered. */
  done: Promise<void>;
  analyzed: Promise<void>;
  pid?: number;
}
const afterLoads = new WeakMap<PhaseContext, AfterLoad>();

/** Whatever the load left to do on the target: none left, the gate may open. */
export const afterLoadLeft = (v: AfterLoad) => v.analyze.length + v.pending.length;

/**
 * Finish the load on the target while replication runs, one statement at a time on a session of its
 * own, started once per context and left running across the gate and the verify before the switch:
 * first the statistics of the tables whose indexes were built after the copy ended
 * (`state.tablesToAnalyze`: their ANALYZE would otherwise hold the load), then the foreign keys the
 * load added NOT VALID (`state.foreignKeysToValidate`). ANALYZE and VALIDATE CONSTRAINT take SHARE
 * UPDATE EXCLUSIVE on the table (VALIDATE ROW SHARE on the one it references): the apply worker's
 * writes go on meanwhile. The gate samples record what is left, and keep the gate closed until
 * nothing is, so the application never arrives on a table without statistics.
 */
export function finishLoad(ctx: PhaseContext, left?: Pick<AfterLoad, 'analyze' | 'pending'>): AfterLoad {
  const running = afterLoads.get(ctx);
  if (running) return running;
  const v: AfterLoad = {
    analyze: [...(left?.analyze ?? ctx.state.tablesToAnalyze ?? [])],
    pending: [...(left?.pending ?? ctx.state.foreignKeysToValidate ?? [])],
    stopped: false,
    done: Promise.resolve(),
    analyzed: Promise.resolve(),
  };
  afterLoads.set(ctx, v);
  if (!afterLoadLeft(v)) return v;
  let analyzed = () => {};
  v.analyzed = new Promise<void>((resolve) => {
    analyzed = resolve;
  });
  v.done = (async () => {
    const client = await connectClient(ctx.config.targetUrl, {
      side: 'target',
      applicationName: `${objectNames(ctx.config.id).applicationName}:validate`,
      lockTimeoutMs: 0,
    }).catch((err) => {
      // (Too many clients, a failover just then: nothing about the load; resumable, as a statement's failure.)
      throw new AfterLoadFailedError(
        `the target refused the session of the work after the load: ${errorMessage(err)}`,
        {
          cause: err,
          phase: 'catch-up',
          hint: `nothing was undone and replication goes on; \`pgferry resume --id ${ctx.config.id}\` tries again`,
        },
      );
    });
    v.pid = (client as unknown as { processID?: number }).processID;
    try {
      for (let table = v.analyze[0]; table && !v.stopped; table = v.analyze[0]) {
        await client.query(`ANALYZE ${table}`).catch((err) => {
          // Dropped or renamed on the target since the load: the gate's schema check names the drift.
          if ((err as { code?: string }).code === '42P01') return;
          throw new AfterLoadFailedError(
            `statistics of ${table} could not be gathered on the target: ${errorMessage(err)}`,
            {
              cause: err,
              phase: 'catch-up',
              hint: `nothing was undone and replication goes on; fix the cause, then \`pgferry resume --id ${ctx.config.id}\` gathers them again (or \`pgferry rollback --id ${ctx.config.id}\`)`,
            },
          );
        });
        v.analyze.shift();
      }
      analyzed();
      for (let fk = v.pending[0]; fk && !v.stopped; fk = v.pending[0]) {
        ctx.log(`validating ${fk.drift} on the target`);
        await ctx.faults?.beforeValidate?.(fk.drift);
        await client.query(`ALTER TABLE ONLY ${fk.table} VALIDATE CONSTRAINT ${ident(fk.name)}`).catch((err) => {
          throw new AfterLoadFailedError(`${fk.drift} could not be validated on the target: ${errorMessage(err)}`, {
            cause: err,
            phase: 'catch-up',
            hint: `it was added NOT VALID after the load and is enforced for new rows; nothing was undone and replication goes on. Fix the rows it names on the target (they passed the check on the source), then \`pgferry resume --id ${ctx.config.id}\` validates it again (or \`pgferry rollback --id ${ctx.config.id}\`)`,
          });
        });
        v.pending.shift();
      }
    } finally {
      await client.end().catch(() => {});
    }
  })()
    .catch((err) => {
      if (!v.stopped) v.error = err;
    })
    .finally(analyzed);
  return v;
}

/** What is left of the work after the load, written into the migration's state. */
export function recordAfterLoad(s: MigrationState, v: Pick<AfterLoad, 'pending' | 'analyze'>) {
  s.foreignKeysToValidate = v.pending.length ? [...v.pending] : undefined;
  s.tablesToAnalyze = v.analyze.length ? [...v.analyze] : undefined;
}

/** Stop the work after the load while it runs (a failed catch-up: the rollback must not wait for it); the next catch-up starts again. */
export async function stopFinishingLoad(ctx: PhaseContext) {
  const v = afterLoads.get(ctx);
  if (!v) return;
  afterLoads.delete(ctx);
  v.stopped = true;
  if (v.pid) await ctx.target.query('SELECT pg_cancel_backend($1)', [v.pid]).catch(() => {});
  await v.done;
}

/** One sample: records lag, checks WAL retention, returns why the gate is closed (if it is). */
export async function sampleGate(
  ctx: PhaseContext,
  warned: GateMemory,
  options: {
    catalog?: boolean;
    /** Whether foreign keys still to validate keep the gate closed (the default), or are left to validate meanwhile. */
    validation?: 'wait' | 'background';
  } = {},
): Promise<{
  lagMs: number;
  lagBytes: number;
  figures: LagFigures;
  reasons: string[];
  /** What only the cutover needs put right, by a person (freeze hazards, prerequisites); not in `reasons`. */
  beforeCutover: string[];
  /** Work after the load still running (statistics): it keeps the gate closed, but the lag's streak goes on. */
  waiting: string[];
  /** That work waits for a lock another session holds (then, unlike work going on, it counts toward catchUpTimeoutMs). */
  blocked: boolean;
}> {
  const names = objectNames(ctx.config.id);
  const { lag, figures } = await sampleLag(ctx, warned);
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
  const validation = afterLoads.get(ctx);
  if (validation?.error) {
    if (!isConnectionLoss(validation.error)) throw validation.error;
    // The target went away under it (a restart, a failover, its session ended): started again on
    // what is left, and this sample fails as the outage's (the loop rides it out, and a target still
    // away fails the new start too). Before, its first error came back at every sample until the
    // reconnect timeout said the servers had not answered, although they had.
    afterLoads.delete(ctx);
    finishLoad(ctx, validation);
    throw validation.error;
  }
  const unvalidated = validation?.pending ?? ctx.state.foreignKeysToValidate ?? [];
  const unanalyzed = validation?.analyze ?? ctx.state.tablesToAnalyze ?? [];
  // Statistics hold the gate even before a verify (they take seconds, and a caught-up migration is
  // one the application may be moved onto); foreign keys may be validated during that verify.
  const waiting = unanalyzed.map(
    (table) =>
      `statistics of ${table} are being gathered on the target (its index build ended the load; replication goes on meanwhile)`,
  );
  // Foreign keys being validated hold the gate as statistics do (the lag's streak goes on meanwhile:
  // VALIDATE does not block apply), so that it opens as soon as the last one is valid.
  if (options.validation !== 'background')
    for (const fk of unvalidated)
      waiting.push(
        `${fk.drift} is being validated on the target (added NOT VALID after the load; replication goes on meanwhile)`,
      );
  // The after-load session waiting for someone else's lock is stuck, not working: named, with the holders.
  let blocked = false;
  if (waiting.length && validation?.pid) {
    const holders = await ctx.target.query<{ pid: number; app: string | null; usr: string | null }>(
      `SELECT b.pid, b.application_name AS app, b.usename AS usr FROM pg_stat_activity b
        WHERE b.pid = ANY (pg_blocking_pids($1))`,
      [validation.pid],
    );
    if (holders.length) {
      blocked = true;
      waiting.push(
        `the target's ${validation.analyze.length ? 'ANALYZE' : 'VALIDATE'} waits for a lock held by ${holders.map((h) => `pid ${h.pid} (application ${JSON.stringify(h.app ?? '')}, user ${JSON.stringify(h.usr ?? '')})`).join(', ')}`,
      );
    }
  }
  // Lag under both limits and not growing since the sample the streak would start from.
  const history = warned.figures ?? [];
  const since = history.length >= ctx.config.lagSamples ? history[history.length - ctx.config.lagSamples] : history[0];
  const lagged = lagReasons(figures, since === figures ? undefined : since, ctx.config);
  reasons.push(...lagged);
  if (lagged.length && applyFallsBehind(figures)) {
    warned.bottlenecks ??= await applyBottlenecks(ctx.source, ctx.target, names.slot);
    reasons.push(
      `apply cannot keep up with the source: the source generates ${mbps(figures.generatedBps)}, the target applies ${mbps(figures.appliedBps)}; likely causes: ${warned.bottlenecks.join('; ')}`,
    );
  }
  const open = await longTransactions(ctx.source, ctx.config.longTransactionMs);
  for (const t of open)
    reasons.push(`transaction pid ${t.pid} (user ${t.user}) open for ${Math.round(t.ageMs / 1000)} s: ${t.query}`);
  // The after-load session's own ANALYZE or VALIDATE is no application's write: what it does holds
  // the gate as `waiting`, and it ends before the gate opens.
  const ownPid = validation && afterLoadLeft(validation) ? validation.pid : undefined;
  for (const t of await targetWriteTransactions(ctx.target)) {
    if (t.pid === ownPid) continue;
    reasons.push(
      `write transaction pid ${t.pid} (user ${t.user}) open on the target: the reverse slot cannot be created until it ends`,
    );
  }
  // The catalogs of both sides: on a database of thousands of tables these queries cost the source
  // ~250 ms, so a caller may reuse the last answer (never for a sample that could open the gate).
  if (options.catalog !== false || !warned.catalog) {
    // A foreign key still to validate is not valid on the target yet: that is no drift.
    const found = await catalogChecks(ctx, new Set(unvalidated.map((f) => f.drift)));
    warned.catalog = {
      reasons: [...found.drift.map((d) => `DDL on the source: ${d}`), ...found.unreplicated],
      beforeCutover: found.beforeCutover,
      drift: found.drift,
      at: Date.now(),
    };
  }
  const { drift, beforeCutover = [] } = warned.catalog;
  reasons.push(...warned.catalog.reasons);
  const sample: LagSample = {
    at: new Date(lag.point.t).toISOString(),
    bytes: figures.bytes,
    ms: figures.ms,
    generatedBps: Math.round(figures.generatedBps),
    appliedBps: Math.round(figures.appliedBps),
  };
  await ctx.update((s) => {
    s.lag = [...(s.lag ?? []).slice(-59), sample];
    s.walRetainedBytes = lag.retainedBytes;
    s.ddlDrift = drift;
    if (beforeCutover.length) s.beforeCutover = beforeCutover;
    else delete s.beforeCutover;
    if (validation) recordAfterLoad(s, validation);
  });
  return { lagMs: figures.ms, lagBytes: figures.bytes, figures, reasons, beforeCutover, waiting, blocked };
}

/**
 * Tables one side has but replication does not carry to the other. The publication lists its tables (not
 * FOR ALL TABLES), so a table created after the load on the source (forward), or after the cutover on
 * the target (reverse, which a rollback relies on), even one created on both sides, is not replicated:
 * its rows would stay behind at the switch.
 */
export async function unreplicatedTables(
  ctx: CatalogContext,
  direction: 'forward' | 'reverse' = 'forward',
): Promise<string[]> {
  const names = objectNames(ctx.config.id);
  const forward = direction === 'forward';
  const [from, to] = forward ? [ctx.source, ctx.target] : [ctx.target, ctx.source];
  const publication = forward ? names.publication : names.reversePublication;
  const subscription = forward ? names.subscription : names.reverseSubscription;
  const [tables, published, subscribed] = await Promise.all([
    listTables(from, { sizes: false }),
    from.query<{ t: string }>(
      `SELECT format('%s.%s', n.nspname, c.relname) AS t FROM pg_publication_rel r
         JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = $1`,
      [publication],
    ),
    to.query<{ t: string; state: string }>(
      `SELECT format('%s.%s', n.nspname, c.relname) AS t, r.srsubstate AS state FROM pg_subscription_rel r
         JOIN pg_subscription s ON s.oid = r.srsubid JOIN pg_class c ON c.oid = r.srrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE s.subname = $1`,
      [subscription],
    ),
  ]);
  const inPublication = new Set(published.map((r) => r.t));
  const state = new Map(subscribed.map((r) => [r.t, r.state]));
  const made = forward ? 'created on the source after the load' : 'created on the target after the cutover';
  // Back to the source, the table may be missing there too; the source is read-only after the cutover.
  const onSource = forward ? undefined : new Set((await listTables(to, { sizes: false })).map(tableLabel));
  const also = (label: string) =>
    !onSource || onSource.has(label)
      ? ''
      : 'create it on the source too, with the same columns (the source is read-only: SET default_transaction_read_only = off in that session first), then ';
  const out: string[] = [];
  for (const t of publishedTables(tables, await partitionsViaRoot(ctx))) {
    const label = tableLabel(t);
    if (!inPublication.has(label))
      out.push(
        `table ${label} is not replicated (${made}): ${also(label)}on the ${from.side} run ALTER PUBLICATION ${ident(publication)} ADD TABLE ${qualified(t)}, then on the ${to.side} ALTER SUBSCRIPTION ${ident(subscription)} REFRESH PUBLICATION (which copies its rows); or drop it`,
      );
    else if (!state.has(label))
      out.push(
        `table ${label} is published but the ${to.side} does not replicate it yet: on the ${to.side} run ALTER SUBSCRIPTION ${ident(subscription)} REFRESH PUBLICATION`,
      );
    else if (state.get(label) !== 'r') out.push(`table ${label} is still being copied by the subscription`);
  }
  return out;
}

/**
 * The gate's checks of both catalogs: what keeps the target from being a complete replicating copy
 * (`drift`, lag.ts schemaDrift; else `unreplicated`, tables on both sides replication does not carry,
 * each with its remedy), and `beforeCutover`, what only the cutover needs and a person must put right
 * (freeze hazards, the cutover's prerequisites). `validating`: foreign keys still to validate (no
 * drift). `pgferry status` runs them too, on connections of its own: nothing samples the gate after
 * migrate --cutover manual.
 */
export async function catalogChecks(
  ctx: CatalogContext,
  validating: Set<string> = new Set(),
): Promise<{ drift: string[]; unreplicated: string[]; beforeCutover: string[] }> {
  // Whatever would let a write past the freeze keeps the gate closed, named with its remedy.
  const hazards = (await freezeHazards(ctx.source, ctx.config)).map((h) => h.message);
  const drift = await schemaDrift(ctx.source, ctx.target, validating);
  // (A table on one side only is drift already; one on both may still not be replicated.)
  const unreplicated = drift.length ? [] : await unreplicatedTables(ctx);
  return { drift, unreplicated, beforeCutover: [...hazards, ...(await cutoverPrerequisites(ctx))] };
}

/** What only the cutover needs put right (catalogChecks' `beforeCutover`), as the gate, an approval window and status say it. */
export const beforeCutoverText = (items: string[]) => `before the cutover can switch, put right: ${items.join('; ')}`;

/** What the write gap itself would fail on, found before the freeze instead of inside it. */
export async function cutoverPrerequisites(ctx: CatalogContext): Promise<string[]> {
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

/** The gate's reasons with their figures left out (whole numbers only: a table named t1 is not t2). */
export const reasonsShape = (text: string) => text.replace(/\b\d+(?:\.\d+)?/g, '#');

/** How often reasons that did not change but for their figures are said again. */
const REASONS_AGAIN_MS = 30_000;

/** Caught up (a full streak) and kept closed only by the work after the load. */
const onlyWaiting = (ctx: PhaseContext, loop: GateLoop) =>
  loop.waiting === true && loop.streak >= ctx.config.lagSamples;

/** Where the gate loop is between samples: its memory, the streak, an outage being ridden out. */
export interface GateLoop {
  memory: GateMemory;
  streak: number;
  /** The reasons of the last sample, figures left out, so that only a change is logged again. */
  lastReasons: string;
  /** When the reasons were last logged (ms since the epoch). */
  lastLoggedAt?: number;
  /** When this catch-up began (ms since the epoch): catchUpTimeoutMs counts from here. */
  startedAt: number;
  /** When the servers stopped answering, and how many samples failed since (the backoff). */
  outageSince?: number;
  outageTries: number;
  /** When the plan's cutover window opens, as last logged (caught up, outside the window). */
  lastWindow?: string;
  /** The last sample found work after the load still running (it held the gate closed). */
  waiting?: boolean;
}

export function newGateLoop(): GateLoop {
  return { memory: { wal: false }, streak: 0, lastReasons: '', startedAt: Date.now(), outageTries: 0 };
}

/**
 * Rides out a server that went away (a restart, a failover, a dropped connection): the first loss is
 * logged and the sample retried with backoff (the pools reconnect on their own); past
 * `reconnectTimeoutMs` it stops with the truth: nothing undone, the slot kept and retaining WAL.
 * Returns how long to wait before the next sample.
 */
function outageFailed(ctx: PhaseContext, loop: GateLoop, err: unknown): number {
  if (!isConnectionLoss(err)) throw err;
  const now = Date.now();
  if (loop.outageSince === undefined) {
    loop.outageSince = now;
    ctx.log(
      `lost the connection during catch-up (${errorMessage(err)}); reconnecting for up to ${Math.round(ctx.config.reconnectTimeoutMs / 1000)} s`,
    );
  }
  if (now - loop.outageSince > ctx.config.reconnectTimeoutMs) {
    const n = objectNames(ctx.config.id);
    throw new ConnectionLostError(
      `a server did not answer for ${Math.round((now - loop.outageSince) / 1000)} s during catch-up: ${errorMessage(err)}. Nothing was undone: slot ${n.slot} stays on the source and retains WAL until replication reads it again`,
      {
        cause: err,
        phase: 'catch-up',
        hint: `once both servers answer, \`pgferry resume --id ${ctx.config.id}\` goes on where it stopped; \`pgferry rollback --id ${ctx.config.id}\` removes what the migration made (\`pgferry status --id ${ctx.config.id}\` shows the WAL the slot holds)`,
      },
    );
  }
  return Math.min(5_000, 250 * 2 ** loop.outageTries++);
}

/** The sample answered: an outage, if there was one, is over. */
function outageOver(ctx: PhaseContext, loop: GateLoop) {
  if (loop.outageSince !== undefined)
    ctx.log(`the servers answer again after ${((Date.now() - loop.outageSince) / 1000).toFixed(1)} s; catching up`);
  loop.outageSince = undefined;
  loop.outageTries = 0;
}

export interface GateStep {
  /** The gate has been open for lagSamples samples in a row. */
  ready: boolean;
  /** When to take the next sample. */
  waitMs: number;
  /** What a person reads: the figures when ready, else why the gate is closed. */
  summary: string;
  figures?: LagFigures;
  /** Ready for a manual migration's stop, with these only the cutover needs still to put right (`note`). */
  noted?: string[];
}

/**
 * One gate sample, the whole of it: the loop below runs it until ready, and the workflow's "Check lag"
 * task runs it once per invocation, carrying `loop` in the execution state between invocations.
 */
export async function gateStep(
  ctx: PhaseContext,
  loop: GateLoop,
  options: {
    validation?: 'wait' | 'background';
    /**
     * What only the cutover needs put right (sampleGate's `beforeCutover`): `hold` keeps the gate closed
     * on it (the default: a cutover follows); `note` opens it all the same, naming it in the summary and
     * the log (a `--cutover manual` migration stopping once caught up: waiting on a person's grant for
     * the catch-up timeout, 30 min, only to fail, helped nobody; the cutover's own gate holds on it).
     */
    beforeCutover?: 'hold' | 'note';
  } = {},
): Promise<GateStep> {
  const warned = loop.memory;
  // The catalogs are read on every sample that could open the gate (not while work after the load
  // still holds it: that may take minutes), and at least every CATALOG_CHECK_EVERY_MS.
  const catalog =
    (loop.streak + 1 >= ctx.config.lagSamples && !loop.waiting) ||
    !warned.catalog ||
    Date.now() - warned.catalog.at >= CATALOG_CHECK_EVERY_MS;
  let sample: Awaited<ReturnType<typeof sampleGate>>;
  try {
    sample = await sampleGate(ctx, warned, { catalog, validation: options.validation });
    outageOver(ctx, loop);
  } catch (err) {
    const waitMs = outageFailed(ctx, loop, err);
    loop.streak = 0;
    return { ready: false, waitMs, summary: `reconnecting: ${errorMessage(err)}` };
  }
  const { figures, waiting, blocked } = sample;
  const noted = options.beforeCutover === 'note' ? sample.beforeCutover : [];
  const reasons = noted.length ? sample.reasons : [...sample.reasons, ...sample.beforeCutover];
  loop.streak = reasons.length === 0 ? loop.streak + 1 : 0;
  loop.waiting = waiting.length > 0;
  const text = [...reasons, ...waiting].join('; ');
  // Said when the reasons change, not when only their figures do (a lag that grows changed the line
  // at every sample: hundreds of long lines on a pipe), and again every REASONS_AGAIN_MS with the figures of now.
  const shape = reasonsShape(text);
  const now = Date.now();
  if (text && (shape !== loop.lastReasons || now - (loop.lastLoggedAt ?? 0) >= REASONS_AGAIN_MS)) {
    ctx.log(`cutover gate closed: ${text}`);
    loop.lastLoggedAt = now;
  }
  loop.lastReasons = shape;
  const window = ctx.config.cutover === 'auto' ? ctx.config.cutoverWindow : undefined;
  const opensAt = window && loop.streak >= ctx.config.lagSamples ? cutoverWindowOpensAt(window, new Date()) : undefined;
  if (window && opensAt) {
    // Caught up, outside the plan's cutover window: catch-up goes on (the catch-up timeout counts from
    // the window's opening), and the gate is sampled again at most a minute later.
    loop.startedAt = Date.now();
    const summary = `caught up (lag ${mib(figures.bytes)} / ${figures.ms} ms); waiting for the cutover window ${describeCutoverWindow(window)}, which opens at ${opensAt.toISOString()}`;
    if (summary.split(';')[1] !== loop.lastWindow) ctx.log(summary);
    loop.lastWindow = summary.split(';')[1];
    return {
      ready: false,
      waitMs: Math.min(60_000, Math.max(ctx.config.lagSampleIntervalMs, opensAt.getTime() - Date.now())),
      figures,
      summary,
    };
  }
  if (loop.streak >= ctx.config.lagSamples && !waiting.length && !catalog) {
    // The work after the load ended since the last sample, which skipped the catalogs: the gate opens
    // only on a sample that read them, the next one, at once.
    return { ready: false, waitMs: 0, figures, summary: `gate open, ${loop.streak} samples; checking the catalogs` };
  }
  if (loop.streak >= ctx.config.lagSamples && !waiting.length) {
    const first = noted.length ? beforeCutoverText(noted) : undefined;
    if (first) ctx.log(`warning: caught up, but ${first}`);
    return {
      ready: true,
      waitMs: 0,
      figures,
      summary: `lag ${mib(figures.bytes)} / ${figures.ms} ms (limits ${mib(ctx.config.maxLagBytes)} / ${ctx.config.maxLagMs} ms), not growing, for ${loop.streak} samples; drain predicted at ${figures.predictedDrainMs} ms (budget ${ctx.config.maxDrainMs} ms); source ${mbps(figures.generatedBps)}, applied ${mbps(figures.appliedBps)}; no long transactions; schemas agree${first ? `; ${first}` : ''}`,
      ...(noted.length ? { noted } : {}),
    };
  }
  // Caught up and only waiting for the work after the load while it goes on (a VALIDATE of a big table
  // may take hours): that time is not catch-up's. Waiting for someone else's lock, it counts.
  if (!reasons.length && waiting.length && !blocked) loop.startedAt = Date.now();
  if (ctx.config.catchUpTimeoutMs > 0 && Date.now() - loop.startedAt > ctx.config.catchUpTimeoutMs) {
    throw new LagTimeoutError(
      `the cutover gate did not open within ${Math.round(ctx.config.catchUpTimeoutMs / 1000)} s: ${text || 'lag unstable'}`,
      {
        phase: 'catch-up',
        hint: 'replication keeps running and nothing was removed; fix the reason above and run `pgferry resume` (or `pgferry rollback`)',
      },
    );
  }
  return {
    ready: false,
    // Caught up and waiting only for the work after the load: no need to sample faster than usual
    // (the local loop samples again the moment that work ends).
    waitMs: onlyWaiting(ctx, loop)
      ? ctx.config.lagSampleIntervalMs
      : sampleIntervalMs(figures, reasons, ctx.config.lagSampleIntervalMs),
    figures,
    summary: text
      ? `gate closed: ${text}`
      : `gate open, ${loop.streak} of ${ctx.config.lagSamples} samples; lag ${mib(figures.bytes)} / ${figures.ms} ms`,
  };
}

/**
 * Phase "Catch up": returns once the gate has been open for `lagSamples` consecutive samples. With
 * `validation: 'background'`, foreign keys still being validated do not hold the gate (a catch-up before
 * the verify, which the last one follows); a failure stops their validation.
 */
export async function catchUp(
  ctx: PhaseContext,
  options: { validation?: 'wait' | 'background' } = {},
): Promise<string> {
  try {
    return await catchUpWith(ctx, options);
  } catch (err) {
    await stopFinishingLoad(ctx);
    throw err;
  }
}

async function catchUpWith(ctx: PhaseContext, options: { validation?: 'wait' | 'background' }): Promise<string> {
  const after = finishLoad(ctx);
  const validating = after.pending.length;
  // What the gate waits for: the statistics, and unless validated in the background the foreign keys.
  let settled = false;
  const settle = () => {
    settled = true;
  };
  const awaited = (options.validation === 'background' ? after.analyzed : after.done).then(settle, settle);
  const loop = newGateLoop();
  for (;;) {
    const step = await gateStep(ctx, loop, options);
    if (step.ready) {
      const validated =
        validating && options.validation !== 'background' ? `; ${validating} foreign key(s) validated` : '';
      return `${step.summary}${validated}`;
    }
    // Caught up and only waiting for the work after the load: sampled again the moment it ends.
    if (onlyWaiting(ctx, loop) && !settled) {
      // The timer cleared once the work ends first: left pending, it would hold the process up to a
      // sample interval after the phase is over.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([new Promise((resolve) => (timer = setTimeout(resolve, step.waitMs))), awaited]);
      clearTimeout(timer);
    } else await sleep(step.waitMs);
  }
}

/** Rounds of "gate, then verify" before a replica that stays behind makes the pre-switch verify give up. */
export const VERIFY_BEFORE_SWITCH_ROUNDS = 3;

/**
 * Catch up, then verify every table before anything is switched (once per migration, until it passes):
 * the source read, the target read once the subscription has passed that read's position. A real
 * difference stops here, with the application still on the source (VerificationFailedError); then the
 * gate again, since the reads took a while.
 */
export async function catchUpAndVerify(ctx: PhaseContext): Promise<string> {
  try {
    return await catchUpAndVerifyWith(ctx);
  } catch (err) {
    await stopFinishingLoad(ctx);
    throw err;
  }
}

export interface VerifyRound {
  /** No more rounds: verified, or not shown equal after the last round (a warning). */
  done: boolean;
  /** The round ended on a lost connection (not counted): catch up, then again. */
  interrupted: boolean;
  said: string;
  outcome?: string;
}

/**
 * One round of the verify before the switch (the `round`th, from 1): every table read while
 * replication runs. A difference throws VerificationFailedError; tables the replica did not reach in
 * time are tried again after catching up, up to VERIFY_BEFORE_SWITCH_ROUNDS rounds.
 */
export async function verifyBeforeSwitchRound(ctx: PhaseContext, round: number): Promise<VerifyRound> {
  ctx.log('verifying every table before the switch, while replication runs');
  let result: Awaited<ReturnType<typeof verifyTables>>;
  try {
    result = await verifyTables(ctx);
  } catch (err) {
    // A server that went away mid-read: catch-up rides it out (or stops with the truth), then again.
    if (!isConnectionLoss(err)) throw err;
    ctx.log(`lost the connection while verifying (${errorMessage(err)}); catching up before verifying again`);
    return { done: false, interrupted: true, said: `interrupted: ${errorMessage(err)}` };
  }
  await ctx.update((s) => {
    s.verifyBeforeSwitch = result;
  });
  const said = verifySummary(result);
  if (result.outcome === 'mismatch')
    throw new VerificationFailedError(`before the switch: ${said}`, {
      phase: 'catch-up',
      hint: `nothing was switched or frozen: the application stays on the source and replication goes on. Find what wrote those rows differently (a write to the target, a trigger or rule enabled on it, a changed column default), fix the target, then \`pgferry cutover --id ${ctx.config.id}\` verifies again and switches only once every table matches (a migration with --cutover auto: \`pgferry resume --id ${ctx.config.id}\` too; a manual one's resume only catches up), or \`pgferry rollback --id ${ctx.config.id}\``,
    });
  if (result.outcome === 'ok') {
    ctx.log(`verified before the switch: ${said}`);
    return { done: true, interrupted: false, said: `verified before the switch: ${said}`, outcome: result.outcome };
  }
  if (round >= VERIFY_BEFORE_SWITCH_ROUNDS) {
    // Not a difference, only not shown equal: the gate (lag) decides the cutover, and the verify after
    // the switch reads every table again. Said where status shows it.
    const message = `verify before the switch, ${round} rounds: ${said}`;
    ctx.log(`warning: ${message}`);
    await ctx.update((s) => {
      s.warnings = [...(s.warnings ?? []), message];
    });
    return { done: true, interrupted: false, said, outcome: result.outcome };
  }
  ctx.log(`${said}: catching up before verifying again`);
  return { done: false, interrupted: false, said, outcome: result.outcome };
}

async function catchUpAndVerifyWith(ctx: PhaseContext): Promise<string> {
  // Foreign keys added NOT VALID are validated on the target while the verify reads the source; the
  // last catch-up waits for them.
  if (ctx.state.verifyBeforeSwitch?.outcome === 'ok') return await catchUp(ctx);
  await catchUp(ctx, { validation: 'background' });
  for (let round = 1; ; round++) {
    const r = await verifyBeforeSwitchRound(ctx, round);
    if (r.done) return `${await catchUp(ctx)}; ${r.said}`;
    if (r.interrupted) round--;
    await catchUp(ctx, { validation: 'background' });
  }
}
