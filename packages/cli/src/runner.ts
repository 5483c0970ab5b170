/**
 * The local runtime: runs the workflow's phases in order against two PostgreSQL servers, persisting
 * every step in the store so that another shell (status, rollback) or a later `resume` can take over.
 * Any failure before the switch rolls back what is safe (slot, publication, subscription, loaded
 * schema) so nothing is left behind on the source; after the switch the application stays on the target.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  ConnectionLostError,
  CutoverFailedError,
  checkPostgresUrl,
  DEFAULTS,
  DrainTimeoutError,
  errorMessage,
  FreezeFailedError,
  InvalidInputError,
  LagTimeoutError,
  type MigrationState,
  type MigrationStore,
  objectNames,
  PgferryError,
  PHASE_TITLES,
  type Phase,
  parseMigrationConfig,
  redactText,
  redactUrl,
  StateConflictError,
  UndoFailedError,
  VerificationFailedError,
} from '@pgferry/core';
import {
  assessPhase,
  bulkLoad,
  catchUp,
  catchUpAndVerify,
  cleanup,
  connect,
  connectionSettings,
  cutover,
  type Db,
  endOrphanSessions,
  type FaultPoints,
  ident,
  inspectApplicationName,
  inspectSide,
  isConnectionLoss,
  isFrozen,
  type LiveStatus,
  liveAttention,
  openSession as openTaskSession,
  type PhaseContext,
  type Progress,
  prepareSchema,
  rollback,
  runPhase as runTaskPhase,
  type Session,
  type SideLive,
  startReplication,
  subscriptionExists,
  undoInterruptedCutover,
  unfreezeWrites,
  unreachable,
  updateSubscriptionConnection,
  verify,
  wasInterrupted,
} from '@pgferry/postgres';

export interface RunnerEvents {
  log(message: string): void;
  phase(phase: Phase, event: 'start' | 'end' | 'skip', summary?: string): void;
  progress?(p: Progress): void;
}

export interface Runtime {
  store: MigrationStore;
  stateDir: string;
  events: RunnerEvents;
  /** Tests only: see FaultPoints. */
  faults?: FaultPoints;
}

/** Connect to `url` and let go: throws the usual connection error (naming --source/--target) if it does not answer. */
async function answers(side: 'source' | 'target', url: string, id: string) {
  const db = await connect(url, { side, applicationName: objectNames(id).applicationName, max: 1 });
  await db.end();
}

/** A new migration's state: config with redacted URLs; the real ones go to the secret store. */
export async function createMigration(rt: Runtime, input: unknown): Promise<MigrationState> {
  const config = parseMigrationConfig(input);
  // Both servers must answer before anything is recorded: a wrong password or host leaves no
  // migration behind that could be neither resumed nor removed.
  await answers('source', config.sourceUrl, config.id);
  await answers('target', config.targetUrl, config.id);
  const now = new Date().toISOString();
  const state: MigrationState = {
    id: config.id,
    version: 0,
    createdAt: now,
    updatedAt: now,
    status: 'running',
    phase: 'assess',
    config: {
      ...config,
      sourceUrl: redactUrl(config.sourceUrl),
      targetUrl: redactUrl(config.targetUrl),
      onSwitch: config.onSwitch && redactText(config.onSwitch),
    },
    phases: {},
    events: [{ at: now, message: 'migration created' }],
  };
  // An --on-switch command with a password in it runs whole in a later command (cutover, rollback).
  const onSwitch = config.onSwitch !== state.config.onSwitch ? { onSwitch: config.onSwitch } : {};
  await rt.store.create(state, { sourceUrl: config.sourceUrl, targetUrl: config.targetUrl, ...onSwitch });
  return state;
}

/**
 * New credentials for a stored migration's servers (a password rotated during a long migration):
 * each URL must name the same host, port, database and user as before, and must connect.
 */
