/**
 * The workflow's tasks: what every Lambda handler, the Fargate worker and the local runtime call, one
 * state of the state machine per call. A task opens the migration's connections from the store's
 * secrets (only the migration id travels in the execution), checks whether its phase is done already
 * (a re-run converges), runs it with the usual bookkeeping, and returns a short summary with figures.
 */
import {
  AfterLoadFailedError,
  APPROVAL_DEADLINE_SECONDS,
  ApprovalTimeoutError,
  type ApprovalWaitInput,
  approvalDeadline,
  completeOutput,
  DEFAULTS,
  type DmsReplication,
  DrainTimeoutError,
  type EventPublisher,
  endAttempt,
  errorMessage,
  executionOrigin,
  type FailureFacts,
  FINISHED_STATUSES,
  failAttempt,
  failureAction,
  type GateState,
  InvalidInputError,
  type LagFigures,
  type MigrationState,
  type MigrationStore,
  mib,
  PgferryError,
  type PgferryEvent,
  PHASE_TITLES,
  type Phase,
  redactText,
  StateConflictError,
  statusAfter,
  type TaskCallbacks,
  type TaskInput,
  type TaskName,
  type TaskOutput,
  updateMigration,
  WalRetentionExceededError,
  WORKFLOW_TASKS,
} from '@pgferry/core';
import { listTables } from '../catalog';
import { wasInterrupted } from '../critical';
import { isConnectionLoss } from '../db';
import { endOrphanSessions } from '../inspect';
import { assertNoBlockers, assess } from '../phases/assess';
import { bulkLoad } from '../phases/bulk-load';
import {
  beforeCutoverText,
  finishLoad,
  type GateLoop,
  type GateMemory,
  gateStep,
  newGateLoop,
  recordAfterLoad,
  sampleGate,
  stopFinishingLoad,
  verifyBeforeSwitchRound,
} from '../phases/catch-up';
import { cleanup } from '../phases/cleanup';
import type { ConnectionSwitchFactory, DumpStore, FaultPoints, PhaseContext } from '../phases/context';
import { copyShare, readCopyPlan } from '../phases/copy-share';
import { cutover, undoInterruptedCutover } from '../phases/cutover';
import {
  dmsAssessmentFindings,
  dmsCleanup,
  dmsGateSample,
  dmsRef,
  dmsStart,
  dmsStartReplication,
  requireDms,
} from '../phases/dms';
import { dmsCutover } from '../phases/dms-cutover';
import { prepareSchema } from '../phases/prepare-schema';
import { rollback } from '../phases/rollback';
import { startReplication } from '../phases/start-replication';
import { verify } from '../phases/verify';
import {
  openSession,
  type PhaseListener,
  phaseDone,
  phaseEnded,
  phaseFailed,
  phaseStarted,
  runPhase,
  type Session,
} from './session';

export * from './session';

export interface TaskDeps {
  store: MigrationStore;
  log(message: string): void;
  /** Phases starting and ending (the CLI prints them). */
  phase?: PhaseListener['phase'];
  progress?: PhaseListener['progress'];
  events?: EventPublisher;
  /**
   * Completes the task token of a worker task (and sends its heartbeats while it runs). Without it the
   * caller completes the token (the local runtime: the returned output is the state's result).
   */
  callbacks?: TaskCallbacks;
  /** Tests only: see FaultPoints. */
  faults?: FaultPoints;
  /** The worker: aborted when its execution is gone (a heartbeat refused); a long task stops its work then. */
  signal?: AbortSignal;
  /** The AWS connection switch a migration's config names (functions/lib/aws-deps.ts); none locally. */
  connectionSwitch?: ConnectionSwitchFactory;
  /** In AWS: the `dump` strategy streams its data through S3 (packages/aws s3DumpStore), not a local file. */
  dumpStore?: DumpStore;
  /** Where schema dumps go. */
  artifactDir?: string;
  /**
   * The session a task runs in. The local runtime keeps one open for a whole execution (the gate's
   * foreign-key validation goes on between samples, and no sample pays for new connections); by
   * default each task opens its own and closes it.
   */
  session?(migrationId: string): Promise<Session>;
  /** The error that a failure task handles, as thrown (the local runtime has it; in AWS only Error/Cause travel). */
  thrown?(error: { Error: string; Cause: string }): unknown;
  /** "Provision target": the RDS provisioner (packages/aws) stores the token and completes it on an RDS event. */
  provisionTarget?(input: TaskInput): Promise<TaskOutput>;
  /**
   * "Wait for the dump upload": stores the token for the S3 event of the dump (packages/aws
   * awaitDumpUpload), completing it at once when the object is already there.
   */
  awaitDumpUpload?(input: TaskInput): Promise<TaskOutput>;
  /** Strategy dms: the AWS DMS side (packages/aws's AwsDmsReplication). Without it a dms migration is refused. */
  dms?: DmsReplication;
}

/** How often a worker task tells Step Functions it is alive (HeartbeatSeconds is 300 in the definition). */
export const HEARTBEAT_MS = 60_000;

/**
 * Run one task of the workflow for `input.migrationId`. Throws the task's typed error (its `name` is
 * what the state machine's Retry and Catch match). A worker task given `deps.callbacks` and a token
 * also completes the token (success with the output, failure with the error's name and message).
 */
export async function runWorkflowTask(task: TaskName, input: TaskInput, deps: TaskDeps): Promise<TaskOutput> {
  if (!(task in WORKFLOW_TASKS))
    throw new InvalidInputError(`unknown workflow task "${String(task)}"`, { field: 'task' });
  if (typeof input?.migrationId !== 'string' || !input.migrationId)
    throw new InvalidInputError('the task input has no migrationId', { field: 'migrationId' });
  const token = WORKFLOW_TASKS[task].runtime === 'worker' && deps.callbacks ? input.taskToken : undefined;
  const heartbeat = token
    ? setInterval(() => void deps.callbacks?.heartbeat(token).catch(() => {}), HEARTBEAT_MS)
    : undefined;
  try {
    const output = completeOutput(task, await TASKS[task](input, deps));
    if (token) await deps.callbacks?.succeed(token, output);
    return output;
  } catch (err) {
    // Where the thrown error does not reach the failure's handler (AWS: only name and message travel),
    // its hint is kept with the migration for "Record failure" to show.
    if (!deps.thrown && err instanceof PgferryError && err.hint && task !== 'recordFailure' && task !== 'rollback')
      await keepErrorHint(deps.store, input.migrationId, err);
    if (token)
      await deps.callbacks
        ?.fail(token, err instanceof Error ? err.name : 'Error', errorMessage(err))
        .catch(() => false);
    throw err;
  } finally {
    if (heartbeat) clearInterval(heartbeat);
  }
}

