/**
 * `pgferry status ID`: one migration as a person checks on it — each phase with its start, end and
 * duration, the current lag (bytes and seconds), the write gap, the verification, and what to do
 * next; `--watch` redraws it every interval until the migration settles (or Ctrl-C).
 */
import {
  EXIT_CODES,
  errorMessage,
  executionWords,
  FINISHED_STATUSES,
  InvalidInputError,
  type MigrationState,
  type MigrationStore,
  objectNames,
  slackHint,
} from '@pgferry/core';
import { connect, type Db, forwardStopped, inspectApplicationName, type LiveStatus, readLag } from '@pgferry/postgres';
import { describeExecution, type ExecutionRecord, readExecution } from './local-runtime';
import { describeLive, describeState, type LiveLag, type Output } from './output';
import { reportId } from './report';
import { inspectMigration, type Runtime } from './runner';
import { FileMigrationStore } from './store';
import { deployedTableStore } from './worker';

/** What to do next, for a person reading the status. */
export function nextStep(
  s: MigrationState,
  execution?: ExecutionRecord,
  deployed = false,
  /** What the servers show now, when status looked: "replicating" only if nothing shows it stopped. */
  live?: LiveStatus,
): string {
  const id = s.id;
  // In AWS the state machine runs it: the CLI's commands act on the state directory, not on it.
  if (deployed) return deployedNextStep(s);
  if (execution?.status === 'running') {
    // The command that continued it last (a `pgferry cutover` going on from where migrate waited).
    const by = execution.continued?.at(-1) ?? { command: execution.command, at: execution.startedAt };
    return `a pgferry ${by.command} is working on it (since ${by.at}); wait, or follow it with \`pgferry status ${id} --watch\``;
  }
  // After `pgferry unfreeze`, whatever was half done: nothing may finish it.
  if (s.unfrozenWithoutTargetAt && !['completed', 'cleaned-up'].includes(s.status))
    return `the source was made writable without the target (\`pgferry unfreeze\` at ${s.unfrozenWithoutTargetAt}): no rollback or resume; compare the databases by hand, then \`pgferry cleanup --id ${id}\` removes what pgferry left (\`--without-target\` while the target cannot be reached)`;
  // Half-done switches: only one command may finish each, and no other may run meanwhile.
  if (s.cutover?.switchStartedAt && !s.cutover.switchAt && !['completed', 'cleaned-up'].includes(s.status))
    return `a cutover stopped while switching the application (the application may already write to the target): \`pgferry resume --id ${id}\` finishes the switch`;
  if (s.rollback?.freezeAt && !['rolled-back', 'cleaned-up'].includes(s.status))
    return `a rollback began at ${s.rollback.freezeAt} and did not finish: \`pgferry rollback --id ${id}\` finishes it`;
  switch (s.status) {
    case 'awaiting-cutover': {
      const then = `\`pgferry cutover --id ${id}\` then waits until the target has caught up again (or \`pgferry rollback --id ${id}\`)`;
      const away = live && [live.source, live.target].find((side) => side.error);
      if (away)
        return `caught up at the last gate sample; the ${away.side} did not answer now, so status cannot tell whether it still is (see ATTENTION below)`;
      // (Drift first: a write it fails also ends the apply worker for a while, which says less.)
      const missing = [...(live?.catalog?.drift ?? []), ...(live?.catalog?.unreplicated ?? [])];
      if (missing.length)
        return `the target is not a complete replicating copy now (${missing.length} difference(s): DDL on the source alone, or a table not replicated), and the cutover gate stays closed on it: put it right as ATTENTION below says; ${then}`;
      const stopped = live && forwardStopped(s, live);
      if (stopped)
        return `replication to the target has stopped: ${stopped}. Put that right (see ATTENTION below); ${then}`;
      // What the cutover needs: as read now when status looked, else as the last gate sample found it.
      const before = live?.catalog && !live.catalog.error ? live.catalog.beforeCutover : s.beforeCutover;
      if (before?.length)
        return `caught up and replicating, but the cutover's gate stays closed until this is put right: ${before.join('; ')}. Then \`pgferry cutover --id ${id}\` (or \`pgferry rollback --id ${id}\`)`;
      return `caught up and replicating: \`pgferry cutover --id ${id}\` when ready (or \`pgferry rollback --id ${id}\`)`;
    }
    case 'cut-over':
      return `the application uses the target: \`pgferry rollback --id ${id}\` goes back; \`pgferry cleanup --id ${id}\` once satisfied`;
    case 'rolled-back':
      return `the application is back on the source: \`pgferry cleanup --id ${id}\` removes what pgferry left`;
    case 'completed':
    case 'cleaned-up':
      return 'nothing: the migration is over';
    case 'failed':
      return (
        s.failure?.hint ??
        `see the failure above; \`pgferry rollback --id ${id}\` removes what is left, then start a new migration`
      );
    default:
      return `no pgferry command is running it: \`pgferry resume --id ${id}\` continues (or \`pgferry rollback --id ${id}\`)`;
  }
}

