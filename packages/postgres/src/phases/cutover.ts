/**
 * Cut over, as a list of steps:
 *   freeze writes on the source → drain to the LSN taken after the freeze → sync sequences →
 *   stop forward replication → start reverse replication → switch the connection → target writable.
 * The source stays read-only afterwards; reverse replication keeps it current so rollback loses nothing.
 * A drain that times out unfreezes the source and hands back to catch-up.
 */
import { performance } from 'node:perf_hooks';
import {
  ConnectionLostError,
  ConnectionSwitchError,
  CutoverFailedError,
  DEFAULTS,
  DrainTimeoutError,
  errorMessage,
  FreezeFailedError,
  type MigrationState,
  mib,
  objectNames,
  PgferryError,
  PreparedTransactionsPendingError,
  ReplicationFailedError,
  StateConflictError,
  type SwitchRecord,
  type SwitchRestore,
} from '@pgferry/core';
import { listTables } from '../catalog';
import { critical } from '../critical';
import { type Db, ident, isServerAway } from '../db';
import {
  currentLsn,
  flushWal,
  freezeWrites,
  isFrozen,
  unfreezeWrites,
  waitConfirmed,
  waitPreparedTransactions,
  writesSince,
} from '../freeze';
import { describeDrainForecast, forecastDrain } from '../lag';
import {
  applyTuning,
  createSubscription,
  dropPublication,
  dropSlot,
  dropSubscription,
  ensurePublication,
  NO_TUNING,
  prepareSubscription,
  slotExists,
  startPreparedSubscription,
  subscriptionExists,
  subscriptionMatchesPublication,
  unappliedChanges,
  upstreamSubscriptions,
} from '../replication';
import { syncSequences } from '../sequences';
import { readSwitchFile, switchConnection } from '../switch';
import { type PhaseContext, partitionsViaRoot, targetMajor } from './context';
import { runUndo, type UndoStep } from './undo';

/** The last look may decode at most 16 MiB of WAL and take at most 250 ms of the write gap. */
const LAST_LOOK = { maxDecodeBytes: 16 * 1024 * 1024, timeoutMs: 250 };

async function createLogicalSlot(db: Db, name: string) {
  if (!(await slotExists(db, name)))
    await db.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [name]);
}

/**
 * The source unfrozen, if this cutover froze it: one that was read-only before (another migration's
 * freeze, recorded before ours) stays read-only.
 */
function unfreezeSource(ctx: PhaseContext): UndoStep[] {
  return ctx.state.cutover?.wasFrozen ? [] : [['unfreeze the source', () => unfreezeWrites(ctx.source)]];
}

/**
 * Undo a cutover that has not switched: reverse objects gone, forward replication on, source writable.
 * Its breadcrumb goes only if all of that worked (runUndo); `resume` undoes it again otherwise.
 */
async function undo(ctx: PhaseContext, cause?: unknown, steps?: UndoStep[]) {
  const n = objectNames(ctx.config.id);
  await runUndo(
    ctx,
    'cutover',
    steps ?? [
      [
        `drop the prepared subscription ${n.reverseSubscription} on the source`,
        () => dropSubscription(ctx.source, n.reverseSubscription, { keepSlot: true }),
      ],
      [`drop the reverse slot ${n.reverseSlot} on the target`, () => dropSlot(ctx.target, n.reverseSlot)],
      [
        `drop the publication ${n.reversePublication} on the target`,
        () => dropPublication(ctx.target, n.reversePublication),
      ],
      [
        `enable the forward subscription ${n.subscription}`,
        async () => {
          if (await subscriptionExists(ctx.target, n.subscription))
            await ctx.target.query(`ALTER SUBSCRIPTION ${ident(n.subscription)} ENABLE`);
        },
      ],
      ...unfreezeSource(ctx),
    ],
    { cause, command: `pgferry resume --id ${ctx.config.id}` },
  );
}

/** Finish what follows the switch (outside the write gap): forward subscription and slot dropped. */
async function finish(ctx: PhaseContext) {
  const n = objectNames(ctx.config.id);
  await dropSubscription(ctx.target, n.subscription);
  await dropSlot(ctx.source, n.slot);
}