/**
 * Records `err`'s hint as the migration's `lastError` (best effort: the error itself is what matters).
 * Not for a version conflict: another process acts on the migration, and this one must leave it be.
 */
export async function keepErrorHint(store: MigrationStore, id: string, err: PgferryError) {
  if (!err.hint || err instanceof StateConflictError) return;
  const hint = err.hint;
  await updateMigration(
    store,
    id,
    (s) => {
      // A migration another actor ended (a rollback of a stopped execution) is left as it is.
      if (FINISHED_STATUSES.includes(s.status)) return false;
      s.lastError = { name: err.name, message: errorMessage(err), hint, at: new Date().toISOString() };
      return true;
    },
    { ifGone: 'skip' },
  ).catch(() => {});
}

type Task = (input: TaskInput, deps: TaskDeps) => Promise<TaskOutput>;

/** Run `fn` in the migration's session (the runtime's, or one of its own). */
async function inSession<T>(input: TaskInput, deps: TaskDeps, fn: (ctx: PhaseContext) => Promise<T>): Promise<T> {
  if (deps.session) return fn((await deps.session(input.migrationId)).ctx);
  const session = await openSession(deps.store, input.migrationId, {
    listener: listener(deps),
    artifactDir: deps.artifactDir,
    faults: deps.faults,
    connectionSwitch: deps.connectionSwitch,
    dumpStore: deps.dumpStore,
  });
  try {
    return await fn(session.ctx);
  } finally {
    await session.close();
  }
}

function listener(deps: TaskDeps, migrationId?: string): PhaseListener {
  const l: PhaseListener = { log: deps.log, phase: deps.phase, progress: deps.progress };
  if (deps.events && migrationId)
    l.changed = (phase, event, summary) =>
      publish(deps, [
        { type: 'Migration Phase Changed', detail: { migrationId, phase, event, summary: summary ?? null } },
      ]);
  return l;
}

/** Events are news, not the migration: one that cannot be published is logged, never a failed task. */
async function publish(deps: TaskDeps, events: PgferryEvent[]) {
  try {
    await deps.events?.publish(events);
  } catch (err) {
    deps.log(`warning: ${events.map((e) => e.type).join(', ')} not published: ${errorMessage(err)}`);
  }
}

/** A native gate sample's figures as "Replication Lag Sampled" (the slot's retained WAL as the sample recorded it). */
function publishLagSample(ctx: PhaseContext, deps: TaskDeps, figures: LagFigures, gateOpen: boolean) {
  return publish(deps, [
    {
      type: 'Replication Lag Sampled',
      detail: {
        migrationId: ctx.config.id,
        lagBytes: figures.bytes,
        lagMs: figures.ms,
        walRetainedBytes: ctx.state.walRetainedBytes ?? null,
        gateOpen,
      },
    },
  ]);
}

/** A phase task: skipped when its done-check says so, else run with its bookkeeping. */
function phaseTask(
  phase: Phase,
  fn: (ctx: PhaseContext) => Promise<string>,
  extra?: (ctx: PhaseContext) => object,
): Task {
  return (input, deps) =>
    inSession(input, deps, async (ctx) => {
      if (phaseDone(ctx.state, phase)) {
        deps.phase?.(phase, 'skip', 'already done');
        return { summary: `already done: ${ctx.state.phases[phase]?.summary ?? ''}`, skipped: true, ...extra?.(ctx) };
      }
      const summary = await runPhase(ctx, phase, fn, listener(deps, ctx.config.id));
      return { summary, ...extra?.(ctx) };
    });
}

export async function assessPhase(ctx: PhaseContext): Promise<string> {
  const report = await assess(ctx.source, ctx.target, {
    migrationId: ctx.config.id,
    preparedOrphanMs: ctx.config.preparedOrphanMs,
  });
  // What DMS would not carry (per its PostgreSQL-source documentation) counts like any finding.
  if (ctx.config.strategy === 'dms')
    report.findings.push(...dmsAssessmentFindings(await listTables(ctx.source, { sizes: false })));
  assertNoBlockers(report, ctx.config.id);
  const warnings = report.findings.filter((f) => f.level === 'warning');
  if (warnings.length) {
    for (const w of warnings) ctx.log(`warning: ${w.message}`);
    await ctx.update((s) => {
      s.warnings = [...(s.warnings ?? []), ...warnings.map((w) => w.message)];
    });
  }
  await ctx.update((s) => {
    s.sourceVersion = report.source.version;
    s.targetVersion = report.target?.version;
  });
  return `PostgreSQL ${report.source.version} → ${report.target?.version ?? '?'}; ${report.source.tables.length} tables, ${(report.source.sizeBytes / 1024 / 1024).toFixed(1)} MiB; ${warnings.length} warning(s), no blockers`;
}

/**
 * Where a stored migration stands when an execution starts: `cutover` when the switch began and must
 * be finished (never gone back from), `verify` once the switch is done, `start` otherwise.
 */
function resumeAt(ctx: PhaseContext): 'start' | 'cutover' | 'verify' {
  const c = ctx.state.cutover;
  if (c?.switchStartedAt && !c.switchAt) return 'cutover';
  if (c?.switchAt) return phaseDone(ctx.state, 'cutover') ? 'verify' : 'cutover';
  return 'start';
}

/**
 * "Assess source": on a new migration, the assessment. On a stored one (a later execution: resume,
 * cutover), what makes it safe to go on first: sessions a dead process left are ended, and a cutover
 * killed inside its write gap is undone (the source is never left frozen).
 */