/** What to do next with a migration the deployed state machine runs: Slack, or its execution in the console. */
function deployedNextStep(s: MigrationState): string {
  const id = s.id;
  switch (s.status) {
    case 'running': {
      if (!s.failure)
        return `its execution (${executionNamed(s)}) is working on it: follow it in the Step Functions console, or with \`pgferry status ${id} --stage S --watch\``;
      // "Record failure" left it resumable (its execution ended "Stopped (resumable)"): the hint in the
      // commands that act on a deployed migration, never a local `pgferry resume`, which cannot.
      const hint = s.failure.hint ? slackHint(s, s.failure.hint) : 'see the failure above';
      const goOn = s.planName
        ? `\`/pgferry resume ${id}\` in Slack (or \`pgferry start ${s.planName} --id ${id} --stage S …\`) goes on in a new execution`
        : `its execution (${executionNamed(s)}) ended: see it in the Step Functions console`;
      return `stopped resumable, nothing undone: ${hint}${hint.includes(`/pgferry resume ${id}`) ? '' : `; ${goOn}`}`;
    }
    case 'awaiting-cutover':
      return `caught up, waiting at "Await cutover approval": \`/pgferry approve ${id}\` in Slack (or \`/pgferry rollback ${id}\`)`;
    case 'cut-over':
      return `the application uses the target: \`/pgferry rollback ${id}\` in Slack goes back`;
    case 'rolled-back':
      return 'the application is back on the source';
    case 'completed':
    case 'cleaned-up':
      return 'nothing: the migration is over';
    default:
      return s.failure?.hint
        ? slackHint(s, s.failure.hint)
        : `see the failure above, and its execution (${executionNamed(s)}) in the Step Functions console`;
  }
}

/** The execution that runs the migration now (a long catch-up goes on in new executions: workflow/history.ts). */
function executionNamed(s: MigrationState): string {
  return executionWords(s.execution ?? { name: s.id, number: 0 });
}

/** The status of one migration, as `pgferry status ID` prints it (without the live check of the servers). */
export function describeStatus(
  s: MigrationState,
  execution?: ExecutionRecord,
  deployed = false,
  liveLag?: LiveLag,
  live?: LiveStatus,
): string {
  const liveChecked = !!live?.catalog && !live.catalog.error;
  const parts = [describeState(s, { timeline: true, liveLag, liveChecked })];
  if (execution) parts.push(describeExecution(execution));
  parts.push(`next: ${nextStep(s, execution, deployed, live)}`);
  return parts.join('\n');
}

/**
 * The migration has settled: it is over, or its last execution ended without waiting for anyone
 * (`--watch` stops there). An execution waiting for the approval, or one still running, is watched on.
 */
export function settled(s: MigrationState, execution?: ExecutionRecord, deployed = false): boolean {
  if (FINISHED_STATUSES.includes(s.status) || s.status === 'failed') return true;
  // A deployed one (no local execution record): its execution goes on while running or waiting for the
  // approval; cut over (baking or done) or rolled back, nothing goes on until someone acts.
  if (deployed) return s.status !== 'running' && s.status !== 'awaiting-cutover';
  if (!execution || execution.status === 'running' || execution.status === 'awaiting-approval') return false;
  // An execution ended (cut over, failed and stopped, aborted): nothing goes on until someone acts.
  return true;
}