/**
 * A cutover that froze the source and then stopped (crash, kill) before it began to switch: the
 * application still points at the source, so unfreeze it and resume forward replication. Once the
 * switch has begun it is never undone here: `cutover` finishes it instead (converging forward).
 */
export async function undoInterruptedCutover(ctx: PhaseContext): Promise<boolean> {
  const c = ctx.state.cutover;
  if (!c?.freezeAt || c.switchAt || c.switchStartedAt) return false;
  ctx.log('a previous cutover stopped before the switch: unfreezing the source and resuming forward replication');
  await undo(ctx);
  return true;
}

/** Bytes from the slot's confirmed position to `lsn`. */
async function lsnDistance(db: Db, lsn: string, slot: string): Promise<number> {
  const [row] = await db.query<{ b: number }>(
    'SELECT greatest(0, pg_wal_lsn_diff($1::pg_lsn, confirmed_flush_lsn))::bigint AS b FROM pg_replication_slots WHERE slot_name = $2',
    [lsn, slot],
  );
  return row?.b ?? 0;
}

/**
 * Catch up once more and predict the drain the freeze would start (forecastDrain, as the rollback does):
 * the rate is measured on this very catch-up when it had enough to go on, otherwise the rate the gate
 * last saw stands in, never below the floor. Over the budget: no freeze (DrainTimeoutError, back to catch-up).
 */
async function predictDrain(ctx: PhaseContext): Promise<number> {
  const n = objectNames(ctx.config.id);
  await ctx.faults?.beforeDrainForecast?.();
  const f = await forecastDrain(
    ctx.source,
    n.slot,
    Math.min(ctx.config.drainTimeoutMs, Math.max(ctx.config.maxDrainMs * 5, 1000)),
    ctx.state.lag?.at(-1)?.appliedBps ?? 0,
  );
  if (!f.slotFound)
    throw new ReplicationFailedError(`replication slot ${n.slot} disappeared from the source`, {
      phase: 'cutover',
      hint: 'roll back and migrate again',
    });
  if (!f.caughtUp || f.predictedMs > ctx.config.maxDrainMs)
    throw new DrainTimeoutError(
      `not freezing: the drain is predicted at ${f.predictedMs} ms, over the budget of ${ctx.config.maxDrainMs} ms (${describeDrainForecast(f, 'the target')}${f.caughtUp ? '' : '; it did not catch up with the source before the freeze'})`,
      {
        phase: 'cutover',
        hint: 'pgferry returns to catch-up and tries again when lag is low (raise --max-drain-ms to allow a longer write gap)',
      },
    );
  return f.predictedMs;
}

export function switchOptions(ctx: PhaseContext) {
  return {
    switchFile: ctx.config.switchFile,
    onSwitch: ctx.config.onSwitch,
    migrationId: ctx.config.id,
    direction: 'forward' as const,
    activeUrl: ctx.config.targetUrl,
    previousUrl: ctx.config.sourceUrl,
    sourceUrl: ctx.config.sourceUrl,
    targetUrl: ctx.config.targetUrl,
  };
}

/**
 * The AWS connection switch's own check (config `switch`: the resource there and readable, its type,
 * an SSM SecureString's KMS key against `switch.kmsKeyArn`), before anything is frozen: a problem found
 * then leaves the application where it is, instead of failing the switch inside the write gap.
 */
async function checkAwsConnection(ctx: PhaseContext): Promise<void> {
  const sw = ctx.connectionSwitch;
  if (!sw) return;
  const problems = await withTimeout(
    sw.check(),
    DEFAULTS.connectionSwitchTimeoutMs,
    `${sw.resource} did not answer within ${DEFAULTS.connectionSwitchTimeoutMs} ms`,
  );
  if (problems.length === 0) return;
  throw new ConnectionSwitchError(problems.map((p) => p.message).join('; '), sw.resource, {
    field: 'switch',
    hint: `${problems
      .map((p) => p.hint)
      .filter(Boolean)
      .join('; ')}; then run \`pgferry cutover\` again`,
  });
}