const assessTask: Task = (input, deps) =>
  inSession(input, deps, async (ctx) => {
    const execution = executionOf(input);
    // Continued by the one before it ("Continue in a new execution"), not resumed (`pgferry start --id`
    // after a stop starts `<id>-resumed-<n>`, which ends what a dead process left as any first one does).
    const origin = execution && execution.number > 0 ? executionOrigin(execution.name) : 'first';
    const continued = !!execution && origin === 'continued';
    if (continued) {
      // Started by the execution before it (its last act): it goes on only from a catch-up still
      // running in that one. A migration aborted or rolled back meanwhile (Slack stopped the
      // predecessor while its start of this one was in flight) is left as it is: nothing recorded.
      const s = await deps.store.get(ctx.config.id); // (what the store says now, not the session's copy)
      const successor = s.execution?.name === execution.name || (s.execution?.number ?? 0) === execution.number - 1;
      if (!['running', 'awaiting-cutover'].includes(s.status) || !successor)
        throw new StateConflictError(
          `execution ${execution.name} would continue a catch-up that is no longer running (status ${s.status}, current execution ${s.execution?.name ?? 'none'}): it stops without touching the migration`,
          { migrationId: ctx.config.id, phase: 'assess' },
        );
    }
    // A continued execution follows one that ended on purpose: its sessions are no orphans (the
    // catch-up's foreign-key validation runs in one, in this very process when local).
    else
      for (const db of [ctx.source, ctx.target]) {
        const n = await endOrphanSessions(db, ctx.config.id);
        if (n) deps.log(`ended ${n} session(s) on the ${db.side} left by a pgferry process that is gone`);
      }
    await ctx.update((s) => {
      s.status = s.status === 'cut-over' ? 'cut-over' : 'running';
      s.failure = undefined;
      if (execution) {
        if (execution.number > 0 && s.execution?.name !== execution.name)
          s.events = [
            ...s.events,
            {
              at: execution.since,
              message:
                origin === 'resumed'
                  ? `resumed in execution ${execution.number} (${execution.name}): the migration goes on from where ${s.execution?.name ?? 'the last execution'} stopped`
                  : `continued in execution ${execution.number} (${execution.name}): the catch-up goes on where ${s.execution?.name ?? 'the last execution'} left it`,
            },
          ];
        s.execution = execution;
      }
    });
    const undone = await undoInterruptedCutover(ctx);
    if (phaseDone(ctx.state, 'assess')) {
      deps.phase?.('assess', 'skip', 'already done');
      return {
        summary: `already done${undone ? '; an interrupted cutover was undone' : ''}`,
        skipped: true,
        resumeAt: resumeAt(ctx),
        strategy: ctx.config.strategy,
      };
    }
    const summary = await runPhase(ctx, 'assess', assessPhase, listener(deps, ctx.config.id));
    return { summary, resumeAt: resumeAt(ctx), strategy: ctx.config.strategy };
  });

/** The execution "Assess source" runs in (its Payload's `execution` and `executionNumber`), if it was given. */
function executionOf(input: TaskInput): MigrationState['execution'] {
  if (typeof input.execution !== 'string' || !input.execution) return undefined;
  const n = Number(input.executionNumber ?? 0);
  return { name: input.execution, number: Number.isInteger(n) && n > 0 ? n : 0, since: new Date().toISOString() };
}

/** One more sample of this execution (see workflow/history.ts): the count the definition compares. */
function samplesAfter(input: TaskInput): number {
  const n = Number((input.gate as GateState | undefined)?.samples ?? 0);
  return (Number.isFinite(n) && n > 0 ? n : 0) + 1;
}

/** What the gate's memory keeps between samples in the execution state: enough, and small. */
const GATE_POINTS_KEPT = 64;

function gateState(loop: GateLoop, ready: boolean, waitMs: number, lagSamples: number): GateState {
  const m = loop.memory;
  return {
    ready,
    streak: loop.streak,
    // Step Functions waits whole seconds; a 100 ms idle interval rounds to 1 s there.
    waitSeconds: ready ? 0 : Math.max(1, Math.ceil(waitMs / 1000)),
    memory: {
      ...loop,
      // The interval the gate itself asks for (ms); a runtime that can wait less than a second uses it.
      nextWaitMs: ready ? 0 : waitMs,
      memory: {
        ...m,
        points: m.points?.slice(-GATE_POINTS_KEPT),
        figures: m.figures?.slice(-(lagSamples + 1)),
      },
    },
  };
}

/**
 * "Check lag": ONE gate sample. The streak and what the gate compares across samples come in
 * `input.gate` and go back out in the result; the first sample of a catch-up starts its bookkeeping,
 * the one that opens the gate ends it.
 */
const checkLagTask: Task = (input, deps) =>
  inSession(input, deps, async (ctx) => {
    if (ctx.config.strategy === 'dms') return dmsCheckLag(ctx, input, deps);
    const given = (input.gate as GateState | undefined)?.memory as GateLoop | undefined;
    const verify = input.verify as { done?: boolean } | undefined;
    const loop = given ?? newGateLoop();
    // Before the verify that precedes a cutover, foreign keys still being validated do not hold the gate.
    const validation = verify?.done === false ? 'background' : 'wait';
    // A manual migration not approved yet stops once caught up ("Await cutover approval"): what only the
    // cutover needs put right is named then, and holds the gate after the approval.
    const beforeCutover = input.cutover === 'manual' && input.approved === false ? 'note' : 'hold';
    if (!given) await phaseStarted(ctx, 'catch-up', listener(deps, ctx.config.id));
    // Without a session kept between samples (a Lambda invocation, which ends in minutes and may be
    // frozen between two), the work after the load is not started here: it is handed to the worker
    // ("Finish the load on the target"), and the catch-up begins again once it is done.
    if (!deps.session) {
      const left = afterLoadRecorded(ctx);
      if (left.tables + left.foreignKeys > 0) {
        // Sampled all the same: the WAL the slot retains (dropped past the abort limit), the slot and
        // the subscription, recorded and published, before the worker takes over.
        await watchSample(ctx, loop.memory, deps);
        const summary = `the load left ${left.tables} table(s) to analyze and ${left.foreignKeys} foreign key(s) to validate on the target: handed to the worker; replication goes on meanwhile`;
        // This catch-up attempt ends here, handed over (the phase itself is not done: the next one
        // begins once the worker is); left open, the next would show it as interrupted.
        await ctx.update((s) => endAttempt(s, 'catch-up', new Date().toISOString(), summary));
        return {
          summary,
          ...gateState(loop, false, 0, ctx.config.lagSamples),
          finishLoad: true,
          samples: samplesAfter(input),
        };
      }
    } else finishLoad(ctx);
    try {
      const step = await gateStep(ctx, loop, { validation, beforeCutover });
      // (A manual migration's stop on what only the cutover needs is no gate a cutover could go through.)
      if (step.figures) await publishLagSample(ctx, deps, step.figures, step.ready && !step.noted?.length);
      if (step.ready) await phaseEnded(ctx, 'catch-up', step.summary, listener(deps, ctx.config.id));
      return {
        summary: step.summary,
        ...gateState(loop, step.ready, step.waitMs, ctx.config.lagSamples),
        samples: samplesAfter(input),
      };
    } catch (err) {
      await stopFinishingLoad(ctx);
      await phaseFailed(ctx, 'catch-up', err);
      throw err;
    }
  });