/**
 * The lag now, read by status itself from the source (the slot's unconfirmed WAL; the time behind as
 * the walsender reports it), for a migration waiting at the gate: nothing else samples it then
 * locally (`migrate --cutover manual` has returned). When the source does not answer, why.
 */
export async function sampleLagNow(store: MigrationStore, id: string): Promise<LiveLag> {
  let db: Db | undefined;
  try {
    const secrets = await store.secrets(id);
    db = await connect(secrets.sourceUrl, {
      side: 'source',
      applicationName: inspectApplicationName(id),
      max: 1,
      statementTimeoutMs: 5000,
      lockTimeoutMs: 1000,
    });
    const names = objectNames(id);
    const lag = await readLag(db, names.slot);
    if (!lag) return { error: `replication slot ${names.slot} is not on the source` };
    const [sender] = await db.query<{ ms: number | null }>(
      `SELECT (extract(epoch FROM replay_lag) * 1000)::bigint AS ms FROM pg_stat_replication WHERE application_name = $1`,
      [names.subscription],
    );
    // The walsender reports no lag once nothing is left to confirm.
    const ms = sender?.ms != null ? Number(sender.ms) : lag.bytes === 0 ? 0 : null;
    return { at: new Date(lag.point.t).toISOString(), bytes: lag.bytes, ms, retainedBytes: lag.retainedBytes };
  } catch (err) {
    return { error: `the source did not answer: ${errorMessage(err)}` };
  } finally {
    await db?.end().catch(() => {});
  }
}

/** A live sample is worth taking: the migration waits at the gate and nothing local samples it. */
function wantsLiveLag(s: MigrationState, deployed: boolean, offline?: boolean): boolean {
  return !deployed && !offline && s.status === 'awaiting-cutover' && !s.cutover?.switchAt;
}

export interface WatchOptions {
  /** Between two redraws. */
  intervalMs: number;
  /** One frame: the text to show and whether the migration has settled. */
  frame(): Promise<{ text: string; done: boolean }>;
  out: NodeJS.WritableStream & { isTTY?: boolean };
  /** Resolves when the watch should stop (Ctrl-C). */
  stop: Promise<void>;
}

/**
 * Redraw `frame()` every interval: in place on a terminal, appended on a pipe (only frames that
 * changed, each under a line with the time). Ends when the migration settles or `stop` resolves.
 */
export async function watch(o: WatchOptions): Promise<void> {
  let stopped = false;
  void o.stop.then(() => {
    stopped = true;
  });
  let last: string | undefined;
  for (;;) {
    const { text, done } = await o.frame();
    if (o.out.isTTY) o.out.write(`\x1b[H\x1b[2J${text}\n\n(refreshing every ${o.intervalMs / 1000} s; Ctrl-C ends)\n`);
    else if (text !== last) o.out.write(`--- ${new Date().toISOString()}\n${text}\n`);
    last = text;
    if (done || stopped) return;
    await Promise.race([new Promise((r) => setTimeout(r, o.intervalMs)), o.stop]);
    if (stopped) return;
  }
}

export interface StatusCommand {
  positionals: string[];
  id?: string;
  offline?: boolean;
  watch?: boolean;
  /** Seconds between two redraws with --watch. */
  interval?: string;
  /** The deployed stack's DynamoDB table, instead of the state directory. */
  table?: string;
  region?: string;
}

/** Seconds, as milliseconds: at least 0.1 s. */
function intervalMs(value: string | undefined): number {
  if (value === undefined) return 2000;
  const n = Number(value);
  if (!/^\d+(\.\d+)?$/.test(value.trim()) || n < 0.1)
    throw new InvalidInputError(`--interval must be a number of seconds, at least 0.1 (got "${value}")`, {
      field: '--interval',
    });
  return Math.round(n * 1000);
}

