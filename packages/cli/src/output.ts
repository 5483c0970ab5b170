/** Output: progress bars on a terminal, plain lines otherwise, JSON lines with --json. Never a password. */
import {
  cutoverWindowText,
  formatBytes,
  type MigrationState,
  type NumberedAttempt,
  numberedAttempts,
  PHASE_TITLES,
  type Phase,
  redactedJson,
  redactText,
  sampledText,
  slackHint,
} from '@pgferry/core';
import { describeUndoFailure, type LiveStatus, type SideLive } from '@pgferry/postgres';
import type { RunnerEvents } from './runner';

export interface Output extends RunnerEvents {
  json: boolean;
  result(value: unknown, text: string): void;
  error(err: unknown): void;
  done(): void;
}

const fmtCount = (n: number) =>
  n >= 1e9
    ? `${(n / 1e9).toFixed(2)}G`
    : n >= 1e6
      ? `${(n / 1e6).toFixed(2)}M`
      : n >= 1e4
        ? `${(n / 1e3).toFixed(0)}k`
        : `${n}`;

export function createOutput(options: { json: boolean; stream?: NodeJS.WriteStream; quiet?: boolean }): Output {
  const out = options.stream ?? process.stdout;
  const tty = !options.json && !!out.isTTY;
  let barShown = false;
  let lastPlain = 0;
  const clearBar = () => {
    if (barShown) {
      out.write('\r\x1b[2K');
      barShown = false;
    }
  };
  const line = (text: string) => {
    if (options.quiet) return;
    clearBar();
    out.write(`${redactText(text)}\n`);
  };
  const emit = (obj: Record<string, unknown>) =>
    out.write(`${redactedJson({ at: new Date().toISOString(), ...obj })}\n`);
  return {
    json: options.json,
    log(message) {
      if (options.json) emit({ event: 'log', message });
      else line(`  ${message}`);
    },
    phase(phase: Phase, event, summary) {
      if (options.json) emit({ event: `phase-${event}`, phase, title: PHASE_TITLES[phase], summary });
      else if (event === 'start') line(`▶ ${PHASE_TITLES[phase]}`);
      else if (event === 'end') line(`✔ ${PHASE_TITLES[phase]}: ${summary ?? ''}`);
      else line(`· ${PHASE_TITLES[phase]}: ${summary ?? 'skipped'}`);
    },
    progress(p) {
      const pct = p.total > 0 ? Math.min(100, (p.done / p.total) * 100) : 0;
      const rows =
        p.rows === undefined ? '' : `, ${fmtCount(p.rows)}${p.rowsTotal ? ` of ~${fmtCount(p.rowsTotal)}` : ''} rows`;
      const amount =
        p.unit === 'bytes'
          ? `${formatBytes(p.done)} of ~${formatBytes(p.total)}${rows}`
          : `${p.done}/${p.total} ${p.unit}`;
      if (options.json) {
        const now = Date.now();
        if (now - lastPlain < 1000) return;
        lastPlain = now;
        emit({ event: 'progress', ...p });
      } else if (tty) {
        // Redraw at most ten times a second: a terminal write per copied chunk costs real CPU.
        const now = Date.now();
        if (now - lastPlain < 100 && p.done < p.total) return;
        lastPlain = now;
        const width = 30;
        const filled = Math.round((pct / 100) * width);
        out.write(
          `\r\x1b[2K  ${p.step} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${pct.toFixed(0)}% ${amount}`,
        );
        barShown = true;
      } else if (!options.quiet) {
        const now = Date.now();
        if (now - lastPlain < 5000) return;
        lastPlain = now;
        out.write(`  ${p.step}: ${amount} (${pct.toFixed(0)}%)\n`);
      }
    },
    result(value, text) {
      clearBar();
      if (options.json) emit({ event: 'result', result: value });
      else out.write(`${redactText(text)}\n`);
    },
    error(err) {
      clearBar();
      const e = err as { name?: string; message?: string; hint?: string; field?: string };
      if (options.json) emit({ event: 'error', name: e.name, message: e.message, field: e.field, hint: e.hint });
      else {
        process.stderr.write(`error: ${redactText(e.message ?? String(err))}\n`);
        if (e.hint) process.stderr.write(`hint: ${redactText(e.hint)}\n`);
      }
    },
    done: clearBar,
  };
}

const clockOf = (iso: string | undefined) => (iso ? iso.slice(11, 23) : '');
const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** Phase titles in the timeline: wide enough for "Start replication (2nd)". */
const TITLE_WIDTH = 24;