/** "Check lag" on the DMS path: one reading of the task's CDC latency; the streak travels in $.gate. */
async function dmsCheckLag(ctx: PhaseContext, input: TaskInput, deps: TaskDeps): Promise<TaskOutput> {
  const dms = requireDms(deps.dms, ctx.config.id);
  const gate = input.gate as GateState | undefined;
  const given = gate?.memory as { dmsStreak?: number; startedAt?: number } | undefined;
  // When this catch-up began: catchUpTimeoutMs counts from here, as on the native path.
  const startedAt = given?.startedAt ?? Date.now();
  if (!given) await phaseStarted(ctx, 'catch-up', listener(deps, ctx.config.id));
  // A cutover killed after it stopped the task and before the switch (its undo never ran): a stopped
  // task reports no latency, so catch-up would wait for ever. Change capture goes on first.
  if (ctx.state.dms?.stoppedAt && !ctx.state.cutover?.switchStartedAt && !ctx.state.cutover?.switchAt) {
    await dms.resume(dmsRef(ctx));
    await ctx.update((s) => {
      s.dms = { ...s.dms!, stoppedAt: undefined, resumedAt: new Date().toISOString() };
    });
    deps.log('the DMS task was left stopped by an interrupted cutover: change capture resumed');
  }
  const step = await dmsGateSample(ctx, dms, given?.dmsStreak ?? 0, startedAt);
  await publish(deps, [
    {
      type: 'Replication Lag Sampled',
      detail: { migrationId: ctx.config.id, lagBytes: null, lagMs: step.lagMs, gateOpen: step.ready },
    },
  ]);
  if (step.ready) await phaseEnded(ctx, 'catch-up', step.summary, listener(deps, ctx.config.id));
  return {
    summary: step.summary,
    ready: step.ready,
    streak: step.streak,
    waitSeconds: step.waitSeconds,
    memory: { dmsStreak: step.streak, startedAt },
    samples: samplesAfter(input),
  };
}

/** What the state says the load left to do on the target (statistics, foreign keys added NOT VALID). */
function afterLoadRecorded(ctx: PhaseContext) {
  return {
    tables: ctx.state.tablesToAnalyze?.length ?? 0,
    foreignKeys: ctx.state.foreignKeysToValidate?.length ?? 0,
  };
}

/**
 * One gate sample while the work after the load runs, outside the gate's loop: the WAL the slot retains
 * (past the abort limit the slot is dropped: WalRetentionExceededError), the slot and the subscription,
 * what is left of the work (recorded in the state as it ends), published as "Check lag" publishes
 * its samples. A server away for a moment is no reason to stop the work.
 */
async function watchSample(ctx: PhaseContext, memory: GateMemory, deps: TaskDeps) {
  try {
    const sample = await sampleGate(ctx, memory, { catalog: false });
    await publishLagSample(ctx, deps, sample.figures, false);
    return sample;
  } catch (err) {
    if (!isConnectionLoss(err)) throw err;
    deps.log(`warning: a lag sample failed (${errorMessage(err)}); the work after the load goes on`);
    return undefined;
  }
}

/** How often, at least, "Finish the load on the target" samples the gate while its work runs (as "Check lag": whole seconds). */
export const FINISH_LOAD_SAMPLE_MS = 1_000;

/**
 * "Finish the load on the target" (the worker): the statistics and the foreign keys the load left,
 * run to the end on one session of its own while replication goes on (ANALYZE and VALIDATE take
 * SHARE UPDATE EXCLUSIVE: the apply worker's writes go on). Meanwhile the gate is sampled every
 * FINISH_LOAD_SAMPLE_MS (watchSample: the source's disk guarded, what is done recorded, so a worker
 * that dies leaves only the rest); waiting for another session's lock is named with its holders, and
 * past `catchUpTimeoutMs` stops the migration resumable. A statement that fails does too
 * (AfterLoadFailedError), the work left recorded. A stopped execution (`deps.signal`) stops the work.
 */
const finishLoadTask: Task = (input, deps) =>
  inSession(input, deps, async (ctx) => {
    const before = afterLoadRecorded(ctx);
    if (before.tables + before.foreignKeys === 0) return { summary: 'nothing left to do after the load' };
    const started = Date.now();
    const v = finishLoad(ctx);
    let ended = false;
    // Wakes the wait between two samples: the work ended, or the execution is gone. One listener each,
    // for the whole run (the loop may go on for days at a sample a second).
    let wake = () => {};
    void v.done.finally(() => {
      ended = true;
      wake();
    });
    deps.signal?.addEventListener('abort', () => wake(), { once: true });
    const memory: GateMemory = { wal: false };
    let blockedSince: number | undefined;
    let said: string | undefined;
    try {
      while (!ended) {
        if (deps.signal?.aborted)
          throw new AfterLoadFailedError('the work after the load was stopped: its execution ended', {
            phase: 'catch-up',
          });
        const sample = await watchSample(ctx, memory, deps);
        const held = sample?.blocked ? sample.waiting.at(-1) : undefined;
        if (held) {
          blockedSince ??= Date.now();
          if (held !== said) ctx.log(held);
          said = held;
          const waited = Date.now() - blockedSince;
          if (ctx.config.catchUpTimeoutMs > 0 && waited > ctx.config.catchUpTimeoutMs)
            throw new AfterLoadFailedError(`${held}, for ${Math.round(waited / 1000)} s`, {
              phase: 'catch-up',
              hint: `nothing was undone and replication goes on; end that session or let it finish, then resume (\`pgferry resume --id ${ctx.config.id}\`)`,
            });
        } else blockedSince = undefined;
        if (!ended && !deps.signal?.aborted)
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, Math.max(ctx.config.lagSampleIntervalMs, FINISH_LOAD_SAMPLE_MS));
            wake = () => {
              clearTimeout(timer);
              resolve();
            };
          });
      }
    } catch (err) {
      await stopFinishingLoad(ctx);
      // Stopped because its execution ended: whatever acts on the migration now (a rollback) owns its state.
      if (!deps.signal?.aborted) await ctx.update((s) => recordAfterLoad(s, v));
      throw err;
    }
    await ctx.update((s) => recordAfterLoad(s, v));
    if (v.error) {
      await stopFinishingLoad(ctx);
      throw v.error;
    }
    return {
      summary: `${before.tables} table(s) analyzed and ${before.foreignKeys} foreign key(s) validated on the target in ${((Date.now() - started) / 1000).toFixed(1)} s`,
    };
  });