export async function useCredentials(
  rt: Runtime,
  id: string,
  urls: { sourceUrl?: string; targetUrl?: string },
  options: { subscriptions?: boolean } = {},
): Promise<void> {
  if (!urls.sourceUrl && !urls.targetUrl) return;
  const secrets = await rt.store.secrets(id);
  // As libpq reads the URL: ?dbname=, ?host=, ?user= override its other parts.
  const identity = async (url: string, field: string) => {
    try {
      const c = await connectionSettings(url);
      return `${c.user ?? ''}@${c.host ?? ''}:${c.port ?? 5432}/${c.database ?? ''}`;
    } catch {
      throw new InvalidInputError(`${field} is not a postgres:// URL`, { field });
    }
  };
  const next = { ...secrets };
  for (const [key, field, side] of [
    ['sourceUrl', '--source', 'source'],
    ['targetUrl', '--target', 'target'],
  ] as const) {
    const url = urls[key];
    if (!url) continue;
    checkPostgresUrl(url, field); // as migrate checks it: a typo in a parameter is not a new password
    const [given, stored] = [await identity(url, field), await identity(secrets[key], field)];
    if (given !== stored)
      throw new InvalidInputError(`${field} names ${given}, but migration ${id} uses ${stored}`, {
        field,
        hint: `${field} may only bring new credentials (a rotated password) for the same user, server and database`,
      });
    await answers(side, url, id);
    next[key] = url;
  }
  if (!rt.store.updateSecrets) throw new PgferryError('this state store cannot change credentials');
  await rt.store.updateSecrets(id, next);
  if (options.subscriptions === false) return;
  // pgferry's subscriptions log in to the other server with what they were created with: a rotated
  // password would stop them at their next reconnect (and with the reverse one, the way back).
  const n = objectNames(id);
  const refresh = async (side: 'source' | 'target', url: string, subscription: string, publisherUrl: string) => {
    try {
      const db = await connect(url, { side, applicationName: n.applicationName, max: 1 });
      try {
        if (await updateSubscriptionConnection(db, subscription, publisherUrl))
          rt.events.log(
            `subscription ${subscription} on the ${side} now logs in with the new ${side === 'target' ? 'source' : 'target'} credentials`,
          );
      } finally {
        await db.end();
      }
    } catch (err) {
      throw new PgferryError(
        `the new credentials are stored, but subscription ${subscription} on the ${side} could not be given them: ${errorMessage(err)}`,
        {
          cause: err,
          hint: `run the command again with the same --source/--target once the ${side} answers; until then that subscription logs in with the old password`,
        },
      );
    }
  };
  if (urls.sourceUrl) await refresh('target', next.targetUrl, n.subscription, next.sourceUrl);
  if (urls.targetUrl) await refresh('source', next.sourceUrl, n.reverseSubscription, next.targetUrl);
}

/** What `cutover`, `resume` and `rollback` may change in a stored migration's configuration. */
export interface Reconfiguration {
  onSwitch?: string;
  switchFile?: string;
  maxPreparedWaitMs?: number;
  maxDrainMs?: number;
}

/**
 * Change how a stored migration switches (a --on-switch command that failed, fixed) or waits, before
 * the command that needs it runs. Validated as `migrate` validates it.
 */
export async function reconfigure(rt: Runtime, id: string, changes: Reconfiguration): Promise<void> {
  const given = Object.fromEntries(Object.entries(changes).filter(([, v]) => v !== undefined));
  if (Object.keys(given).length === 0) return;
  const state = await rt.store.get(id);
  const config = parseMigrationConfig({ ...state.config, ...given });
  await rt.store.put({
    ...state,
    config: { ...config, sourceUrl: state.config.sourceUrl, targetUrl: state.config.targetUrl },
    events: [
      ...state.events,
      { at: new Date().toISOString(), message: `configuration changed: ${Object.keys(given).join(', ')}` },
    ],
  });
}

