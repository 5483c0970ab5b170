/**
 * What every workflow task does around its phase: open the migration's connections from the store's
 * secrets, and record each phase's start, end and summary in the state (the bookkeeping `status`,
 * `resume` and the done-checks read).
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  beginAttempt,
  endAttempt,
  errorMessage,
  FINISHED_STATUSES,
  failAttempt,
  type MigrationConfig,
  type MigrationState,
  type MigrationStore,
  objectNames,
  PHASE_TITLES,
  type Phase,
  StateConflictError,
  samplesAfter,
} from '@pgferry/core';
import { connect, type Db } from '../db';
import type { ConnectionSwitchFactory, DumpStore, FaultPoints, PhaseContext, Progress } from '../phases/context';

/** Who hears about phases as they start and end (the CLI's output). */
export interface PhaseListener {
  log(message: string): void;
  phase?(phase: Phase, event: 'start' | 'end' | 'skip', summary?: string): void;
  progress?(p: Progress): void;
  /** Awaited as a phase starts and ends (the workflow's tasks publish `Migration Phase Changed`). */
  changed?(phase: Phase, event: 'start' | 'end', summary?: string): Promise<void>;
}

export interface Session {
  ctx: PhaseContext;
  close(): Promise<void>;
}

export interface SessionOptions {
  listener: PhaseListener;
  /** Where schema dumps go unless the config names a directory (default: under the system's temp directory). */
  artifactDir?: string;
  faults?: FaultPoints;
  connectionSwitch?: ConnectionSwitchFactory;
  dumpStore?: DumpStore;
}

/** Where a migration's dumps go: its config's directory, else the caller's, else one under the system's temp. */
export function artifactDirOf(config: Pick<MigrationConfig, 'id' | 'artifactDir'>, fallback?: string): string {
  return config.artifactDir ?? fallback ?? join(tmpdir(), 'pgferry', 'artifacts', config.id);
}

/** Open connections and a phase context for a stored migration; credentials come from the store's secrets only. */
export async function openSession(store: MigrationStore, id: string, options: SessionOptions): Promise<Session> {
  let state = await store.get(id);
  const secrets = await store.secrets(id);
  const config: MigrationConfig = { ...state.config, ...secrets };
  const app = objectNames(id).applicationName;
  let source: Db | undefined;
  let target: Db | undefined;
  try {
    source = await connect(config.sourceUrl, { side: 'source', applicationName: app, max: Math.max(4, config.jobs) });
    target = await connect(config.targetUrl, { side: 'target', applicationName: app, max: Math.max(4, config.jobs) });
  } catch (err) {
    await source?.end();
    throw err;
  }
  const ctx: PhaseContext = {
    config,
    source,
    target,
    get state() {
      return state;
    },
    async update(change) {
      // Re-read, apply, write with the version read: concurrent writers get a StateConflictError.
      const fresh = await store.get(id);
      // Ended meanwhile by another actor (a rollback Slack started while this task of the stopped
      // execution ran on): this one changes nothing more, its failure recorded nowhere (a conflict).
      if (FINISHED_STATUSES.includes(fresh.status) && !FINISHED_STATUSES.includes(state.status))
        throw new StateConflictError(
          `migration ${id} was ${fresh.status} by another process while this one worked on it: it changes nothing more`,
          { migrationId: id, hint: `\`pgferry status --id ${id}\` shows where it stands` },
        );
      const lastSample = fresh.lag?.at(-1)?.at;
      change(fresh);
      state = await store.put(fresh);
      // The state keeps the last lag samples; whatever a change added to them also goes to the whole
      // series the store keeps beside the state (the report's chart). Losing one there fails nothing.
      const added = samplesAfter(lastSample, state.lag);
      if (added.length)
        await store.appendLag?.(id, added).catch((err) => {
          options.listener.log(`warning: lag sample not added to the series: ${errorMessage(err)}`);
        });
    },
    log: (m) => options.listener.log(m),
    progress: options.listener.progress,
    artifactDir: artifactDirOf(config, options.artifactDir),
    faults: options.faults,
    connectionSwitch: options.connectionSwitch?.(config),
    dumpStore: options.dumpStore,
  };
  return {
    ctx,
    close: async () => {
      await Promise.allSettled([source.end(), target.end()]);
    },
  };
}

/** Append to the migration's event history (bounded). */
export async function recordEvent(ctx: PhaseContext, message: string) {
  await ctx.update((s) => {
    s.events = [...s.events.slice(-199), { at: new Date().toISOString(), message }];
  });
}

export async function phaseStarted(ctx: PhaseContext, phase: Phase, listener: PhaseListener) {
  listener.phase?.(phase, 'start');
  await ctx.update((s) => {
    s.phase = phase;
    const p = s.phases[phase] ?? {};
    const at = new Date().toISOString();
    s.phases[phase] = { ...p, startedAt: at, endedAt: undefined, attempts: (p.attempts ?? 0) + 1 };
    beginAttempt(s, phase, at);
  });
}

export async function phaseEnded(ctx: PhaseContext, phase: Phase, summary: string, listener: PhaseListener) {
  await ctx.update((s) => {
    const at = new Date().toISOString();
    s.phases[phase] = { ...s.phases[phase], endedAt: at, summary };
    endAttempt(s, phase, at, summary);
  });
  await recordEvent(ctx, `${PHASE_TITLES[phase]}: ${summary}`);
  listener.phase?.(phase, 'end', summary);
  await listener.changed?.(phase, 'end', summary);
}

/** Run one phase with start/end bookkeeping. */
export async function runPhase(
  ctx: PhaseContext,
  phase: Phase,
  fn: (ctx: PhaseContext) => Promise<string>,
  listener: PhaseListener,
): Promise<string> {
  await phaseStarted(ctx, phase, listener);
  let summary: string;
  try {
    summary = await fn(ctx);
  } catch (err) {
    await phaseFailed(ctx, phase, err);
    throw err;
  }
  await phaseEnded(ctx, phase, summary, listener);
  return summary;
}

/**
 * The phase's attempt failed (the phase's record is left as it was: not done). Best effort: the error
 * goes on to the workflow's failure handling whatever happens here.
 */
export async function phaseFailed(ctx: PhaseContext, phase: Phase, err: unknown): Promise<void> {
  const name = err instanceof Error ? err.name : 'Error';
  await ctx
    .update((s) => failAttempt(s, phase, new Date().toISOString(), `${name}: ${errorMessage(err)}`))
    .catch(() => {});
}

/** A phase's done-check: it ended (and was not started again since). */
export function phaseDone(state: MigrationState, phase: Phase): boolean {
  return !!state.phases[phase]?.endedAt;
}