/**
 * "Verify before cutover": every table compared while replication runs (once per migration, until it
 * passes). A difference stops here (VerificationFailedError), nothing frozen; tables the replica did
 * not reach in time are tried again after catching up, up to VERIFY_BEFORE_SWITCH_ROUNDS rounds.
 */
const verifyBeforeSwitchTask: Task = (input, deps) =>
  inSession(input, deps, async (ctx) => {
    const rounds = Number((input.verify as { rounds?: number } | undefined)?.rounds ?? 0);
    if (ctx.state.verifyBeforeSwitch?.outcome === 'ok')
      return { summary: 'verified before the switch already', done: true, rounds, outcome: 'ok' };
    const r = await verifyBeforeSwitchRound(ctx, rounds + 1);
    return { summary: r.said, done: r.done, rounds: r.interrupted ? rounds : rounds + 1, outcome: r.outcome ?? null };
  });

/**
 * "Await cutover approval", entered once per approval window (definition.ts): the migration waits,
 * caught up and replicating. The window's token goes to the store first (whoever approves, Slack or
 * `pgferry cutover`, completes the token stored last; a click that took the previous window's token
 * retries on this one), then ONE gate sample, recorded and published as "Check lag" does, so that the
 * lag an approver reads is at most a window old and says whether the gate's limits still hold. A
 * server that does not answer does not end the wait (the approver sees the sample's age and why);
 * past the deadline the wait ends, resumable (ApprovalTimeoutError), the stale token removed.
 */
const awaitApprovalTask: Task = async (input, deps) => {
  const id = input.migrationId;
  // A migration the store does not hold: refused before anything is written (MigrationNotFoundError).
  await deps.store.get(id);
  const wait = input.approvalWait as ApprovalWaitInput | undefined;
  const deadline = approvalDeadline(wait);
  if (deadline && Date.now() >= deadline.getTime()) {
    await deps.store.takeTaskToken?.(id, 'awaitApproval');
    throw new ApprovalTimeoutError(
      `nobody approved the cutover of migration ${id} by ${deadline.toISOString()} (${Math.round((wait?.deadlineSeconds ?? APPROVAL_DEADLINE_SECONDS) / 3600)} h after the gate opened): the wait ended`,
      {
        migrationId: id,
        phase: 'catch-up',
        hint: `replication goes on and nothing was removed: a new execution of the state machine for ${id} (its done-checks skip what is done) waits for an approval again; \`/pgferry abort ${id}\` removes the migration`,
      },
    );
  }
  if (input.taskToken) await deps.store.putTaskToken?.(id, 'awaitApproval', input.taskToken);
  let sample: WaitingSample;
  let session: Session | undefined;
  let own = false;
  try {
    if (deps.session) session = await deps.session(id);
    else {
      session = await openSession(deps.store, id, { listener: listener(deps), artifactDir: deps.artifactDir });
      own = true;
    }
    sample = await waitingSample(session.ctx, input, deps);
  } catch (err) {
    // A sample that fails (a server away, a lock or statement timeout, a DMS or CloudWatch refusal) is
    // said and the wait goes on: a person decides here, and the cutover's own checks run before any
    // freeze. Only the slot retaining more WAL than allowed ends the wait (the source's disk is at stake).
    if (err instanceof WalRetentionExceededError) throw err;
    deps.log(`warning: no lag sample while waiting for the approval of ${id}: ${errorMessage(err)}`);
    sample = { sampleError: errorMessage(err) };
  } finally {
    if (own) await session?.close();
  }
  const { summary: said, ...recorded } = sample;
  const now = new Date().toISOString();
  let first = false;
  const change = (s: MigrationState) => {
    // The approval may have come while this window sampled (its token completed at once): once the
    // cutover began, or anything but the gate holds the migration, this late window writes nothing.
    if (s.phase !== 'catch-up' || !['running', 'awaiting-cutover'].includes(s.status) || s.cutover?.freezeAt)
      return false;
    first = s.status !== 'awaiting-cutover' || !s.approvalWait;
    s.status = 'awaiting-cutover';
    s.approvalWait = {
      since: (first ? wait?.since : s.approvalWait?.since) ?? now,
      // Locally (a runtime session) the execution stops at the gate and `pgferry cutover` may come any
      // time: no window renews there, so no deadline is shown.
      ...(deadline && !deps.session ? { deadlineAt: deadline.toISOString() } : {}),
      ...(wait?.windowSeconds ? { windowSeconds: wait.windowSeconds } : {}),
      ...recorded,
    };
    if (first)
      s.events = [...s.events.slice(-199), { at: now, message: 'caught up; waiting for the cutover to be approved' }];
  };
  if (session && !own) await session.ctx.update(change);
  else await updateMigration(deps.store, id, change);
  const lag = sample.sampledAt ? said : `no lag sample (${sample.sampleError ?? 'not taken'})`;
  return { summary: `caught up and replicating; waiting for approval; ${lag}` };
};

interface WaitingSample {
  sampledAt?: string;
  gateOpen?: boolean;
  reasons?: string[];
  sampleError?: string;
  summary?: string;
}