/**
 * What is live on both servers for a stored migration (`pgferry status`): each side is checked on its
 * own, with short timeouts, so an unreachable one is reported rather than fatal. Only reads.
 */
export async function inspectMigration(rt: Runtime, id: string): Promise<LiveStatus> {
  const state = await rt.store.get(id);
  const secrets = await rt.store.secrets(id);
  const side = async (which: 'source' | 'target', url: string): Promise<SideLive> => {
    let db: Db | undefined;
    try {
      db = await connect(url, {
        side: which,
        applicationName: inspectApplicationName(id),
        max: 1,
        statementTimeoutMs: 5000,
        lockTimeoutMs: 1000,
      });
      return await inspectSide(db, id);
    } catch (err) {
      return unreachable(which, errorMessage(err));
    } finally {
      await db?.end().catch(() => {});
    }
  };
  const [source, target] = await Promise.all([side('source', secrets.sourceUrl), side('target', secrets.targetUrl)]);
  return { at: new Date().toISOString(), source, target, attention: liveAttention(state, source, target) };
}

export type { Session } from '@pgferry/postgres';

/** Open connections and a phase context for a stored migration. */
export function openSession(rt: Runtime, id: string): Promise<Session> {
  return openTaskSession(rt.store, id, {
    listener: rt.events,
    artifactDir: join(rt.stateDir, 'artifacts', id),
    faults: rt.faults,
  });
}

/** Run one phase with start/end bookkeeping. */
export function runPhase(
  rt: Runtime,
  ctx: PhaseContext,
  phase: Phase,
  fn: (ctx: PhaseContext) => Promise<string>,
): Promise<string> {
  return runTaskPhase(ctx, phase, fn, rt.events);
}

const LOAD_PHASES: [Phase, (ctx: PhaseContext) => Promise<string>][] = [
  ['assess', assessPhase],
  ['prepare-schema', prepareSchema],
  ['bulk-load', bulkLoad],
  ['start-replication', startReplication],
];

export interface AdvanceOptions {
  /** Cut over once caught up (auto), or stop at a steady catch-up (manual). */
  cutover: 'auto' | 'manual' | 'now';
}

/** Run `fn` with migration `id` claimed for this process (one command at a time per migration). */
async function claimed<T>(rt: Runtime, id: string, fn: () => Promise<T>): Promise<T> {
  await rt.store.get(id); // a missing migration is named as such, not as a claim
  const release = await rt.store.claim?.(id);
  try {
    return await fn();
  } finally {
    await release?.().catch(() => {});
  }
}

/** A migration that is over cannot be advanced: said before anything runs, so its state stays as it is. */
function assertAdvanceable(state: MigrationState) {
  const id = state.id;
  if (['completed', 'rolled-back', 'cleaned-up'].includes(state.status)) {
    throw new InvalidInputError(`migration ${id} is ${state.status}; nothing to resume`, {
      field: '--id',
      migrationId: id,
    });
  }
  if (state.status === 'failed') {
    throw new InvalidInputError(
      `migration ${id} failed in ${state.failure?.phase ?? '?'}: ${state.failure?.message ?? ''}`,
      {
        field: '--id',
        migrationId: id,
        // (Failed is what a rollback after the failure could not finish, or an assessment's blockers.)
        hint:
          state.failure?.phase === 'assess'
            ? 'nothing was created: fix the cause and start a new migration'
            : `the rollback after that failure did not finish: \`pgferry rollback --id ${id}\` finishes it; then start a new migration`,
      },
    );
  }
  assertNoUnfinishedRollback(state);
}

/** A rollback killed in its write gap is finished by `rollback` only: nothing else may run meanwhile. */
function assertNoUnfinishedRollback(state: MigrationState) {
  if (state.rollback?.freezeAt && !state.rollback.switchAt)
    throw new InvalidInputError(
      `a rollback of migration ${state.id} began at ${state.rollback.freezeAt} and did not finish`,
      {
        field: '--id',
        migrationId: state.id,
        hint: `run \`pgferry rollback --id ${state.id}\` to finish it first (the target is read-only until then)`,
      },
    );
}