/** `pgferry status [ID] [--watch [--interval S]] [--offline] [--table NAME [--region R]]`. */
export async function runStatus(c: StatusCommand, rt: Runtime, out: Output): Promise<number> {
  const id = c.positionals.length || c.id !== undefined ? reportId(c.positionals, c.id, 'status') : undefined;
  if (c.region !== undefined && c.table === undefined)
    throw new InvalidInputError('--region applies to the --table of a deployed stack', {
      field: '--region',
      hint: 'pgferry status ID --table NAME --region REGION',
    });
  if (c.interval !== undefined && !c.watch)
    throw new InvalidInputError('--interval applies to --watch', { field: '--interval' });
  if (c.watch && !id)
    throw new InvalidInputError('--watch follows one migration: give its id', {
      field: '--watch',
      hint: 'pgferry status ID --watch (pgferry status lists the ids)',
    });
  if (c.watch && out.json)
    throw new InvalidInputError('--watch redraws text for a person; --json prints the state once', {
      field: '--watch',
      hint: 'drop one of --watch and --json',
    });
  const every = intervalMs(c.interval);
  // A deployed stack's table: the recorded state (its execution history is the Step Functions console's).
  const store: MigrationStore = c.table
    ? await deployedTableStore(c.table, c.region, { table: '--table', region: '--region' })
    : rt.store;
  const execution = async (i: string): Promise<ExecutionRecord | undefined> => {
    if (c.table) return undefined;
    const e = readExecution(rt.stateDir, i);
    // A record left "running" by a process that is gone (kill -9, a crash): no command holds the
    // migration's claim any more, so nothing is working on it.
    if (e?.status === 'running' && rt.store instanceof FileMigrationStore && !(await rt.store.claimed(i)))
      return {
        ...e,
        status: 'aborted',
        error: e.error ?? 'its pgferry process stopped without finishing (a crash, kill -9)',
      };
    return e;
  };
  if (!id) {
    const { migrations, unreadable } = await store.list();
    const lines = [
      ...migrations.map(
        (s) => `${s.id}  ${s.status.padEnd(16)} ${s.phase.padEnd(18)} ${s.config.sourceUrl} → ${s.config.targetUrl}`,
      ),
      ...unreadable.map((u) => `${u.id}  UNREADABLE: ${u.problem}`),
    ];
    out.result(migrations, lines.length ? lines.join('\n') : `no migrations in ${c.table ?? rt.stateDir}`);
    if (out.json) for (const u of unreadable) out.log(`warning: ${u.problem}`);
    return EXIT_CODES.ok;
  }
  if (c.watch) {
    let stop: () => void = () => {};
    const stopped = new Promise<void>((r) => {
      stop = r;
    });
    // Ctrl-C ends the watch, not the migration it watches: exit 0.
    for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, stop);
    try {
      await watch({
        intervalMs: every,
        out: process.stdout,
        stop: stopped,
        frame: async () => {
          const s = await store.get(id);
          const e = await execution(id);
          // Waiting at the gate, nothing else samples: the lag, and what the servers show (the catalogs).
          const waiting = wantsLiveLag(s, !!c.table, c.offline);
          const [lag, live] = waiting
            ? await Promise.all([sampleLagNow(store, id), inspectMigration(rt, id)])
            : [undefined, undefined];
          const text = describeStatus(s, e, !!c.table, lag, live);
          return { text: live ? `${text}\n${describeLive(live)}` : text, done: settled(s, e, !!c.table) };
        },
      });
    } finally {
      for (const signal of ['SIGINT', 'SIGTERM'] as const) process.off(signal, stop);
    }
    return EXIT_CODES.ok;
  }
  const s = await store.get(id);
  const e = await execution(id);
  // A cleaned-up migration has nothing left on the servers, nor the passwords to look; a deployed
  // one's servers are in its VPC.
  if (c.offline || c.table || s.status === 'cleaned-up')
    out.result({ ...s, execution: e }, describeStatus(s, e, !!c.table));
  else {
    const [live, lagNow] = await Promise.all([
      inspectMigration(rt, id),
      wantsLiveLag(s, false) ? sampleLagNow(store, id) : undefined,
    ]);
    out.result(
      { ...s, execution: e, live, lagNow },
      `${describeStatus(s, e, false, lagNow, live)}\n${describeLive(live)}`,
    );
  }
  return EXIT_CODES.ok;
}