/**
 * The AWS connection switch (config `switch`), after the switch file and command. Idempotent: a retry
 * (resume after a failure or a crash) finds the value it replaced in the resource itself. A failure,
 * or no answer within the time allowed, may have moved the application already: the caller never
 * undoes the cutover for it.
 */
export async function switchAwsConnection(ctx: PhaseContext): Promise<SwitchRecord | undefined> {
  const sw = ctx.connectionSwitch;
  if (!sw) return undefined;
  try {
    const record = await withTimeout(
      sw.switchTo({ url: ctx.config.targetUrl }, ctx.config.id),
      DEFAULTS.connectionSwitchTimeoutMs,
      `${sw.resource} did not answer within ${DEFAULTS.connectionSwitchTimeoutMs} ms`,
    );
    ctx.log(`${sw.resource} ${record.changed ? 'now points at the target' : 'already pointed at the target'}`);
    return record;
  } catch (err) {
    throw new CutoverFailedError(
      `the connection switch of ${sw.resource} did not finish: ${errorMessage(err)}; it may already point the application at the target, so the cutover is not undone (the source stays read-only)`,
      {
        cause: err,
        phase: 'cutover',
        field: 'switch',
        hint: `fix what stopped it (its permissions, the resource), then \`pgferry resume --id ${ctx.config.id}\` switches again and finishes the cutover`,
      },
    );
  }
}

/**
 * The cutover's breadcrumb, written just before the source is frozen: when, and whether the source was
 * read-only already (another migration's freeze), which an undo then leaves as it was.
 */
export async function recordForwardFreeze(ctx: PhaseContext): Promise<{ freezeAt: Date; wasFrozen: boolean }> {
  const freezeAt = new Date();
  const wasFrozen = await isFrozen(ctx.source);
  await ctx.update((s) => {
    s.cutover = { freezeAt: freezeAt.toISOString(), direction: 'forward', wasFrozen };
  });
  return { freezeAt, wasFrozen };
}

/** `p`, or a rejection with `message` after `ms` (the work itself is not cancelled). */
export function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * The switch began and the process died (or the switch failed) before its end was recorded. Everything
 * before the switch was done (drained, sequences synced, reverse replication running), so switching
 * again — file rewrite, --on-switch and the AWS switch are idempotent — and recording it is the safe way
 * out; undoing could split the writes. Both cutovers' (this one and dms-cutover.ts).
 */
export async function redoSwitch(ctx: PhaseContext): Promise<void> {
  const c = ctx.state.cutover!;
  await switchConnection(switchOptions(ctx));
  const switchRecord = await switchAwsConnection(ctx);
  const now = new Date();
  await ctx.update((s) => {
    s.cutover = {
      ...c,
      switchAt: now.toISOString(),
      writeGapMs: now.getTime() - Date.parse(c.freezeAt!),
      ...(switchRecord ? { switchRecord } : {}),
    };
  });
  await settleSwitch(ctx);
}

/**
 * The switch inside the write gap, both cutovers' (this one and dms-cutover.ts): the switch file and
 * command, then the AWS switch (its propagation is waited for after the gap: settleSwitch). A failed
 * command with no switch file naming the target did not move the application: `undoCutover` runs (the
 * breadcrumb without switchStartedAt leads `resume` to undo again, not to switch) and the error is
 * thrown. Once the switch file names the target, or the AWS switch failed, nothing is undone: the
 * switch stays begun and `resume` finishes it.
 */