/**
 * Advance a migration as far as it may go: to a steady catch-up (manual) or through cutover and
 * verify (auto, or `now` when the user runs `pgferry cutover`).
 */
export function advance(rt: Runtime, id: string, options: AdvanceOptions): Promise<MigrationState> {
  return claimed(rt, id, () => advanceClaimed(rt, id, options));
}

async function advanceClaimed(rt: Runtime, id: string, options: AdvanceOptions): Promise<MigrationState> {
  assertAdvanceable(await rt.store.get(id));
  const session = await openSession(rt, id);
  const { ctx } = session;
  try {
    await endOrphans(rt, ctx);
    await ctx.update((s) => {
      s.status = 'running';
      s.failure = undefined;
    });
    // Before anything else: never leave the source frozen by a cutover that died half way.
    await undoInterruptedCutover(ctx);
    if (ctx.state.cutover?.switchStartedAt && !ctx.state.cutover.switchAt) {
      await runPhase(rt, ctx, 'cutover', cutover); // the switch began: finish it, never go back
    }
    if (!ctx.state.cutover?.switchAt) {
      for (const [phase, fn] of LOAD_PHASES) {
        if (ctx.state.phases[phase]?.endedAt) {
          rt.events.phase(phase, 'skip', 'already done');
          continue;
        }
        await runPhase(rt, ctx, phase, fn);
      }
      for (let attempt = 1; ; attempt++) {
        // Every table is verified before a cutover may freeze anything: with --cutover manual when the
        // cutover is asked for (`pgferry cutover`), so that `migrate` returns as soon as it is caught up.
        await runPhase(rt, ctx, 'catch-up', options.cutover === 'manual' ? catchUp : catchUpAndVerify);
        if (options.cutover === 'manual') {
          await ctx.update((s) => {
            s.status = 'awaiting-cutover';
          });
          return ctx.state;
        }
        try {
          await runPhase(rt, ctx, 'cutover', cutover);
          break;
        } catch (err) {
          if (!(err instanceof DrainTimeoutError) || attempt >= DEFAULTS.cutoverAttempts) throw err;
          ctx.log(`${err.message}; back to catch-up (attempt ${attempt + 1} of ${DEFAULTS.cutoverAttempts})`);
        }
      }
    } else if (!ctx.state.phases.cutover?.endedAt) {
      await runPhase(rt, ctx, 'cutover', cutover); // finishes the tail after a crash
    }
    await ctx.update((s) => {
      s.status = 'cut-over';
    });
    await runPhase(rt, ctx, 'verify', verify);
    return ctx.state;
  } catch (err) {
    await fail(rt, ctx, err);
    throw err;
  } finally {
    await session.close();
  }
}

/** A failure that leaves the migration resumable: recorded, with everything it built kept. */
function keepRunning(ctx: PhaseContext, failure: MigrationState['failure'], message: string) {
  return ctx
    .update((s) => {
      s.status = 'running';
      s.failure = failure;
      s.events = [...s.events, { at: new Date().toISOString(), message }];
    })
    .catch(() => {});
}