/**
 * One gate sample while the approval is awaited: recorded as every "Check lag" sample is (sampleGate),
 * against the gate's memory as it opened, and published. The gate is not re-judged here (no streak, no
 * catch-up timeout): what did not hold is said, and the cutover's own drain forecast decides.
 */
async function waitingSample(ctx: PhaseContext, input: TaskInput, deps: TaskDeps): Promise<WaitingSample> {
  if (ctx.config.strategy === 'dms') {
    if (!deps.dms) return {};
    // DMS's CDC latency (CloudWatch), published as "Check lag" publishes it on that path.
    const step = await dmsGateSample(ctx, deps.dms, 0);
    const gateOpen = step.lagMs !== null && step.lagMs <= ctx.config.maxLagMs;
    await publish(deps, [
      {
        type: 'Replication Lag Sampled',
        detail: { migrationId: ctx.config.id, lagBytes: null, lagMs: step.lagMs, gateOpen },
      },
    ]);
    return {
      sampledAt: new Date().toISOString(),
      gateOpen,
      reasons: gateOpen ? [] : [step.summary],
      summary: `DMS CDC latency ${step.lagMs ?? '?'} ms`,
    };
  }
  const loop = (input.gate as GateState | undefined)?.memory as GateLoop | undefined;
  const memory = structuredClone(loop?.memory ?? { wal: false });
  const sample = await sampleGate(ctx, memory, { catalog: true, validation: 'background' });
  const { figures } = sample;
  const reasons = [...sample.reasons, ...sample.waiting];
  const sampledAt = ctx.state.lag?.at(-1)?.at ?? new Date().toISOString();
  // Open only if a cutover could go through it now: what only the cutover needs holds it too.
  const gateOpen = reasons.length === 0 && sample.beforeCutover.length === 0;
  await publishLagSample(ctx, deps, figures, gateOpen);
  const lag = `lag ${mib(figures.bytes)} / ${figures.ms} ms`;
  // What only the cutover needs (a person's grant): the approval is no use until it is put right.
  const first = sample.beforeCutover.length ? `; ${beforeCutoverText(sample.beforeCutover)}` : '';
  return {
    sampledAt,
    gateOpen,
    reasons,
    summary: reasons.length
      ? `${lag}; the gate's limits no longer hold: ${reasons.join('; ')}${first}`
      : `${lag}, within the gate's limits${first}`,
  };
}

/** "Cut over": the write gap, whole, inside this one call; then the migration is cut over. */
const cutoverTask: Task = (input, deps) =>
  inSession(input, deps, async (ctx) => {
    if (phaseDone(ctx.state, 'cutover') && ctx.state.cutover?.switchAt) {
      deps.phase?.('cutover', 'skip', 'already done');
      return {
        summary: `already done: ${ctx.state.phases.cutover?.summary ?? ''}`,
        writeGapMs: ctx.state.cutover.writeGapMs,
      };
    }
    await ctx.update((s) => {
      s.status = 'running';
    });
    let summary: string;
    try {
      const run =
        ctx.config.strategy === 'dms'
          ? (c: PhaseContext) => dmsCutover(c, requireDms(deps.dms, ctx.config.id))
          : cutover;
      summary = await runPhase(ctx, 'cutover', run, listener(deps, ctx.config.id));
    } catch (err) {
      // The state machine goes back to catch-up ("Cutover attempts left?") while attempts remain.
      const attempt = Number((input.attempt as { count?: number } | undefined)?.count ?? 1);
      if (err instanceof DrainTimeoutError && attempt < DEFAULTS.cutoverAttempts)
        ctx.log(`${err.message}; back to catch-up (attempt ${attempt + 1} of ${DEFAULTS.cutoverAttempts})`);
      throw err;
    }
    await ctx.update((s) => {
      s.status = 'cut-over';
    });
    await publish(deps, [
      {
        type: 'Cutover Completed',
        detail: { migrationId: ctx.config.id, writeGapMs: ctx.state.cutover?.writeGapMs ?? null },
      },
    ]);
    return { summary, writeGapMs: ctx.state.cutover?.writeGapMs ?? null };
  });

/** "Verify" (after the switch): always run when reached; a resume verifies again (a table not verified in time, exit 8). */
const verifyTask: Task = (input, deps) =>
  inSession(input, deps, async (ctx) => {
    const summary = await runPhase(ctx, 'verify', verify, listener(deps, ctx.config.id));
    return { summary, outcome: ctx.state.verify?.outcome ?? null };
  });

/** "Clean up": every pgferry object on both sides, the dumps, and the passwords once nothing is left. */
const cleanupTask: Task = (input, deps) =>
  inSession(input, deps, async (ctx) => {
    const { rmSync } = await import('node:fs');
    const summary = await runPhase(
      ctx,
      'cleanup',
      async (c) => {
        const done = await cleanup(c);
        return c.config.strategy === 'dms'
          ? `${done}; ${await dmsCleanup(c, requireDms(deps.dms, c.config.id))}`
          : done;
      },
      listener(deps, ctx.config.id),
    );
    rmSync(ctx.artifactDir, { recursive: true, force: true });
    await ctx.update((s) => {
      s.status = 'cleaned-up';
    });
    // Best effort: the clean-up is done, and a failure here would send the migration back to cut-over.
    if (!ctx.state.leftovers?.length)
      await deps.store.removeSecrets?.(input.migrationId).catch(async (err: unknown) => {
        const message = `the migration's stored passwords were not removed (${redactText(errorMessage(err))}): remove them by hand`;
        deps.log(`warning: ${message}`);
        await ctx.update((s) => {
          s.warnings = [...(s.warnings ?? []), message];
        });
      });
    return { summary };
  });

interface CaughtError {
  Error: string;
  Cause: string;
}

/** The message of a caught error: Lambda's Cause is its JSON error object, a local one the message. */
function causeMessage(e: CaughtError): string {
  try {
    const parsed = JSON.parse(e.Cause) as { errorMessage?: unknown };
    if (typeof parsed?.errorMessage === 'string') return parsed.errorMessage;
  } catch {
    // not JSON: the message itself
  }
  return e.Cause;
}

/**
 * The failure → undo policy applied with what the stored state says (failureAction, in core), then
 * done: record a resumable stop, keep the cut-over, or (only when `mayRollBack`) roll back.
 */