/** One attempt of a phase as `pgferry status ID` lists it: start, end, duration, outcome. */
function timelineLine(a: NumberedAttempt): string {
  const title = a.title.padEnd(TITLE_WIDTH);
  const summary = a.summary ? `  ${a.outcome === 'failed' ? 'failed: ' : ''}${a.summary}` : '';
  if (a.outcome === 'interrupted')
    return `    ${title} ${clockOf(a.startedAt)} → interrupted (its process stopped before the phase ended)`;
  // Not ended: a command may be running it, or it was stopped (status cannot tell from the state).
  if (!a.endedAt)
    return `    ${title} (running or interrupted) since ${clockOf(a.startedAt)}, ${seconds(Date.now() - Date.parse(a.startedAt))} so far${summary}`;
  const took = seconds(Date.parse(a.endedAt) - Date.parse(a.startedAt));
  return `    ${title} ${clockOf(a.startedAt)} → ${clockOf(a.endedAt)} ${took.padStart(10)}${summary}`;
}

/**
 * A stored migration in words. `timeline` (`pgferry status ID`): each phase with start, end and
 * duration, and the lag in bytes and seconds.
 */
/** A lag sample `pgferry status` took itself, or why it could not. */
export type LiveLag = { at: string; bytes: number; ms: number | null; retainedBytes: number } | { error: string };

export function describeState(
  s: MigrationState,
  options: {
    timeline?: boolean;
    liveLag?: LiveLag;
    /** Status read the catalogs now (its ATTENTION lines say what the cutover needs, not the last sample). */
    liveChecked?: boolean;
  } = {},
): string {
  const lines = [
    `migration ${s.id}: ${s.status} (phase: ${PHASE_TITLES[s.phase]})`,
    `  source ${s.config.sourceUrl}${s.sourceVersion ? ` (PostgreSQL ${s.sourceVersion})` : ''}`,
    `  target ${s.config.targetUrl}${s.targetVersion ? ` (PostgreSQL ${s.targetVersion})` : ''}`,
    `  strategy ${s.config.strategy}, jobs ${s.config.jobs}, cutover ${s.config.cutover}`,
  ];
  if (options.timeline) {
    lines.push(`  phases (UTC)${''.padEnd(TITLE_WIDTH - 9)}start          end              took`);
    lines.push(...numberedAttempts(s).map(timelineLine));
  }
  for (const [phase, rec] of Object.entries(options.timeline ? {} : s.phases)) {
    if (!rec) continue;
    const took =
      rec.startedAt && rec.endedAt
        ? ` in ${((Date.parse(rec.endedAt) - Date.parse(rec.startedAt)) / 1000).toFixed(1)} s`
        : rec.startedAt
          ? ' (running or interrupted)'
          : '';
    lines.push(`  ${PHASE_TITLES[phase as Phase].padEnd(18)}${took}${rec.summary ? `: ${rec.summary}` : ''}`);
  }
  if (s.rowsCopied !== undefined) lines.push(`  copied ${s.rowsCopied} rows, ${formatBytes(s.bytesCopied ?? 0)} sent`);
  const lag = s.lag?.at(-1);
  const live = options.liveLag;
  if (live && 'at' in live && !s.cutover?.switchAt)
    lines.push(
      `  lag now: ${formatBytes(live.bytes)} (${live.bytes} bytes), ${live.ms === null ? 'time behind not reported' : `${(live.ms / 1000).toFixed(2)} s behind`}, ${sampledText(live.at)} (taken by this status); slot retains ${formatBytes(live.retainedBytes)}`,
    );
  else if (lag && !s.cutover?.switchAt && options.timeline)
    lines.push(
      `  lag${live ? ' (last recorded)' : ' now'}: ${formatBytes(lag.bytes)} (${lag.bytes} bytes), ${(lag.ms / 1000).toFixed(2)} s behind, ${sampledText(lag.at)}; slot retains ${formatBytes(s.walRetainedBytes ?? 0)}${live && 'error' in live ? `\n  (no live sample: ${live.error})` : ''}`,
    );
  else if (lag && !s.cutover?.switchAt)
    lines.push(
      `  lag ${lag.ms} ms / ${lag.bytes} bytes, ${sampledText(lag.at)}; slot retains ${formatBytes(s.walRetainedBytes ?? 0)}`,
    );
  const wait = s.status === 'awaiting-cutover' ? s.approvalWait : undefined;
  if (wait?.gateOpen === false)
    lines.push(
      `  ATTENTION: the gate's limits no longer hold while waiting for the approval: ${(wait.reasons ?? []).join('; ')}`,
    );
  if (wait?.sampleError) lines.push(`  no lag sample while waiting (${wait.sampleError}); the lag above is older`);
  if (wait?.deadlineAt)
    lines.push(
      `  waiting for the cutover approval since ${wait.since}; the wait ends unanswered at ${wait.deadlineAt}`,
    );
  const window = s.cutover?.switchAt ? undefined : cutoverWindowText(s, new Date());
  if (window) lines.push(`  cutover window: ${window}`);
  if (s.ddlDrift?.length) lines.push(`  DDL drift: ${s.ddlDrift.join('; ')}`);
  // As the last gate sample found it, while a cutover is still to come (a rollback or a clean-up made it
  // moot); status that read the servers says it as of now in its ATTENTION lines instead.
  if (
    !options.liveChecked &&
    s.beforeCutover?.length &&
    !s.cutover?.switchAt &&
    (s.status === 'awaiting-cutover' || s.status === 'running')
  )
    lines.push(`  before the cutover can switch, put right (at the last gate sample): ${s.beforeCutover.join('; ')}`);
  // (Over: a rollback or a clean-up after `pgferry unfreeze` ended whatever was half done.)
  const over = s.status === 'rolled-back' || s.status === 'cleaned-up';
  if (s.cutover?.switchStartedAt && !s.cutover.switchAt && !over) {
    lines.push(
      `  ATTENTION: a cutover stopped while switching the application to the target (at ${s.cutover.switchStartedAt}); the application may already write there.\n  Run \`pgferry resume --id ${s.id}\` to finish the switch (then \`pgferry rollback --id ${s.id}\` switches back losing nothing).`,
    );
  } else if (s.undoFailed) {
    lines.push(`  ATTENTION: ${describeUndoFailure(s)}`);
  } else if (s.cutover?.freezeAt && !s.cutover.switchAt && !over) {
    lines.push(
      `  ATTENTION: a cutover began at ${s.cutover.freezeAt} and did not finish; the source may still be frozen (read-only).\n  Run \`pgferry resume --id ${s.id}\` to finish it or \`pgferry rollback --id ${s.id}\` to unfreeze and undo.`,
    );
  }
  if (s.cutover?.switchAt) lines.push(`  write gap: ${s.cutover.writeGapMs} ms (switched at ${s.cutover.switchAt})`);
  if (s.rollback?.freezeAt && !s.rollback.switchAt && !s.undoFailed)
    lines.push(
      `  ATTENTION: a rollback began at ${s.rollback.freezeAt} and did not finish; the target may be read-only.\n  Run \`pgferry rollback --id ${s.id}\` to finish it.`,
    );
  if (s.rollback?.switchAt) lines.push(`  rolled back: write gap ${s.rollback.writeGapMs} ms`);
  if (s.rollback?.switchAt && !['rolled-back', 'cleaned-up'].includes(s.status))
    lines.push(
      `  ATTENTION: the rollback switched back at ${s.rollback.switchAt} but did not finish (status still ${s.status}).\n  Run \`pgferry rollback --id ${s.id}\` to finish it.`,
    );
  for (const [label, v] of [
    ['verify before the switch', s.verifyBeforeSwitch],
    ['verify', s.verify],
  ] as const) {
    if (!v) continue;
    const outcome = v.outcome ?? (v.ok ? 'ok' : 'mismatch');
    const word =
      outcome === 'ok'
        ? 'OK'
        : outcome === 'mismatch'
          ? 'MISMATCH'
          : `NOT VERIFIED (${v.replication} ${formatBytes(v.behindBytes ?? 0)} behind)`;
    const speed =
      v.ms !== undefined
        ? `, ${(v.ms / 1000).toFixed(1)} s; source read at ${v.sourceMiBps} MiB/s, target at ${v.targetMiBps} MiB/s${v.readers ? ` (readers at once: ${v.readers.source} source, ${v.readers.target} target)` : ''}`
        : '';
    lines.push(`  ${label}: ${word} (${v.tables.length} tables${speed})`);
  }
  for (const w of s.warnings ?? []) lines.push(`  warning: ${w}`);
  if (s.failure)
    lines.push(
      `  failed in ${s.failure.phase ?? '?'}: ${s.failure.message}${s.failure.hint ? `\n  hint: ${slackHint(s, s.failure.hint)}` : ''}`,
    );
  if (s.leftovers?.length) lines.push(`  left behind: ${s.leftovers.join(', ')}`);
  return lines.join('\n');
}