/** Record the failure; before the switch, roll back so no slot or frozen source is left behind. */
async function fail(rt: Runtime, ctx: PhaseContext, err: unknown) {
  // A signal broke the phase (a killed pg_restore, a closed snapshot): the process is exiting, and a
  // rollback cut off half way would be worse than none. The state stays as it was, for resume.
  if (wasInterrupted()) return;
  // Another process changed the state under us: it is working on this migration, so nothing is undone here.
  if (err instanceof StateConflictError) return;
  const phase = ctx.state.phase;
  const switched = !!ctx.state.cutover?.switchAt;
  const failure = {
    name: err instanceof Error ? err.name : 'Error',
    message: errorMessage(err),
    phase,
    hint: err instanceof PgferryError ? err.hint : undefined,
  };
  if (switched) {
    // A failure after the switch (verify, or the clean-up of forward replication after it): the
    // application is on the target with a way back. Nothing is rolled back; resume goes on from here.
    await ctx
      .update((s) => {
        s.status = 'cut-over';
        s.failure = failure;
      })
      .catch(() => {});
    return;
  }
  if (ctx.state.cutover?.switchStartedAt) {
    // The switch began (the switch file may already name the target): never rolled back; resume finishes it.
    await keepRunning(ctx, failure, `stopped while switching: ${failure.message}`);
    return;
  }
  if (err instanceof UndoFailedError) {
    // The cutover's undo failed: its breadcrumb stays, and resume (undoInterruptedCutover) undoes it
    // again. A rollback now would go through the same frozen source, and throw away the load.
    await keepRunning(ctx, failure, `stopped in ${PHASE_TITLES[phase]}, undo failed: ${failure.message}`);
    return;
  }
  // Verification before the switch found a difference: nothing was switched or frozen, replication goes
  // on; the loaded target stays for whoever investigates (resume verifies again).
  const verifiedBeforeSwitch = !switched && err instanceof VerificationFailedError;
  // A server that stayed away past the reconnect window during catch-up: nothing is wrong with what was
  // built, and a rollback could not reach it anyway. Kept, with the slot named (status shows its WAL).
  const outage = phase === 'catch-up' && (err instanceof ConnectionLostError || isConnectionLoss(err));
  // A cutover that failed before the switch undid itself (source writable, forward replication on, or
  // an UndoFailedError above): the loaded target is as good as before, so it stays, as after a drain timeout.
  const cutoverUndone = !ctx.state.cutover && (err instanceof CutoverFailedError || err instanceof FreezeFailedError);
  if (
    err instanceof LagTimeoutError ||
    err instanceof DrainTimeoutError ||
    cutoverUndone ||
    verifiedBeforeSwitch ||
    outage
  ) {
    // Replication is healthy, only not caught up (or DDL awaits the target, or the drain was too slow;
    // the cutover already unfroze the source): keep the loaded data and
    // the slot; the slot's WAL is bounded by the abort limit while pgferry runs and by
    // max_slot_wal_keep_size (which assessment asks for) while it does not.
    await keepRunning(ctx, failure, `stopped in ${PHASE_TITLES[phase]}: ${failure.message}`);
    return;
  }
  let undone = '';
  if (phase !== 'assess') {
    try {
      rt.events.log(`rolling back after the failure in ${PHASE_TITLES[phase]}`);
      undone = await rollback(ctx);
    } catch (rollbackErr) {
      undone = `ROLLBACK FAILED: ${errorMessage(rollbackErr)}; run \`pgferry rollback --id ${ctx.config.id}\``;
    }
  }
  await ctx
    .update((s) => {
      s.status = undone.startsWith('ROLLBACK FAILED') || phase === 'assess' ? 'failed' : 'rolled-back';
      s.failedAt = new Date().toISOString();
      s.failure = failure;
      s.events = [
        ...s.events,
        {
          at: s.failedAt,
          message: `failed in ${PHASE_TITLES[phase]}: ${failure.message}${undone ? ` (${undone})` : ''}`,
        },
      ];
    })
    .catch(() => {});
  if (undone) rt.events.log(undone);
}

export function rollbackMigration(rt: Runtime, id: string): Promise<MigrationState> {
  return claimed(rt, id, async () => {
    const state = await rt.store.get(id);
    if (state.status === 'cleaned-up')
      throw new InvalidInputError(
        `migration ${id} was cleaned up: pgferry's objects are gone, and what it loaded on the target is no longer marked as its own, so there is nothing it may roll back`,
        { field: '--id', migrationId: id, hint: 'drop the target database yourself if the copy is not wanted' },
      );
    return rollbackClaimed(rt, id);
  });
}