async function handleFailure(ctx: PhaseContext, error: CaughtError, deps: TaskDeps, mayRollBack: boolean) {
  const thrown = deps.thrown?.(error);
  const phase = ctx.state.phase;
  const facts: FailureFacts = {
    switchStarted: !!ctx.state.cutover?.switchStartedAt,
    switched: !!ctx.state.cutover?.switchAt,
    cutoverRecorded: !!ctx.state.cutover,
    connectionLoss: thrown !== undefined && isConnectionLoss(thrown),
    interrupted: wasInterrupted(),
  };
  const action = failureAction(error.Error, phase, facts);
  const failure = {
    name: error.Error,
    message: causeMessage(error),
    phase,
    hint:
      thrown instanceof PgferryError
        ? thrown.hint
        : ctx.state.lastError?.name === error.Error &&
            // (The worker sends its message redacted.)
            [ctx.state.lastError.message, redactText(ctx.state.lastError.message)].includes(causeMessage(error))
          ? ctx.state.lastError.hint
          : undefined,
  };
  const now = () => new Date().toISOString();
  // The attempt the error ended, if nothing marked it yet (a phase run outside runPhase: the catch-up).
  if (action !== 'ignore' && ctx.state.phaseHistory?.some((a) => a.phase === phase && !a.outcome))
    await ctx.update((s) => failAttempt(s, phase, now(), `${failure.name}: ${failure.message}`)).catch(() => {});
  if (action === 'ignore') return { action, summary: `not recorded: ${failure.name} (${failure.message})` };
  if (action === 'roll-back' && !mayRollBack) return { action, summary: 'the failure calls for a rollback' };
  if (action === 'stop' || action === 'keep-cut-over') {
    const message =
      facts.switchStarted && !facts.switched
        ? `stopped while switching: ${failure.message}`
        : `stopped in ${PHASE_TITLES[phase]}${error.Error === 'UndoFailedError' ? ', undo failed' : ''}: ${failure.message}`;
    await ctx
      .update((s) => {
        s.status = statusAfter(action) ?? s.status;
        s.failure = failure;
        s.lastError = undefined;
        s.events = [...s.events, { at: now(), message }];
      })
      .catch(() => {});
    return { action, summary: message };
  }
  let undone = '';
  let rollbackFailed = false;
  if (action === 'roll-back') {
    try {
      deps.log(`rolling back after the failure in ${PHASE_TITLES[phase]}`);
      // A worker that died (its heartbeat stopped) may leave its sessions running on, holding the
      // locks the rollback needs (a VALIDATE, a copy): ended first, as a requested rollback does.
      await endSessionsLeft(ctx, deps);
      undone = await rollbackWithDms(ctx, deps);
    } catch (rollbackErr) {
      rollbackFailed = true;
      undone = `ROLLBACK FAILED: ${errorMessage(rollbackErr)}; run \`pgferry rollback --id ${ctx.config.id}\``;
    }
  }
  const message = `failed in ${PHASE_TITLES[phase]}: ${failure.message}${undone ? ` (${undone})` : ''}`;
  await ctx
    .update((s) => {
      s.status = statusAfter(action, rollbackFailed) ?? s.status;
      s.failedAt = now();
      s.failure = failure;
      s.lastError = undefined;
      s.events = [...s.events, { at: s.failedAt, message }];
    })
    .catch(() => {});
  if (undone) deps.log(undone);
  await publish(deps, [
    { type: 'Migration Failed', detail: { migrationId: ctx.config.id, error: failure.name, phase } },
  ]);
  return { action, summary: message };
}

/**
 * The rollback; on the DMS path before the switch, the DMS task is stopped and deleted (with its
 * endpoints) first, so that nothing writes into the target the rollback empties. After the switch the
 * way back is native reverse replication, as on every path.
 */
async function rollbackWithDms(ctx: PhaseContext, deps: TaskDeps): Promise<string> {
  if (ctx.config.strategy !== 'dms' || ctx.state.cutover?.switchStartedAt || ctx.state.cutover?.switchAt)
    return rollback(ctx);
  const removed = await dmsCleanup(ctx, requireDms(deps.dms, ctx.config.id));
  return `${removed}; ${await rollback(ctx)}`;
}

/** Ends the migration's sessions a pgferry process that is gone left on both servers, said in the log. */
async function endSessionsLeft(ctx: PhaseContext, deps: TaskDeps) {
  for (const db of [ctx.source, ctx.target]) {
    const n = await endOrphanSessions(db, ctx.config.id);
    if (n) deps.log(`ended ${n} session(s) on the ${db.side} left by a pgferry process that is gone`);
  }
}

/** "Roll back": on request (no error), the rollback; after a failure, what the failure policy says. */
const rollbackTask: Task = (input, deps) =>
  inSession(input, deps, async (ctx) => {
    const error = input.error as CaughtError | null | undefined;
    if (error) return handleFailure(ctx, error, deps, true);
    await endSessionsLeft(ctx, deps);
    const summary = await runPhase(ctx, 'rollback', (c) => rollbackWithDms(c, deps), listener(deps, ctx.config.id));
    await ctx.update((s) => {
      s.status = 'rolled-back';
    });
    return { summary, action: 'roll-back' };
  });

/** "Record failure": a resumable stop (or the kept cut-over) recorded; a rollback, if the stored state calls for one, is left to "Roll back". */
const recordFailureTask: Task = (input, deps) =>
  inSession(input, deps, async (ctx) => {
    const error = input.error as CaughtError | null | undefined;
    if (!error) throw new InvalidInputError('"Record failure" needs the caught error', { field: 'error' });
    return handleFailure(ctx, error, deps, false);
  });

const awaitDumpUploadTask: Task = async (input, deps) => {
  if (!deps.awaitDumpUpload)
    throw new InvalidInputError('"Wait for the dump upload" runs only where the dump goes through S3', {
      field: 'strategy',
      migrationId: input.migrationId,
      hint: 'the deployed stack wires it in; locally the dump strategy writes a file and never waits for an upload',
    });
  if (!input.taskToken)
    throw new InvalidInputError('"Wait for the dump upload" needs its task token', { field: 'taskToken' });
  return deps.awaitDumpUpload(input);
};

