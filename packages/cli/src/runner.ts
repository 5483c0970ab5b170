/**
 * The local runtime: runs the workflow's phases in order against two PostgreSQL servers, persisting
 * every step in the store so that another shell (status, rollback) or a later `resume` can take over.
 * Any failure before the switch rolls back what is safe (slot, publication, subscription, loaded
 * schema) so nothing is left behind on the source; after the switch the application stays on the target.
 */
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  workflowInput as buildWorkflowInput,
  ConnectionFailedError,
  checkPostgresUrl,
  errorMessage,
  InvalidInputError,
  type MigrationState,
  type MigrationStore,
  objectNames,
  PgferryError,
  type Phase,
  parseMigrationConfig,
  redactText,
  redactUrl,
  type WorkflowDefinitionOptions,
  type WorkflowInput,
} from '@pgferry/core';
import {
  artifactDirOf,
  type ConnectionSwitchFactory,
  catalogChecks,
  cleanup,
  cleanupSource,
  connect,
  connectionSettings,
  cutoverUndoCleanedUp,
  type Db,
  type DumpStore,
  type FaultPoints,
  ident,
  inspectApplicationName,
  inspectSide,
  isFrozen,
  type LiveCatalog,
  type LiveStatus,
  liveAttention,
  openSession as openTaskSession,
  type PhaseContext,
  type Progress,
  runPhase as runTaskPhase,
  type Session,
  type SideLive,
  subscriptionExists,
  type TaskDeps,
  targetObjects,
  unfreezeUnswitchedSource,
  unfreezeWrites,
  unreachable,
  updateSubscriptionConnection,
} from '@pgferry/postgres';
import { completeApproval, continuableExecution, executeLocally, readExecution } from './local-runtime';

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
  /** A connection switch besides the switch file and command (tests: an in-memory one; AWS: functions/lib/aws-deps.ts). */
  connectionSwitch?: ConnectionSwitchFactory;
  /** The `dump` strategy's data through a store instead of a local file (tests: S3 on s3rver). */
  dumpStore?: DumpStore;
  /**
   * "Wait for the dump upload", when `dumpStore` announces its dumps (tests: packages/aws
   * awaitDumpUpload on s3rver, its events delivered to the S3 handler): the step waits for the event.
   */
  awaitDumpUpload?: TaskDeps['awaitDumpUpload'];
  /** Tests only: what the workflow definition is built with (a small `samplesPerExecution`). */
  workflow?: WorkflowDefinitionOptions;
}

/** Connect to `url` and let go: throws the usual connection error (naming --source/--target) if it does not answer. */
async function answers(side: 'source' | 'target', url: string, id: string) {
  const db = await connect(url, { side, applicationName: objectNames(id).applicationName, max: 1 });
  await db.end();
}

/** URL parameters that name a file libpq reads on this machine. */
const URL_FILES = ['sslrootcert', 'sslcert', 'sslkey', 'sslcrl', 'passfile'] as const;

/**
 * The files a URL names (a CA bundle, a client key) are here: a missing one failed only when the
 * command connected, as a connection error (exit 3). `sslrootcert=system` is the system's CA store.
 */
export function checkUrlFiles(url: string | undefined, field: string): void {
  if (!url) return;
  let params: URLSearchParams;
  try {
    params = new URL(url).searchParams;
  } catch {
    return; // (the URL itself is checked, and named, elsewhere)
  }
  for (const key of URL_FILES) {
    const file = params.get(key);
    if (file && !(key === 'sslrootcert' && file === 'system') && !existsSync(file))
      throw new InvalidInputError(`${field} has ${key}=${file}, which is no file on this machine`, {
        field,
        hint: `give the path of the ${key === 'sslrootcert' ? "server's CA certificate" : key === 'passfile' ? 'password file' : 'file'} (absolute, or relative to where pgferry runs)`,
      });
  }
}