export async function switchInGap(
  ctx: PhaseContext,
  undoCutover: (cause: unknown) => Promise<void>,
): Promise<SwitchRecord | undefined> {
  try {
    await switchConnection(switchOptions(ctx));
  } catch (err) {
    // Once the switch file names the target, the application may have moved and written there:
    // undoing could lose those writes, so the switch stays begun and `resume` finishes it.
    if (ctx.config.switchFile && readSwitchFile(ctx.config.switchFile) === ctx.config.targetUrl)
      throw new CutoverFailedError(
        `the switch did not finish: ${errorMessage(err)}; the switch file already names the target, so the cutover is not undone (the source stays read-only)`,
        {
          cause: err,
          phase: 'cutover',
          field: '--on-switch',
          hint: `fix the --on-switch command, then \`pgferry resume --id ${ctx.config.id} --on-switch '<the fixed command>'\` switches again and finishes`,
        },
      );
    // Only the switch command ran, and it failed: the application did not move. Undo everything;
    // should the undo fail, its breadcrumb must lead `resume` to undo again, not to switch.
    await ctx.update((s) => {
      s.cutover = { ...s.cutover, switchStartedAt: undefined };
    });
    await undoCutover(err);
    if (err instanceof PgferryError) throw err;
    // (A raw error, the switch file not written for a full disk, say, would reach the failure policy as
    // an unknown error and roll the whole load back: the cutover was undone, the load stays.)
    throw new CutoverFailedError(`the switch failed; the cutover was undone: ${errorMessage(err)}`, {
      cause: err,
      phase: 'cutover',
      hint: `fix the cause, then run \`pgferry cutover --id ${ctx.config.id}\` again (replication goes on meanwhile)`,
    });
  }
  return switchAwsConnection(ctx);
}

/**
 * After the write gap: a switch whose change takes a while to reach every server that answers for it
 * (Route 53's INSYNC) is waited for here, bounded, with its own duration recorded as
 * `cutover.switchPropagation`. The switch is done and stays done: a propagation that fails or does not
 * finish in time is a warning, never an undo. Clients still hold the old answer for up to the TTL.
 * Given `restored` (the rollback's put-back of the switch, after its own gap), that change is followed
 * the same way and recorded as `rollback.switchPropagation`.
 */
export async function settleSwitch(ctx: PhaseContext, restored?: SwitchRestore): Promise<void> {
  const sw = ctx.connectionSwitch;
  const record = ctx.state.cutover?.switchRecord;
  if (!sw?.settle || !record || !(restored ?? record).changed) return;
  const [what, old, stands] = restored
    ? ['switch back', 'the target', 'the rollback']
    : ['switch', 'the source', 'the cutover'];
  const t0 = performance.now();
  let done = false;
  let failure: string | undefined;
  try {
    done = await withTimeout(
      sw.settle(record, restored),
      DEFAULTS.connectionSwitchTimeoutMs,
      `no answer within ${DEFAULTS.connectionSwitchTimeoutMs} ms`,
    );
  } catch (err) {
    failure = errorMessage(err);
  }
  const ms = Math.round(performance.now() - t0);
  const warning = done
    ? undefined
    : `the ${what} of ${sw.resource} is done, but its propagation was not confirmed after ${ms} ms (${failure ?? 'still pending'}); clients may reach ${old} (read-only) a while longer, ${stands} stands`;
  ctx.log(warning ? `warning: ${warning}` : `${sw.resource}: the ${what} propagated ${ms} ms after the write gap`);
  const switchPropagation = { ms, done, ...(failure ? { error: failure } : {}) };
  await ctx.update((s) => {
    if (restored) s.rollback = { ...s.rollback, switchPropagation };
    else s.cutover = { ...s.cutover, switchPropagation };
    if (warning) s.warnings = [...(s.warnings ?? []), warning];
  });
}

/**
 * Runs what follows the switch: a failure there undoes nothing (the application may write to the
 * target already), and says so, with the command that finishes the cutover. A server that went away is
 * exit 3, as for any connection; never the bare error of a query, which read as a cutover rolled back.
 */