/** Sessions a dead pgferry process left behind (an orphaned pg_restore) are ended before anything runs. */
async function endOrphans(rt: Runtime, ctx: PhaseContext) {
  for (const db of [ctx.source, ctx.target]) {
    const n = await endOrphanSessions(db, ctx.config.id);
    if (n) rt.events.log(`ended ${n} session(s) on the ${db.side} left by a pgferry process that is gone`);
  }
}

async function rollbackClaimed(rt: Runtime, id: string): Promise<MigrationState> {
  const session = await openSession(rt, id);
  try {
    await endOrphans(rt, session.ctx);
    await runPhase(rt, session.ctx, 'rollback', rollback);
    await session.ctx.update((s) => {
      s.status = 'rolled-back';
    });
    return session.ctx.state;
  } finally {
    await session.close();
  }
}

/**
 * The way out when the target is gone and a rollback cannot run (it needs the target): make the source
 * writable again, without the target. Reverse replication into the source is stopped first, so that a
 * target that comes back applies nothing into a source that takes writes of its own. What the target
 * took that reverse replication had not brought over is not on the source: the caller was told.
 */
export function unfreezeMigration(rt: Runtime, id: string): Promise<MigrationState> {
  return claimed(rt, id, async () => {
    const state = await rt.store.get(id);
    const secrets = await rt.store.secrets(id);
    const n = objectNames(id);
    const source = await connect(secrets.sourceUrl, { side: 'source', applicationName: n.applicationName, max: 1 });
    try {
      const done: string[] = [];
      if (await subscriptionExists(source, n.reverseSubscription)) {
        await source.query(`ALTER SUBSCRIPTION ${ident(n.reverseSubscription)} DISABLE`);
        done.push(`reverse replication (${n.reverseSubscription}) stopped`);
      }
      if (await isFrozen(source)) {
        await unfreezeWrites(source);
        done.push('source unfrozen');
      }
      const message = `pgferry unfreeze: ${done.length ? done.join(', ') : 'the source was writable already'}, without the target; writes the target took that reverse replication had not brought over are not on the source, and its sequences were not synced from the target`;
      rt.events.log(message);
      return await rt.store.put({
        ...state,
        events: [...state.events, { at: new Date().toISOString(), message }],
        warnings: [...(state.warnings ?? []), message],
      });
    } finally {
      await source.end();
    }
  });
}

export function cleanupMigration(rt: Runtime, id: string, options: { force?: boolean } = {}): Promise<MigrationState> {
  return claimed(rt, id, () => cleanupClaimed(rt, id, options));
}

async function cleanupClaimed(rt: Runtime, id: string, options: { force?: boolean }): Promise<MigrationState> {
  // Cleaning up would drop the reverse replication an unfinished rollback needs, and leave the target frozen.
  assertNoUnfinishedRollback(await rt.store.get(id));
  const session = await openSession(rt, id);
  try {
    const s = session.ctx.state;
    const replicating = !s.cutover?.switchAt && ['running', 'awaiting-cutover'].includes(s.status);
    if (replicating && !options.force) {
      throw new PgferryError(`migration ${id} is still replicating (${s.status}); clean-up would stop it`, {
        field: '--id',
        hint: 'run `pgferry cutover` or `pgferry rollback` first, or pass --force',
      });
    }
    await runPhase(rt, session.ctx, 'cleanup', cleanup);
    // The schema dump, and with --strategy dump the data dump: copies of the data, no longer needed.
    rmSync(session.ctx.artifactDir, { recursive: true, force: true });
    await session.ctx.update((st) => {
      st.status = 'cleaned-up';
    });
    // Nothing is left to connect to for this migration: its passwords go too (kept while a re-run must finish).
    if (!session.ctx.state.leftovers?.length) await rt.store.removeSecrets?.(id);
    return session.ctx.state;
  } finally {
    await session.close();
  }
}