function describeSide(side: SideLive): string {
  if (side.error) return `  ${side.side}: not checked (${side.error})`;
  const parts = [
    side.frozen ? 'database read-only' : 'database writable',
    side.sessions ? `${side.sessions} pgferry session(s) connected` : 'no pgferry session',
    ...side.slots.map(
      (s) =>
        `slot ${s.name} ${s.active ? 'streaming' : 'not read'}, retaining ${formatBytes(s.retainedBytes)}${s.walStatus && s.walStatus !== 'reserved' ? ` (wal_status ${s.walStatus})` : ''}`,
    ),
    ...side.publications.map((p) => `publication ${p}`),
    ...side.subscriptions.map(
      (s) =>
        `subscription ${s.name} ${s.enabled ? (s.workerRunning ? 'applying' : 'enabled, no worker') : s.prepared ? 'prepared for the cutover, not started' : 'disabled'}${s.applyErrors ? `, ${s.applyErrors} apply error(s)` : ''}`,
    ),
  ];
  return `  ${side.side}: ${parts.join('; ')}`;
}

/** What the servers show now (`pgferry status --id`), and what needs someone's attention. */
export function describeLive(live: LiveStatus): string {
  const lines = [`live, checked at ${live.at}:`, describeSide(live.source), describeSide(live.target)];
  for (const a of live.attention) lines.push(`  ATTENTION: ${a}`);
  if (!live.attention.length) lines.push('  nothing needs attention');
  return lines.join('\n');
}