async function afterTheSwitch(ctx: PhaseContext, work: () => Promise<string>): Promise<string> {
  try {
    return await work();
  } catch (err) {
    // Another actor has the migration (a lost lease, a concurrent change): said as such, as the
    // workflow's retry and failure policy read it, never as a failed cutover.
    if (err instanceof StateConflictError) throw err;
    const id = ctx.config.id;
    const message = `the application was switched to the target, but finishing the cutover failed: ${errorMessage(err)}`;
    const options = {
      cause: err,
      phase: 'cutover' as const,
      migrationId: id,
      hint: `nothing was undone: the application stays on the target, the source read-only, reverse replication kept; once both servers answer, \`pgferry resume --id ${id}\` finishes the cutover (and verifies)`,
    };
    throw isServerAway(err) || (err as PgferryError)?.exitCode === 3
      ? new ConnectionLostError(message, options)
      : new CutoverFailedError(message, options);
  }
}

async function finishInterruptedSwitch(ctx: PhaseContext): Promise<string> {
  ctx.log('a previous cutover stopped while switching the connection: switching again to finish it');
  // Its own errors as they are (a switch command to fix, with its hint); only what follows is "after the switch".
  await redoSwitch(ctx);
  await afterTheSwitch(ctx, async () => {
    await finish(ctx);
    return '';
  });
  return `switch finished after an interruption (write gap ${ctx.state.cutover?.writeGapMs} ms, including the interruption)`;
}

/**
 * A source that replicates from another server: its subscription's apply writes through the freeze (the
 * last look would then refuse every cutover), and after the switch into the source alone. Refused
 * before anything is frozen, with how to move that subscription to the target (both cutovers).
 */
export async function refuseUpstreamSubscriptions(ctx: PhaseContext): Promise<void> {
  const upstream = await upstreamSubscriptions(ctx.source);
  if (!upstream.length) return;
  throw new CutoverFailedError(
    `the source subscribes to another server (${upstream.join(', ')}): its apply writes through the freeze, and after the switch would write into the source only; nothing was frozen`,
    {
      phase: 'cutover',
      hint: `move it to the target at the cutover: on the source \`ALTER SUBSCRIPTION ${upstream[0]} DISABLE\` (its upstream keeps what follows in its slot), run \`pgferry cutover\` again, then subscribe the target from that slot (CREATE SUBSCRIPTION … WITH (create_slot = false, slot_name = '<its slot>', copy_data = false), after \`ALTER SUBSCRIPTION ${upstream[0]} SET (slot_name = NONE)\` on the source)`,
    },
  );
}