const provisionTargetTask: Task = async (input, deps) => {
  if (!deps.provisionTarget)
    throw new PgferryError('no target provisioner is configured here', {
      migrationId: input.migrationId,
      hint: 'start the migration with provisionTarget false and a --target, or run it where the RDS provisioner is wired in',
    });
  return deps.provisionTarget(input);
};

const loadFigures = (ctx: PhaseContext) => ({
  rows: ctx.state.rowsCopied ?? null,
  bytes: ctx.state.bytesCopied ?? null,
});

/**
 * "Bulk load" (one worker copies everything) or, given the attempt's loadId, "Hold snapshot" of the
 * scaled-out load: the coordinator records its plan, holds the snapshot and waits for the shares'
 * reports. Even when the load is done it records an empty plan, so that the poll of that attempt
 * does not wait for one.
 */
const bulkLoadTask: Task = (input, deps) => {
  const loadId = typeof input.loadId === 'string' ? input.loadId : undefined;
  if (!loadId) return phaseTask('bulk-load', bulkLoad, loadFigures)(input, deps);
  const coordinate = (ctx: PhaseContext) =>
    bulkLoad(ctx, { loadId, shares: { read: () => deps.store.get(input.migrationId) } });
  return inSession(input, deps, async (ctx) => {
    if (phaseDone(ctx.state, 'bulk-load')) {
      await coordinate(ctx);
      return {
        summary: `already done: ${ctx.state.phases['bulk-load']?.summary ?? ''}`,
        skipped: true,
        ...loadFigures(ctx),
      };
    }
    return { summary: await runPhase(ctx, 'bulk-load', coordinate, listener(deps)), ...loadFigures(ctx) };
  });
};

/** One share of a scaled-out load, inside the coordinator's exported snapshot. */
const copyShareTask: Task = async (input, deps) => {
  const { loadId, share } = input;
  if (typeof loadId !== 'string' || !loadId)
    throw new InvalidInputError('"Copy a share of the tables" needs the load attempt it belongs to', {
      field: 'loadId',
      migrationId: input.migrationId,
      hint: 'the scaled-out bulk load passes it (its Parallel names each attempt)',
    });
  if (!Number.isInteger(share) || (share as number) < 0)
    throw new InvalidInputError('"Copy a share of the tables" needs the share of the plan to copy', {
      field: 'share',
      migrationId: input.migrationId,
      hint: 'a whole number from 0, the index into the copy plan',
    });
  return inSession(input, deps, async (ctx) => {
    const r = await copyShare(ctx, { loadId, share: share as number });
    return { summary: r.summary, share: r.share, rows: r.rows, bytes: r.bytes };
  });
};

/** The state machine's poll for the coordinator's plan: from the store alone, no server. */
const readCopyPlanTask: Task = async (input, deps) => {
  const status = await readCopyPlan(deps.store, { migrationId: input.migrationId, loadId: String(input.loadId ?? '') });
  return { ...status };
};

/** "Start the DMS task": the bulk load begins (it ends when the full load's event completes the next step). */
const startDmsTask: Task = (input, deps) =>
  inSession(input, deps, async (ctx) => {
    const dms = requireDms(deps.dms, ctx.config.id);
    if (phaseDone(ctx.state, 'bulk-load'))
      return { summary: 'already done: the DMS full load finished', skipped: true };
    if (ctx.state.phase !== 'bulk-load') await phaseStarted(ctx, 'bulk-load', listener(deps, ctx.config.id));
    return { summary: await dmsStart(ctx, dms) };
  });

/**
 * "Wait for the DMS full load": the token is kept for the task's `DMS Replication Task State Change`
 * event (handleDmsTaskStateChange completes it: full load finished, or failed/stopped with the reason).
 */
const awaitDmsFullLoadTask: Task = (input, deps) =>
  inSession(input, deps, async (ctx) => {
    const dms = requireDms(deps.dms, ctx.config.id);
    const ref = dmsRef(ctx);
    if (phaseDone(ctx.state, 'bulk-load')) {
      const output = { summary: 'already done: the DMS full load finished', skipped: true };
      if (input.taskToken) await deps.callbacks?.succeed(input.taskToken, output);
      return output;
    }
    if (!input.taskToken)
      throw new InvalidInputError('"Wait for the DMS full load" needs its task token', { field: 'taskToken' });
    await dms.awaitFullLoad(ctx.config.id, ref, input.taskToken);
    return { summary: `waiting for the full load of ${ref.arn}` };
  });

/** "Start replication": the subscription at the slot, or on the DMS path change capture resumed after the full load. */
const startReplicationTask: Task = async (input, deps) => {
  const { config } = await deps.store.get(input.migrationId);
  if (config.strategy !== 'dms') return phaseTask('start-replication', startReplication)(input, deps);
  return inSession(input, deps, async (ctx) => {
    const dms = requireDms(deps.dms, ctx.config.id);
    if (!phaseDone(ctx.state, 'bulk-load'))
      await phaseEnded(ctx, 'bulk-load', 'DMS full load finished', listener(deps, ctx.config.id));
    if (phaseDone(ctx.state, 'start-replication'))
      return { summary: `already done: ${ctx.state.phases['start-replication']?.summary ?? ''}`, skipped: true };
    const run = (c: PhaseContext) => dmsStartReplication(c, dms);
    return { summary: await runPhase(ctx, 'start-replication', run, listener(deps, ctx.config.id)) };
  });
};

const TASKS: Record<TaskName, Task> = {
  assess: assessTask,
  provisionTarget: provisionTargetTask,
  prepareSchema: phaseTask('prepare-schema', prepareSchema),
  bulkLoad: bulkLoadTask,
  copyShare: copyShareTask,
  readCopyPlan: readCopyPlanTask,
  awaitDumpUpload: awaitDumpUploadTask,
  startDms: startDmsTask,
  awaitDmsFullLoad: awaitDmsFullLoadTask,
  startReplication: startReplicationTask,
  checkLag: checkLagTask,
  finishLoad: finishLoadTask,
  verifyBeforeSwitch: verifyBeforeSwitchTask,
  awaitApproval: awaitApprovalTask,
  cutover: cutoverTask,
  verify: verifyTask,
  cleanup: cleanupTask,
  rollback: rollbackTask,
  recordFailure: recordFailureTask,
};