/** A new migration's state: config with redacted URLs; the real ones go to the secret store. */
export async function createMigration(rt: Runtime, input: unknown): Promise<MigrationState> {
  const config = parseMigrationConfig(input);
  checkUrlFiles(config.sourceUrl, '--source');
  checkUrlFiles(config.targetUrl, '--target');
  // Both servers must answer before anything is recorded: a wrong password or host leaves no
  // migration behind that could be neither resumed nor removed.
  // Both at once; the source's failure is the one told when both fail, as when they were tried in turn.
  const tried = await Promise.allSettled([
    answers('source', config.sourceUrl, config.id),
    answers('target', config.targetUrl, config.id),
  ]);
  for (const t of tried) if (t.status === 'rejected') throw t.reason;
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
    checkUrlFiles(url, field);
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
 * the command that needs it runs (advance, rollbackMigration: once the migration is claimed and the
 * command allowed, so a refused command changes nothing). Validated as `migrate` validates it. A
 * command with a password in it is kept whole with the secrets, as `migrate` keeps it; one without
 * replaces the secret one, which would otherwise still run (the session's config takes the secrets last).
 */
export async function reconfigure(rt: Runtime, id: string, changes: Reconfiguration): Promise<void> {
  const given: Record<string, unknown> = Object.fromEntries(Object.entries(changes).filter(([, v]) => v !== undefined));
  if (Object.keys(given).length === 0) return;
  const state = await rt.store.get(id);
  const config = parseMigrationConfig({ ...state.config, ...given });
  if (changes.onSwitch !== undefined) {
    const shown = redactText(changes.onSwitch);
    const { onSwitch: _replaced, ...secrets } = await rt.store.secrets(id);
    if (!rt.store.updateSecrets)
      throw new InvalidInputError('this store keeps no secrets to change', { field: '--on-switch' });
    await rt.store.updateSecrets(id, shown === changes.onSwitch ? secrets : { ...secrets, onSwitch: changes.onSwitch });
    config.onSwitch = shown;
  }
  await rt.store.put({
    ...state,
    config: { ...config, sourceUrl: state.config.sourceUrl, targetUrl: state.config.targetUrl },
    events: [
      ...state.events,
      { at: new Date().toISOString(), message: `configuration changed: ${Object.keys(given).join(', ')}` },
    ],
  });
}

/** What stopped the migration's last local execution, when its record says (a signal), for status's words. */
function stoppedBy(rt: Runtime, id: string): string | undefined {
  try {
    const e = readExecution(rt.stateDir, id);
    return e?.status === 'aborted' && e.error?.startsWith('stopped by ') ? e.error : undefined;
  } catch {
    return undefined;
  }
}

/**
 * What is live on both servers for a stored migration (`pgferry status`): each side is checked on its
 * own, with short timeouts, so an unreachable one is reported rather than fatal. Only reads.
 */
export async function inspectMigration(rt: Runtime, id: string): Promise<LiveStatus> {
  const state = await rt.store.get(id);
  const secrets = await rt.store.secrets(id);
  const dbs: Db[] = [];
  const side = async (which: 'source' | 'target', url: string): Promise<{ live: SideLive; db?: Db }> => {
    try {
      const db = await connect(url, {
        side: which,
        applicationName: inspectApplicationName(id),
        max: 1,
        statementTimeoutMs: 5000,
        lockTimeoutMs: 1000,
      });
      dbs.push(db);
      return { live: await inspectSide(db, id), db };
    } catch (err) {
      return { live: unreachable(which, errorMessage(err)) };
    }
  };
  try {
    const [source, target] = await Promise.all([side('source', secrets.sourceUrl), side('target', secrets.targetUrl)]);
    // Once the load is done and while forward replication carries the application's writes, the gate's
    // catalog checks (before that, the target's indexes and constraints may simply not be built yet).
    const forward =
      !!state.phases['start-replication']?.endedAt &&
      !state.cutover?.switchAt &&
      !state.cutover?.switchStartedAt &&
      !['rolled-back', 'completed', 'cleaned-up'].includes(state.status) &&
      target.live.subscriptions.some((s) => s.name === objectNames(id).subscription);
    let catalog: LiveCatalog | undefined;
    if (forward && source.db && target.db) {
      const validating = new Set((state.foreignKeysToValidate ?? []).map((f) => f.drift));
      const ctx = { source: source.db, target: target.db, config: state.config };
      catalog = await catalogChecks(ctx, validating).catch((err) => ({
        drift: [],
        unreplicated: [],
        beforeCutover: [],
        error: errorMessage(err),
      }));
    }
    return {
      at: new Date().toISOString(),
      source: source.live,
      target: target.live,
      ...(catalog ? { catalog } : {}),
      attention: liveAttention(state, source.live, target.live, { catalog, stoppedBy: stoppedBy(rt, id) }),
    };
  } finally {
    await Promise.all(dbs.map((db) => db.end().catch(() => {})));
  }
}

export type { Session } from '@pgferry/postgres';

/** Where this runtime keeps a migration's dumps unless its config names a directory. */
const runtimeArtifactDir = (rt: Runtime, id: string) => join(rt.stateDir, 'artifacts', id);

/** Open connections and a phase context for a stored migration. */
export function openSession(rt: Runtime, id: string): Promise<Session> {
  return openTaskSession(rt.store, id, {
    listener: rt.events,
    artifactDir: runtimeArtifactDir(rt, id),
    faults: rt.faults,
    connectionSwitch: rt.connectionSwitch,
    dumpStore: rt.dumpStore,
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

export interface AdvanceOptions {
  /** Cut over once caught up (auto), or stop at a steady catch-up (manual). */
  cutover: 'auto' | 'manual' | 'now';
  /** Given with the command (`--on-switch`, …): stored once the command is allowed to run. */
  changes?: Reconfiguration;
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

/** After `pgferry unfreeze`, each database takes writes of its own: bringing one into the other would mix them. */
function assertNotUnfrozenWithoutTarget(state: MigrationState, command: 'resume' | 'rollback' | 'cutover') {
  if (state.unfrozenWithoutTargetAt)
    throw new InvalidInputError(
      `the source of migration ${state.id} was made writable without the target by \`pgferry unfreeze\` at ${state.unfrozenWithoutTargetAt}: both databases have taken writes of their own since, and a ${command} would apply the target's into the source (and set the source's sequences from the target)`,
      {
        field: '--id',
        migrationId: state.id,
        hint: `compare the databases by hand and bring over what the application needs; \`pgferry cleanup --id ${state.id}\` removes pgferry's replication objects`,
      },
    );
}

/** A migration that is over cannot be advanced: said before anything runs, so its state stays as it is. */
function assertAdvanceable(state: MigrationState, command: 'resume' | 'cutover' = 'resume') {
  const id = state.id;
  assertNotUnfrozenWithoutTarget(state, command);
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
 * verify (auto, or `now` when the user runs `pgferry cutover`). One execution of the workflow
 * definition (local-runtime.ts); its tasks skip what is done. `pgferry cutover` on an execution
 * waiting at "Await cutover approval" completes its token and continues that execution instead.
 */
export function advance(rt: Runtime, id: string, options: AdvanceOptions): Promise<MigrationState> {
  return claimed(rt, id, async () => {
    const state = await rt.store.get(id);
    assertAdvanceable(state, options.cutover === 'now' ? 'cutover' : 'resume');
    if (options.changes) await reconfigure(rt, id, options.changes);
    if (options.cutover === 'now' && state.status === 'awaiting-cutover') {
      await completeApproval(rt, id);
      // Completed now, or by a cutover that stopped before it went on.
      const waiting = continuableExecution(rt.stateDir, id);
      if (waiting) {
        const r = await executeLocally(rt, waiting.input, 'cutover', waiting);
        if (r.error) throw r.error;
        return r.state;
      }
    }
    const input = workflowInput(id, 'migrate', options.cutover);
    const r = await executeLocally(rt, input, options.cutover === 'now' ? 'cutover' : 'migrate');
    if (r.error) throw r.error;
    return r.state;
  });
}

/** The execution input of a local command: no target to provision, no clean-up (that is `pgferry cleanup`), no bake. */
export function workflowInput(
  id: string,
  action: WorkflowInput['action'],
  cutover: AdvanceOptions['cutover'] = 'auto',
): WorkflowInput {
  return buildWorkflowInput({
    migrationId: id,
    action,
    cutover: cutover === 'manual' ? 'manual' : 'auto',
    approved: cutover === 'now',
  });
}

export function rollbackMigration(rt: Runtime, id: string, changes?: Reconfiguration): Promise<MigrationState> {
  return claimed(rt, id, async () => {
    const state = await rt.store.get(id);
    if (state.status === 'cleaned-up')
      throw new InvalidInputError(
        `migration ${id} was cleaned up: pgferry's objects are gone, and what it loaded on the target is no longer marked as its own, so there is nothing it may roll back`,
        { field: '--id', migrationId: id, hint: 'drop the target database yourself if the copy is not wanted' },
      );
    assertNotUnfrozenWithoutTarget(state, 'rollback');
    if (changes) await reconfigure(rt, id, changes);
    return rollbackClaimed(rt, id);
  });
}

async function rollbackClaimed(rt: Runtime, id: string): Promise<MigrationState> {
  // An approval still awaited is moot: nobody may complete it after the rollback.
  await rt.store.takeTaskToken?.(id, 'awaitApproval');
  const r = await executeLocally(rt, workflowInput(id, 'rollback'), 'rollback');
  if (r.error) throw r.error;
  return r.state;
}

/**
 * `pgferry cleanup --without-target`, the target unreachable: the source's side of the clean-up alone
 * (cleanupSource), and a source a cutover froze and never switched from made writable, as clean-up
 * always does. What is on the target is forgotten, named in the migration's warnings. Refused for a
 * source read-only because the application was switched to the target: `pgferry unfreeze` decides that.
 */
async function cleanupWithoutTarget(
  rt: Runtime,
  state: MigrationState,
  options: CleanupOptions,
): Promise<MigrationState> {
  const id = state.id;
  if (stillReplicating(state) && !options.force) throw stillReplicatingError(id, state);
  const c = state.cutover;
  if (c?.switchAt && !state.rollback?.switchAt && !state.unfrozenWithoutTargetAt)
    throw new InvalidInputError(
      `the application of migration ${id} was switched to the target, which cannot be reached, and the source is read-only: cleaning up without the target would leave it so`,
      {
        field: '--without-target',
        migrationId: id,
        hint: `\`pgferry unfreeze --id ${id} --yes\` makes the source writable again (its --help spells out the risk); then clean up without the target`,
      },
    );
  const secrets = await rt.store.secrets(id);
  const source = await connect(secrets.sourceUrl, {
    side: 'source',
    applicationName: objectNames(id).applicationName,
    max: 1,
  });
  try {
    // A target streaming from the slot is alive, only unreachable from here: its slot is not dropped.
    const n = objectNames(id);
    const [streaming] = await source.query<{ pid: number; client: string | null }>(
      `SELECT s.active_pid AS pid, r.client_addr::text AS client FROM pg_replication_slots s
         LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1 AND s.active_pid IS NOT NULL`,
      [n.slot],
    );
    if (streaming)
      throw new InvalidInputError(
        `the target still streams from the source's slot ${n.slot} (walsender pid ${streaming.pid}${streaming.client ? `, from ${streaming.client}` : ''}): it is not gone, only unreachable from here`,
        {
          field: '--without-target',
          migrationId: id,
          hint: `run \`pgferry cleanup --id ${id}\` from where the target answers (it removes both sides' objects); --without-target is for a target that is gone for good`,
        },
      );
    const removed = await cleanupSource(source, id, { keepReverseSlot: true });
    const unfrozen = await unfreezeUnswitchedSource(source, state);
    if (unfrozen) removed.push(unfrozen);
    const message = `pgferry cleanup without the target (unreachable): removed ${removed.length ? removed.join(', ') : 'nothing on the source (already clean)'}; not removed, on the target, if it comes back: ${targetObjects(state).join(', ')}`;
    rt.events.log(message);
    // (Where the session would have put them.)
    rmSync(artifactDirOf(state.config, runtimeArtifactDir(rt, id)), { recursive: true, force: true });
    const at = new Date().toISOString();
    const done = await rt.store.put({
      ...state,
      status: 'cleaned-up',
      leftovers: [],
      // What a failed undo of a cutover left (the freeze, the slot) is gone now, as clean-up says.
      undoFailed: cutoverUndoCleanedUp(state) ? undefined : state.undoFailed,
      events: [...state.events, { at, message }],
      warnings: [...(state.warnings ?? []), message],
    });
    await rt.store.removeSecrets?.(id);
    return done;
  } finally {
    await source.end();
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
      const reverse = await subscriptionExists(source, n.reverseSubscription);
      // Nothing frozen and nothing switched: there is no way back to take, and marking the migration
      // unfrozen would end it for good (no cutover after it). Refused, changing nothing.
      if (!reverse && !state.cutover?.switchStartedAt && !(await isFrozen(source)))
        throw new InvalidInputError(
          `the source of migration ${id} is not frozen and its application was never switched: there is nothing to unfreeze`,
          {
            field: '--id',
            migrationId: id,
            hint: `the source takes writes as it is; \`pgferry status --id ${id}\` says what comes next (\`pgferry rollback --id ${id}\` or \`pgferry cleanup --id ${id}\` end the migration)`,
          },
        );
      const done: string[] = [];
      if (reverse) {
        await source.query(`ALTER SUBSCRIPTION ${ident(n.reverseSubscription)} DISABLE`);
        done.push(`reverse replication (${n.reverseSubscription}) stopped`);
      }
      if (await isFrozen(source)) {
        await unfreezeWrites(source);
        done.push('source unfrozen');
      }
      const message = `pgferry unfreeze: ${done.length ? done.join(', ') : 'the source was writable already'}, without the target; writes the target took that reverse replication had not brought over are not on the source, and its sequences were not synced from the target`;
      rt.events.log(message);
      const at = new Date().toISOString();
      return await rt.store.put({
        ...state,
        unfrozenWithoutTargetAt: state.unfrozenWithoutTargetAt ?? at,
        events: [...state.events, { at, message }],
        warnings: [...(state.warnings ?? []), message],
      });
    } finally {
      await source.end();
    }
  });
}

export interface CleanupOptions {
  /** Clean up a migration that still replicates (stops it). */
  force?: boolean;
  /**
   * The target is gone for good: when it cannot be reached, clean up the source alone (its slot retains
   * WAL for nobody) and forget what is on the target. A target that answers is cleaned up as always.
   */
  withoutTarget?: boolean;
}

export function cleanupMigration(rt: Runtime, id: string, options: CleanupOptions = {}): Promise<MigrationState> {
  return claimed(rt, id, () => cleanupClaimed(rt, id, options));
}

function stillReplicating(s: MigrationState): boolean {
  return !s.cutover?.switchAt && ['running', 'awaiting-cutover'].includes(s.status);
}

function stillReplicatingError(id: string, s: MigrationState): PgferryError {
  return new PgferryError(`migration ${id} is still replicating (${s.status}); clean-up would stop it`, {
    field: '--id',
    hint: 'run `pgferry cutover` or `pgferry rollback` first, or pass --force',
  });
}

/**
 * Connection failures that say the target is not there (not that it refused us: a password, pg_hba,
 * TLS): nothing answered, or its server answered that the database is gone or takes no connections.
 */
const NOT_THERE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ETIMEDOUT',
  // The database does not exist, or takes no connections (ALLOW_CONNECTIONS false).
  '3D000',
  '55000',
]);

function targetNotThere(err: ConnectionFailedError): boolean {
  const cause = err.cause as { code?: string; message?: string } | undefined;
  return NOT_THERE_CODES.has(cause?.code ?? '') || /timeout|terminated unexpectedly/i.test(cause?.message ?? '');
}

async function cleanupClaimed(rt: Runtime, id: string, options: CleanupOptions): Promise<MigrationState> {
  // Cleaning up would drop the reverse replication an unfinished rollback needs, and leave the target frozen.
  const before = await rt.store.get(id);
  // Done already: said so (its passwords are gone, so it could not connect anyway); one done without
  // the target says again what it could not remove there.
  // (One that left something behind, `leftovers`, is run again: it kept its passwords for that.)
  if (before.status === 'cleaned-up' && !before.leftovers?.length) {
    const left = before.events.findLast((e) => e.message.startsWith('pgferry cleanup without the target'));
    rt.events.log(
      `migration ${id} was cleaned up already${left ? `, without the target: ${left.message.slice(left.message.indexOf('not removed, on the target'))}` : ''}`,
    );
    return before;
  }
  // After `pgferry unfreeze` nothing may finish a half-done switch (both databases take writes of
  // their own): clean-up is the only way out, and must not be refused for it.
  const unfrozen = !!before.unfrozenWithoutTargetAt;
  if (!unfrozen) assertNoUnfinishedRollback(before);
  // A cutover whose switch began may have moved the application to the target: only finishing it is safe.
  if (!unfrozen && before.cutover?.switchStartedAt && !before.cutover.switchAt)
    throw new InvalidInputError(
      `the cutover of migration ${id} began to switch the application at ${before.cutover.switchStartedAt} and did not finish`,
      {
        field: '--id',
        migrationId: id,
        hint: `run \`pgferry resume --id ${id}\` to finish the switch first (the source is read-only until then); clean up after it`,
      },
    );
  // Blocked at its assessment: nothing was created on either server, and its passwords are gone.
  if (before.status === 'failed' && before.failure?.phase === 'assess' && !before.phases['prepare-schema']) {
    await rt.store.removeSecrets?.(id);
    return rt.store.put({ ...before, status: 'cleaned-up' });
  }
  let session: Session;
  try {
    session = await openSession(rt, id);
  } catch (err) {
    if (!(err instanceof ConnectionFailedError) || err.field !== '--target') throw err;
    // A target that answered and refused (a password, pg_hba, TLS) is there: cleaned up as always.
    const notThere = targetNotThere(err);
    if (notThere && options.withoutTarget) return cleanupWithoutTarget(rt, before, options);
    if (!notThere && !options.withoutTarget) throw err;
    throw new ConnectionFailedError(notThere ? err.message : `${err.message}: the target answered, so it is not gone`, {
      cause: err,
      field: '--target',
      migrationId: id,
      hint: `${err.hint ?? 'check --target'}; ${
        notThere
          ? `if the target is gone for good, \`pgferry cleanup --id ${id} --without-target\` removes what pgferry left on the source (its replication slot retains the source's WAL) and forgets what it left on the target`
          : 'a target that answers is cleaned up as always (--without-target is for one that is not there)'
      }`,
    });
  }
  try {
    const s = session.ctx.state;
    if (stillReplicating(s) && !options.force) throw stillReplicatingError(id, s);
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