export async function cutover(ctx: PhaseContext): Promise<string> {
  const n = objectNames(ctx.config.id);
  const c = ctx.state.cutover;
  if (c?.switchAt)
    return afterTheSwitch(ctx, async () => {
      await finish(ctx);
      return `already done: switched at ${c.switchAt} (write gap ${c.writeGapMs} ms)`;
    });
  if (c?.switchStartedAt) return finishInterruptedSwitch(ctx);
  // A crash between freeze and switch: the application still points at the source. Undo, then go again.
  await undoInterruptedCutover(ctx);
  await refuseUpstreamSubscriptions(ctx);
  let reverseTuning = NO_TUNING;
  let predictedDrainMs = 0;
  // Everything that can be prepared outside the write gap is prepared here. A failure here leaves the
  // load and forward replication as they are (a cutover failure, not a migration failure).
  try {
    await checkAwsConnection(ctx);
    // Made at start-replication; its tables brought up to date (a partition made since, before 13).
    const targetTables = await listTables(ctx.target, { sizes: false });
    await ensurePublication(ctx.target, n.reversePublication, targetTables, { viaRoot: await partitionsViaRoot(ctx) });
    reverseTuning = await applyTuning(ctx.source, await targetMajor(ctx), targetTables);
    await prepareSubscription(
      ctx.source,
      n.reverseSubscription,
      ctx.config.targetUrl,
      n.reversePublication,
      reverseTuning,
    );
    // Sequences synced once outside the gap: the sync inside it then sets only those that moved since.
    await syncSequences(ctx.source, ctx.target);
    // The application kept writing meanwhile (hundreds of ms on a wide schema), and the gate's lag
    // reading is that old: catch up once more, so the drain inside the gap waits only for the last
    // moment's writes; then predict that drain and freeze only if it fits the budget.
    predictedDrainMs = await predictDrain(ctx);
  } catch (err) {
    await dropSubscription(ctx.source, n.reverseSubscription, { keepSlot: true }).catch(() => {});
    if (err instanceof DrainTimeoutError) throw err;
    throw new CutoverFailedError(`preparing the cutover failed; nothing was frozen: ${errorMessage(err)}`, {
      cause: err,
      phase: 'cutover',
      // (A failed query's own hint only quotes the query.)
      hint:
        err instanceof PgferryError && err.hint && !err.hint.startsWith('while running:')
          ? err.hint
          : 'nothing changed for the application; the source must reach the target for reverse replication (check the target URL, its pg_hba.conf and free WAL senders), and every source sequence must exist on the target; then run `pgferry cutover` again',
    });
  }
  const { freezeAt, wasFrozen } = await recordForwardFreeze(ctx);

  // From the freeze until the switch is recorded (or undone), Ctrl-C waits: see critical.ts.
  const record = await critical(async () => {
    const t0 = performance.now();
    const steps: Record<string, number> = {};
    let mark = t0;
    const step = (name: string) => {
      const now = performance.now();
      steps[name] = Math.round((now - mark) * 10) / 10;
      mark = now;
    };
    let freeze: Awaited<ReturnType<typeof freezeWrites>>;
    let freezeLsn: string;
    try {
      freeze = await freezeWrites(ctx.source, { preparedOrphanMs: ctx.config.preparedOrphanMs });
      step('freeze');
      // A transaction manager's prepared transactions commit after the freeze (COMMIT PREPARED works
      // on a read-only database): the LSN to drain to is read once none is left.
      await waitPreparedTransactions(ctx.source, ctx.config.maxPreparedWaitMs);
      step('prepared');
      await ctx.faults?.afterFreeze?.();
      freezeLsn = await currentLsn(ctx.source);
    } catch (err) {
      if (err instanceof PreparedTransactionsPendingError) {
        // As after a drain timeout: unfrozen, and the runner returns to catch-up.
        await undo(ctx, err, unfreezeSource(ctx));
        throw new PreparedTransactionsPendingError(`${err.message}; the source was unfrozen`, {
          phase: 'cutover',
          hint: err.hint,
        });
      }
      // Whatever broke the freeze (a refused check, a lost connection), the source must not stay frozen.
      await undo(ctx, err);
      if (err instanceof FreezeFailedError) throw err;
      throw new CutoverFailedError(`the write freeze failed; the source was unfrozen: ${errorMessage(err)}`, {
        cause: err,
        phase: 'cutover',
      });
    }
    // The budget is the drain's, not the freeze's: the write gap's drain part is what it bounds.
    let drainBytes: number;
    let drainStart: number;
    let drained: boolean;
    try {
      drainBytes = await lsnDistance(ctx.source, freezeLsn, n.slot);
      drainStart = performance.now();
      await ctx.faults?.duringDrain?.();
      drained = await waitConfirmed(ctx.source, n.slot, freezeLsn, ctx.config.maxDrainMs);
    } catch (err) {
      // A lost connection, a statement timeout: undone as a drain that ran out of time is (the source
      // unfrozen, the reverse subscription kept prepared), never left to the failure policy as a raw
      // error, which would roll the whole load back.
      await undo(ctx, err, unfreezeSource(ctx));
      throw new CutoverFailedError(`waiting for the drain failed; the source was unfrozen: ${errorMessage(err)}`, {
        cause: err,
        phase: 'cutover',
        hint: `nothing was switched and the loaded target stays; \`pgferry resume --id ${ctx.config.id}\` goes on once the cause is fixed`,
      });
    }
    if (!drained) {
      const abandonedMs = Math.round(performance.now() - drainStart);
      await undo(ctx, new DrainTimeoutError(`the target did not confirm ${freezeLsn} in time`), unfreezeSource(ctx));
      await ctx.update((s) => {
        s.events = [
          ...s.events,
          {
            at: new Date().toISOString(),
            message: `drain abandoned after ${abandonedMs} ms (budget ${ctx.config.maxDrainMs} ms, predicted ${predictedDrainMs} ms, ${drainBytes} bytes to confirm): source unfrozen`,
          },
        ];
      });
      throw new DrainTimeoutError(
        `the target did not confirm ${freezeLsn} within the drain budget of ${ctx.config.maxDrainMs} ms (predicted ${predictedDrainMs} ms); the source was unfrozen after a write gap of ${Math.round(performance.now() - t0)} ms`,
        {
          phase: 'cutover',
          hint: 'pgferry returns to catch-up and tries again when lag is low (raise --max-drain-ms to allow a longer write gap)',
        },
      );
    }
    const actualDrainMs = Math.round(performance.now() - drainStart);
    const drainedMs = performance.now() - t0;
    step('drain');
    let writesAfterFreeze = 0;
    let lastLookSkipped = false;
    let sequences = 0;
    try {
      sequences = await syncSequences(ctx.source, ctx.target);
      step('sequences');
      // A session that turned read-only off could still commit; carry its writes over before stopping.
      writesAfterFreeze = await writesSince(ctx.source, freeze.xmax, freeze.ownXids);
      if (writesAfterFreeze > 0) {
        // Flushed first: a commit made with synchronous_commit = off may still be in the WAL buffers,
        // past the position currentLsn reads (and past what the last look decodes), acknowledged all
        // the same.
        await flushWal(ctx.source, 'freeze');
        const lsn = await currentLsn(ctx.source);
        // What is left of the drain's budget (the first drain took the rest): the write gap's drain part
        // stays within --max-drain-ms, however many writes came after the freeze.
        const left = Math.max(0, ctx.config.maxDrainMs - actualDrainMs);
        if (!(await waitConfirmed(ctx.source, n.slot, lsn, left))) {
          throw new DrainTimeoutError(
            `writes after the freeze were not drained to ${lsn} within what was left of the drain budget (${left} of ${ctx.config.maxDrainMs} ms)`,
          );
        }
        sequences = await syncSequences(ctx.source, ctx.target);
      }
      step('writesAfterFreeze');
      // Forward apply stops before the reverse slot exists, so nothing applied from the source echoes back.
      await ctx.target.query(`ALTER SUBSCRIPTION ${ident(n.subscription)} DISABLE`);
      step('stopForward');
      // The last look: any change to a replicated table the target has not applied (a session that
      // turned read-only off and wrote after the drain) would stay behind. Undone then, not lost.
      // Bounded, so that it never lengthens the write gap by more than a moment: skipped (and said) when
      // the slot's restart point trails too far behind.
      const unapplied = await unappliedChanges(ctx.source, n.slot, n.publication, LAST_LOOK);
      if (unapplied === undefined) lastLookSkipped = true;
      else if (unapplied > 0)
        throw new CutoverFailedError(
          `${unapplied} change(s) to replicated tables were committed on the source after the freeze and after the drain, by a session that turned default_transaction_read_only off`,
          {
            phase: 'cutover',
            hint: 'find that writer in pg_stat_activity on the source and stop it (it ignores the freeze), then run `pgferry cutover` again',
          },
        );
      step('lastLook');
      await createLogicalSlot(ctx.target, n.reverseSlot);
      step('reverseSlot');
      // Prepared before the freeze; made anew only if the publication's tables changed since.
      if (await subscriptionMatchesPublication(ctx.source, n.reverseSubscription, ctx.target, n.reversePublication)) {
        await startPreparedSubscription(ctx.source, n.reverseSubscription, n.reverseSlot);
      } else {
        await dropSubscription(ctx.source, n.reverseSubscription, { keepSlot: true });
        await createSubscription(
          ctx.source,
          n.reverseSubscription,
          ctx.config.targetUrl,
          n.reversePublication,
          n.reverseSlot,
          { tuning: reverseTuning },
        );
      }
      step('reverseSubscription');
      await unfreezeWrites(ctx.target);
      // From here on a crash is finished forward, never undone (finishInterruptedSwitch).
      await ctx.update((s) => {
        s.cutover = { ...s.cutover, switchStartedAt: new Date().toISOString() };
      });
      step('record');
    } catch (err) {
      await undo(ctx, err);
      if (err instanceof DrainTimeoutError) throw err;
      throw new CutoverFailedError(
        `cutover failed before the switch; the source was unfrozen and forward replication resumed: ${(err as Error).message}`,
        {
          cause: err,
          phase: 'cutover',
          // What to do about it (the last look's writer, say) is the cause's to say.
          hint: err instanceof PgferryError ? err.hint : undefined,
        },
      );
    }
    const switchRecord = await switchInGap(ctx, (err) => undo(ctx, err));
    const switchedMs = performance.now() - t0;
    step('switch');
    const done = {
      freezeAt: freezeAt.toISOString(),
      freezeLsn,
      drainedAt: new Date(freezeAt.getTime() + drainedMs).toISOString(),
      switchStartedAt: ctx.state.cutover?.switchStartedAt,
      switchAt: new Date(freezeAt.getTime() + switchedMs).toISOString(),
      writeGapMs: Math.round(switchedMs),
      predictedDrainMs,
      drainMs: actualDrainMs,
      drainBytes,
      sessionsEnded: freeze.sessionsEnded,
      writesAfterFreeze,
      sequencesSynced: sequences,
      direction: 'forward' as const,
      stepsMs: steps,
      wasFrozen,
      ...(switchRecord ? { switchRecord } : {}),
    };
    await ctx.update((s) => {
      s.cutover = done;
    });
    return { ...done, drainedMs, lastLookSkipped };
  });
  return afterTheSwitch(ctx, () => finishAfterGap(ctx, record));
}

/** What follows the write gap, once the application was switched. */
async function finishAfterGap(
  ctx: PhaseContext,
  record: NonNullable<MigrationState['cutover']> & { lastLookSkipped: boolean },
): Promise<string> {
  const n = objectNames(ctx.config.id);
  // The gap is over once the switch is accepted; its propagation (Route 53's INSYNC) is waited for now.
  await settleSwitch(ctx);
  if (record.lastLookSkipped) {
    const message =
      "the last look for writes that ignored the freeze was skipped: the forward slot's restart point trailed too far behind to decode it within the write gap";
    ctx.log(`warning: ${message}`);
    await ctx.update((s) => {
      s.warnings = [...(s.warnings ?? []), message];
    });
  }
  if ((record.writesAfterFreeze ?? 0) > 0) {
    // (Transaction ids are server-wide: the count may include autovacuum and other databases' writes.)
    const message = `${record.writesAfterFreeze} transaction(s) committed on the source server after the freeze (a session that turned default_transaction_read_only off, autovacuum, or a write to another database on that server); what they changed in this database was drained to the target before the switch`;
    ctx.log(`warning: ${message}`);
    await ctx.update((s) => {
      s.warnings = [...(s.warnings ?? []), message];
    });
  }
  // Before the forward slot goes: anything the target never got (a writer that ignored the freeze after
  // the last look, or one a skipped look missed) exists on the source only. Said loudly, not lost quietly.
  const late = await unappliedChanges(ctx.source, n.slot, n.publication, {
    timeoutMs: 30_000,
    excludeOrigins: true,
  }).catch(() => undefined);
  if (late) {
    const message = `ATTENTION: ${late} change(s) to replicated tables committed on the source after the drain are not on the target: a writer ignored the freeze (turned default_transaction_read_only off). They exist on the source only; find them there before the source is retired`;
    ctx.log(message);
    await ctx.update((s) => {
      s.warnings = [...(s.warnings ?? []), message];
    });
  }
  await finish(ctx);
  return `write gap ${record.writeGapMs} ms (drain ${record.drainMs} ms, predicted ${record.predictedDrainMs} ms, ${mib(record.drainBytes ?? 0)}); ${record.sessionsEnded} session(s) ended; ${record.sequencesSynced} sequence(s) synced; reverse replication ${n.reverseSubscription} running; source left read-only`;
}
