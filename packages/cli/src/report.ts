/**
 * `pgferry report <id> --html FILE`: one self-contained HTML page about one migration — its phase
 * timeline, the lag over time, where the write gap went, and both verifications. No script, font,
 * stylesheet or image is loaded from anywhere (a Content-Security-Policy forbids it too): the charts are
 * inline SVG, so the page can be mailed, attached to a ticket or opened on a machine without network.
 */
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import {
  type CutoverRecord,
  cutoverWindowText,
  formatBytes,
  InvalidInputError,
  type LagSample,
  lagGapMs,
  lagSegments,
  type MigrationState,
  mergeLagSeries,
  type NumberedAttempt,
  numberedAttempts,
  PHASE_TITLES,
  redactedJson,
  sampledText,
  slackHint,
  type VerifyResult,
} from '@pgferry/core';

/** Text as HTML: table names, summaries and messages are user data. */
export function escapeHtml(text: unknown): string {
  return String(text ?? '')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

const ms = (a: string, b: string) => Date.parse(b) - Date.parse(a);

function duration(milliseconds: number): string {
  if (milliseconds < 1000) return `${Math.round(milliseconds)} ms`;
  if (milliseconds < 120_000) return `${(milliseconds / 1000).toFixed(1)} s`;
  if (milliseconds < 2 * 3_600_000) return `${(milliseconds / 60_000).toFixed(1)} min`;
  return `${(milliseconds / 3_600_000).toFixed(1)} h`;
}

/** A time of day in UTC (the page may be read in another zone than the one it ran in: say which). */
const clock = (iso: string) => `${iso.slice(11, 19)}`;

/** The smallest of 1, 2, 5 × 10^n at or above `v`: an axis ends on a round figure. */
export function niceCeiling(v: number): number {
  if (!(v > 0)) return 1;
  const pow = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * pow >= v * (1 - 1e-9)) return m * pow;
  return 10 * pow;
}

const BYTE_UNITS = [
  ['B', 1],
  ['KiB', 1024],
  ['MiB', 1024 ** 2],
  ['GiB', 1024 ** 3],
] as const;

function byteUnit(max: number): readonly [string, number] {
  let unit: readonly [string, number] = BYTE_UNITS[0];
  for (const u of BYTE_UNITS) if (max >= u[1]) unit = u;
  return unit;
}

/** Three significant digits, no trailing zeros: axis ticks (1.25, 0.5, 375) and step times. */
const fmt = (n: number) => String(Number(n.toPrecision(3)));

/** Section text when there is nothing to draw yet. */
const notYet = (text: string) => `<p class="empty">${escapeHtml(text)}</p>`;

// ---------------------------------------------------------------------------------------------------
// Phase timeline

interface TimelineRow extends NumberedAttempt {
  /** Where its bar ends when it has no end: the next attempt's start (interrupted), or the last update. */
  barEnd: string;
}

/** Every attempt of every phase, in the order they ran (a catch-up gone back to is a row of its own). */
function timelineRows(s: MigrationState): TimelineRow[] {
  const attempts = numberedAttempts(s);
  return attempts.map((a, i) => ({
    ...a,
    barEnd: a.endedAt ?? (a.outcome === 'interrupted' ? attempts[i + 1]?.startedAt : undefined) ?? s.updatedAt,
  }));
}

/** What the table says of an attempt without an end, and after its summary. */
function outcomeText(r: TimelineRow): string {
  if (r.outcome === 'interrupted') return 'interrupted (its process stopped before the phase ended)';
  if (!r.endedAt) return 'not ended (running or interrupted)';
  return r.outcome === 'failed' ? 'failed' : 'done';
}

function timelineSection(s: MigrationState): string {
  const rows = timelineRows(s);
  if (!rows.length) return notYet('No phase has started yet.');
  const t0 = Math.min(...rows.map((r) => Date.parse(r.startedAt)));
  const endOf = (r: TimelineRow) => Date.parse(r.barEnd);
  const t1 = Math.max(t0 + 1, ...rows.map(endOf));
  const width = 760;
  const left = 170;
  const plot = width - left - 20;
  const rowH = 24;
  const height = rows.length * rowH + 30;
  const x = (t: number) => left + ((t - t0) / (t1 - t0)) * plot;
  const bars = rows
    .map((r, i) => {
      const x0 = x(Date.parse(r.startedAt));
      const w = Math.max(2, x(endOf(r)) - x0);
      const y = i * rowH + 4;
      const cls = r.outcome === 'failed' ? ' failed' : r.outcome === 'done' ? '' : ' open';
      const took = r.endedAt ? duration(ms(r.startedAt, r.endedAt)) : outcomeText(r);
      return `<text x="${left - 8}" y="${y + 14}" text-anchor="end">${escapeHtml(r.title)}</text><rect class="phase-bar${cls}" data-phase="${escapeHtml(r.phase)}" data-attempt="${r.nth}" data-outcome="${escapeHtml(r.outcome ?? 'running')}" x="${x0.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${rowH - 8}"><title>${escapeHtml(`${r.title}: ${took}${r.outcome === 'failed' ? ', failed' : ''}`)}</title></rect>`;
    })
    .join('');
  const axisY = rows.length * rowH + 8;
  const ticks = [0, 0.25, 0.5, 0.75, 1]
    .map((f) => {
      const t = t0 + f * (t1 - t0);
      const tx = x(t);
      return `<line class="grid" x1="${tx.toFixed(1)}" y1="0" x2="${tx.toFixed(1)}" y2="${axisY}"/><text x="${tx.toFixed(1)}" y="${axisY + 16}" text-anchor="middle">${clock(new Date(t).toISOString())}</text>`;
    })
    .join('');
  const svg = `<svg class="chart timeline" role="img" aria-label="phase timeline" viewBox="0 0 ${width} ${height + 8}" width="${width}" height="${height + 8}" xmlns="http://www.w3.org/2000/svg">${ticks}${bars}</svg>`;
  const table = rows
    .map(
      (r) =>
        `<tr class="outcome-${escapeHtml(r.outcome ?? 'running')}"><td>${escapeHtml(r.title)}</td><td>${escapeHtml(r.startedAt)}</td><td>${r.endedAt ? escapeHtml(r.endedAt) : escapeHtml(outcomeText(r))}</td><td class="num">${r.endedAt ? duration(ms(r.startedAt, r.endedAt)) : '—'}</td><td>${escapeHtml(outcomeText(r))}</td><td>${escapeHtml(r.summary ?? '')}</td></tr>`,
    )
    .join('');
  return `${svg}<p class="note">Times in UTC. Each attempt of a phase is a row of its own.</p><table class="phases"><thead><tr><th>phase</th><th>started</th><th>ended</th><th>took</th><th>outcome</th><th>summary</th></tr></thead><tbody>${table}</tbody></table>`;
}

// ---------------------------------------------------------------------------------------------------
// Lag chart

/**
 * Lag in bytes (left axis) and in seconds (right axis) against time. Both scales start at zero, so
 * a line's height is comparable over time; the two lines are not comparable with each other. Where
 * sampling stopped for longer than `gapMs` (a resume the next day, a process killed) the lines break
 * (a new `M` in the path, a shaded band): no line is drawn across a time nothing was measured.
 */
export function lagChart(samples: LagSample[], gapMs = lagGapMs(0)): string {
  const width = 760;
  const height = 300;
  const pad = { left: 70, right: 70, top: 16, bottom: 44 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const times = samples.map((p) => Date.parse(p.at));
  let t0 = Math.min(...times);
  let t1 = Math.max(...times);
  if (t1 - t0 < 1000) {
    t0 -= 500;
    t1 += 500;
  }
  const [unit, perUnit] = byteUnit(Math.max(...samples.map((p) => p.bytes)));
  const bytesMax = niceCeiling(Math.max(...samples.map((p) => p.bytes / perUnit)));
  // Under a second the time axis counts milliseconds: ticks of 0.0025 s read badly.
  const [timeUnit, msPerUnit] = Math.max(...samples.map((p) => p.ms)) < 1000 ? ['ms', 1] : ['s', 1000];
  const secondsMax = niceCeiling(Math.max(...samples.map((p) => p.ms / msPerUnit)));
  const x = (t: number) => pad.left + ((t - t0) / (t1 - t0)) * plotW;
  const y = (v: number, max: number) => pad.top + plotH - (v / max) * plotH;
  const points = (value: (p: LagSample) => number, max: number) =>
    samples.map((p, i) => [x(times[i]!), y(value(p), max)] as const);
  // Indexes where a new segment starts: after a stop in sampling longer than gapMs.
  const breaks = new Set<number>();
  for (let i = 1; i < times.length; i++) if (times[i]! - times[i - 1]! > gapMs) breaks.add(i);
  const path = (pts: (readonly [number, number])[]) =>
    pts.map(([px, py], i) => `${i && !breaks.has(i) ? 'L' : 'M'}${px.toFixed(1)} ${py.toFixed(1)}`).join(' ');
  const gaps = [...breaks]
    .map((i) => {
      const x0 = x(times[i - 1]!);
      const x1 = x(times[i]!);
      const label = `no samples from ${samples[i - 1]!.at} to ${samples[i]!.at} (${duration(times[i]! - times[i - 1]!)})`;
      return `<rect class="sampling-gap" x="${x0.toFixed(1)}" y="${pad.top}" width="${(x1 - x0).toFixed(1)}" height="${plotH}"><title>${escapeHtml(label)}</title></rect>`;
    })
    .join('');
  const bytesPts = points((p) => p.bytes / perUnit, bytesMax);
  const secondsPts = points((p) => p.ms / msPerUnit, secondsMax);
  const dots = (pts: (readonly [number, number])[], cls: string) =>
    pts.map(([px, py]) => `<circle class="${cls}" cx="${px.toFixed(1)}" cy="${py.toFixed(1)}" r="2.5"/>`).join('');
  const yTicks = [0, 0.25, 0.5, 0.75, 1]
    .map((f) => {
      const ty = pad.top + plotH - f * plotH;
      return `<line class="grid" x1="${pad.left}" y1="${ty.toFixed(1)}" x2="${pad.left + plotW}" y2="${ty.toFixed(1)}"/><text class="axis-bytes" x="${pad.left - 6}" y="${(ty + 4).toFixed(1)}" text-anchor="end">${fmt(f * bytesMax)}</text><text class="axis-seconds" x="${pad.left + plotW + 6}" y="${(ty + 4).toFixed(1)}">${fmt(f * secondsMax)}</text>`;
    })
    .join('');
  const xTicks = [0, 0.25, 0.5, 0.75, 1]
    .map((f) => {
      const t = t0 + f * (t1 - t0);
      return `<text x="${x(t).toFixed(1)}" y="${pad.top + plotH + 18}" text-anchor="middle">${clock(new Date(t).toISOString())}</text>`;
    })
    .join('');
  const frame = `<rect class="frame" x="${pad.left}" y="${pad.top}" width="${plotW}" height="${plotH}"/>`;
  const labels = `<text class="axis-bytes" transform="translate(16 ${pad.top + plotH / 2}) rotate(-90)" text-anchor="middle">lag (${unit})</text><text class="axis-seconds" transform="translate(${width - 14} ${pad.top + plotH / 2}) rotate(90)" text-anchor="middle">lag (${timeUnit})</text><text x="${pad.left + plotW / 2}" y="${height - 6}" text-anchor="middle">time (UTC)</text>`;
  return `<svg class="chart lag" role="img" aria-label="replication lag over time, bytes and seconds" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" xmlns="http://www.w3.org/2000/svg">${frame}${gaps}${yTicks}${xTicks}${labels}<path class="series lag-bytes" data-series="bytes" data-points="${samples.length}" data-segments="${breaks.size + 1}" d="${path(bytesPts)}"/><path class="series lag-seconds" data-series="seconds" data-points="${samples.length}" data-segments="${breaks.size + 1}" d="${path(secondsPts)}"/>${dots(bytesPts, 'dot-bytes')}${dots(secondsPts, 'dot-seconds')}</svg>`;
}

/** The whole series the store kept (when given), with the state's own recent samples. */
function lagSection(s: MigrationState, series?: LagSample[]): string {
  const samples = mergeLagSeries(series, s.lag);
  if (!samples.length)
    return notYet(
      'No lag sample recorded yet: lag is sampled during catch-up, once replication has started. This migration has not got that far.',
    );
  const last = samples.at(-1)!;
  const peakBytes = Math.max(...samples.map((p) => p.bytes));
  const peakMs = Math.max(...samples.map((p) => p.ms));
  const thinned = samples.filter((p) => p.of !== undefined).length;
  const gapMs = lagGapMs(s.config.lagSampleIntervalMs ?? 0);
  const stops = lagSegments(samples, gapMs).length - 1;
  const legend = `<p class="legend"><span class="key-bytes">━ lag in bytes (left axis)</span> <span class="key-seconds">━ lag in time (right axis)</span></p>`;
  const kept = series
    ? thinned
      ? `every sample of the last hour of sampling, and before it ${thinned} point(s) of one minute each (that minute's peak)`
      : 'every sample'
    : 'the most recent samples the state keeps (the store kept no series)';
  const facts = `<p>${samples.length} point(s) from ${escapeHtml(samples[0]!.at)} to ${escapeHtml(last.at)}: ${escapeHtml(kept)}. Last: ${escapeHtml(formatBytes(last.bytes))} (${last.bytes} bytes), ${last.ms} ms. Peak: ${escapeHtml(formatBytes(peakBytes))}, ${peakMs} ms.${stops ? ` Sampling stopped ${stops} time(s) for more than ${escapeHtml(duration(gapMs))} (shaded; the lines break there).` : ''}</p>`;
  return `${legend}${lagChart(samples, gapMs)}${facts}`;
}

// ---------------------------------------------------------------------------------------------------
// Write gap

/**
 * The cutover's recorded steps (packages/postgres/src/phases/cutover.ts, `stepsMs`) under the six
 * stages a person asks about. `record` holds the target's unfreeze (it takes writes from the switch on).
 */
const GAP_STEPS: Record<string, { stage: string; label: string }> = {
  freeze: { stage: 'freeze', label: 'freeze writes, end sessions' },
  prepared: { stage: 'freeze', label: 'wait for prepared transactions' },
  drain: { stage: 'drain', label: 'drain to the LSN after the freeze' },
  sequences: { stage: 'sequences', label: 'sync sequences' },
  writesAfterFreeze: { stage: 'drain', label: 'check for writes after the freeze' },
  stopForward: { stage: 'reverse replication', label: 'stop forward apply' },
  lastLook: { stage: 'reverse replication', label: 'last look for unapplied changes' },
  reverseSlot: { stage: 'reverse replication', label: 'create the reverse slot' },
  reverseSubscription: { stage: 'reverse replication', label: 'start the reverse subscription' },
  record: { stage: 'unfreeze', label: 'make the new side writable, record the switch' },
  switch: { stage: 'switch', label: 'switch the application (file / command)' },
};
export const GAP_STAGES = ['freeze', 'drain', 'sequences', 'reverse replication', 'unfreeze', 'switch'] as const;

function writeGapOf(record: CutoverRecord, title: string, noSteps: string): string {
  if (!record.freezeAt)
    return `<h3>${escapeHtml(title)}</h3>${notYet('Writes were not frozen: there was no write gap.')}`;
  if (!record.switchAt)
    return `<h3>${escapeHtml(title)}</h3>${notYet(`Writes were frozen at ${record.freezeAt}, but the switch was not recorded: the cutover did not finish (or was undone), so there is no measured write gap.`)}`;
  const steps = Object.entries(record.stepsMs ?? {});
  const total = record.writeGapMs ?? steps.reduce((a, [, v]) => a + v, 0);
  const stages = GAP_STAGES.map((stage) => ({
    stage,
    ms: steps.filter(([k]) => GAP_STEPS[k]?.stage === stage).reduce((a, [, v]) => a + v, 0),
  }));
  const other = steps.filter(([k]) => !GAP_STEPS[k]).reduce((a, [, v]) => a + v, 0);
  if (other) stages.push({ stage: 'other' as (typeof GAP_STAGES)[number], ms: other });
  const width = 760;
  const sum = Math.max(
    1,
    stages.reduce((a, st) => a + st.ms, 0),
  );
  let x = 0;
  const rects = stages
    .filter((st) => st.ms > 0)
    .map((st) => {
      const w = (st.ms / sum) * width;
      const r = `<rect class="gap-step stage-${escapeHtml(st.stage.replace(/ /g, '-'))}" data-stage="${escapeHtml(st.stage)}" x="${x.toFixed(1)}" y="0" width="${Math.max(1, w).toFixed(1)}" height="28"><title>${escapeHtml(`${st.stage}: ${fmt(st.ms)} ms`)}</title></rect>`;
      x += w;
      return r;
    })
    .join('');
  if (!steps.length)
    return `<h3>${escapeHtml(title)}: ${escapeHtml(total)} ms</h3>${notYet(`Frozen at ${record.freezeAt}, switched at ${record.switchAt}; ${noSteps}`)}`;
  const svg = `<svg class="chart gap" role="img" aria-label="write gap by step" viewBox="0 0 ${width} 28" width="${width}" height="28" xmlns="http://www.w3.org/2000/svg">${rects}</svg>`;
  const stageRows = stages
    .map(
      (st) =>
        `<tr><td><span class="swatch stage-${escapeHtml(st.stage.replace(/ /g, '-'))}"></span>${escapeHtml(st.stage)}</td><td class="num">${fmt(st.ms)} ms</td><td>${escapeHtml(
          steps
            .filter(([k]) => (GAP_STEPS[k]?.stage ?? 'other') === st.stage)
            .map(([k, v]) => `${GAP_STEPS[k]?.label ?? k} ${fmt(v)} ms`)
            .join('; '),
        )}</td></tr>`,
    )
    .join('');
  const facts = [
    `frozen at ${record.freezeAt}`,
    `switched at ${record.switchAt}`,
    record.predictedDrainMs !== undefined ? `drain predicted ${record.predictedDrainMs} ms` : '',
    record.drainMs !== undefined ? `measured ${record.drainMs} ms` : '',
    record.drainBytes !== undefined ? `${formatBytes(record.drainBytes)} drained` : '',
    record.sessionsEnded !== undefined ? `${record.sessionsEnded} session(s) ended` : '',
    record.sequencesSynced !== undefined ? `${record.sequencesSynced} sequence(s) set` : '',
  ].filter(Boolean);
  return `<h3>${escapeHtml(title)}: ${escapeHtml(total)} ms</h3>${svg}<table class="gap-steps"><thead><tr><th>stage</th><th>took</th><th>steps</th></tr></thead><tbody>${stageRows}</tbody></table><p>${escapeHtml(facts.join(', '))}.</p>`;
}

function writeGapSection(s: MigrationState): string {
  if (!s.cutover?.freezeAt && !s.rollback?.freezeAt)
    return notYet(
      'No cutover yet: the write gap is measured when writes are frozen on the source and the application is switched.',
    );
  const parts = [];
  if (s.cutover)
    parts.push(
      writeGapOf(s.cutover, 'Cutover write gap', 'its steps were not recorded (a state from an older pgferry).'),
    );
  if (s.rollback)
    parts.push(
      writeGapOf(
        s.rollback,
        'Rollback write gap',
        "pgferry records the total of a rollback's write gap, not its steps.",
      ),
    );
  return parts.join('');
}

// ---------------------------------------------------------------------------------------------------
// Verification

function verifyTable(v: VerifyResult | undefined, title: string, missing: string): string {
  if (!v) return `<h3>${escapeHtml(title)}</h3>${notYet(missing)}`;
  const outcome = v.outcome ?? (v.ok ? 'ok' : 'mismatch');
  const word = outcome === 'ok' ? 'OK' : outcome === 'mismatch' ? 'MISMATCH' : 'NOT VERIFIED';
  const behind =
    outcome === 'behind' ? ` (${v.replication} ${formatBytes(v.behindBytes ?? 0)} behind; never a mismatch)` : '';
  const rows = v.tables
    .map((t) => {
      const o = t.outcome ?? (t.mismatchedRanges.length ? 'mismatch' : 'ok');
      const detail = [
        ...t.mismatchedRanges.map((r) => `range ${r}`),
        ...(t.mismatchedKeys ?? []).map((k) => `key ${k}`),
        ...(t.unsettledRanges ?? []).map((r) => `unsettled ${r}`),
        // Rows of the parts that differed at a read (changes arriving between the sides' reads, or a real difference).
        ...(t.rowsFollowed ? [`${t.rowsFollowed} row read(s) compared one by one`] : []),
      ];
      return `<tr class="outcome-${escapeHtml(o)}"><td>${escapeHtml(t.table)}</td><td class="num">${t.sourceRows}</td><td class="num">${t.targetRows}</td><td class="num">${t.chunks}</td><td>${escapeHtml(o)}</td><td>${detail.length ? `<ul>${detail.map((d) => `<li>${escapeHtml(d)}</li>`).join('')}</ul>` : '—'}</td></tr>`;
    })
    .join('');
  return `<h3>${escapeHtml(title)}: <span class="outcome-${escapeHtml(outcome)}">${word}</span>${escapeHtml(behind)}</h3><p>${v.tables.length} table(s) at ${escapeHtml(v.at)}, ${duration(v.ms)}; source read at ${v.sourceMiBps} MiB/s, target at ${v.targetMiBps} MiB/s.</p><table class="verify" data-stage="${escapeHtml(v.stage)}"><thead><tr><th>table</th><th>source rows</th><th>target rows</th><th>chunks</th><th>outcome</th><th>details</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function verifySection(s: MigrationState): string {
  return (
    verifyTable(
      s.verifyBeforeSwitch,
      'Before the switch',
      'Not verified before a switch yet: every table is compared before a cutover freezes anything.',
    ) +
    verifyTable(
      s.verify,
      'After the switch',
      s.cutover?.switchAt
        ? 'The switch happened but the verification after it has not finished: `pgferry resume` runs it.'
        : 'No verification after a switch: the application has not been switched to the target.',
    )
  );
}

// ---------------------------------------------------------------------------------------------------

const STYLE = `body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:820px;color:#1b1f24;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;width:100%;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:3px 6px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}td ul{margin:0;padding-left:1.1em}
.empty{color:#57606a;font-style:italic}.note{color:#57606a;font-size:.9em;margin:.2em 0}
.chart text{font-size:11px;fill:#57606a}.grid{stroke:#eaeef2}.frame{fill:none;stroke:#d0d7de}
.phase-bar{fill:#0969da}.phase-bar.open{fill:#bf8700}.phase-bar.failed{fill:#cf222e}
.series{fill:none;stroke-width:2}.lag-bytes,.key-bytes{stroke:#0969da;color:#0969da}.lag-seconds,.key-seconds{stroke:#cf222e;color:#cf222e}
.sampling-gap{fill:#f6f8fa}.phases tr.outcome-failed td{color:#cf222e}.dot-bytes{fill:#0969da}.dot-seconds{fill:#cf222e}.chart text.axis-bytes{fill:#0969da}.chart text.axis-seconds{fill:#cf222e}
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:-1px}
.stage-freeze{fill:#8250df;background:#8250df}.stage-drain{fill:#0969da;background:#0969da}.stage-sequences{fill:#1a7f37;background:#1a7f37}
.stage-reverse-replication{fill:#bf8700;background:#bf8700}.stage-unfreeze{fill:#57606a;background:#57606a}.stage-switch{fill:#cf222e;background:#cf222e}.stage-other{fill:#8c959f;background:#8c959f}
.outcome-mismatch{color:#cf222e;font-weight:600}.outcome-behind{color:#9a6700}.attention{color:#cf222e}`;

/** The last lag figure with its time and age (when the report was made), the gate while waiting, the cutover window. */
function lastLagRows(s: MigrationState, now: Date): (readonly [string, string])[] {
  const rows: (readonly [string, string])[] = [];
  const last = s.lag?.at(-1);
  if (last && !s.cutover?.switchAt)
    rows.push([
      'last lag',
      `${formatBytes(last.bytes)} (${last.bytes} bytes), ${(last.ms / 1000).toFixed(2)} s behind, ${sampledText(last.at, now)}`,
    ]);
  const wait = s.status === 'awaiting-cutover' ? s.approvalWait : undefined;
  if (wait?.gateOpen === false)
    rows.push(['gate while waiting', `limits no longer hold: ${(wait.reasons ?? []).join('; ')}`]);
  if (wait?.sampleError) rows.push(['gate while waiting', `no fresh sample: ${wait.sampleError}`]);
  const window = s.cutover?.switchAt ? undefined : cutoverWindowText(s, now);
  if (window) rows.push(['cutover window', window]);
  return rows;
}

/**
 * The report's HTML. Every string of the state is redacted again (it should hold no password: it is
 * stored redacted) and escaped: table names, summaries and messages come from users' databases.
 */
export function renderHtmlReport(state: MigrationState, generatedAt = new Date(), lagSeries?: LagSample[]): string {
  const s = JSON.parse(redactedJson(state)) as MigrationState;
  const header = [
    ['status', s.status],
    ['phase', PHASE_TITLES[s.phase] ?? s.phase],
    ['source', `${s.config.sourceUrl}${s.sourceVersion ? ` (PostgreSQL ${s.sourceVersion})` : ''}`],
    ['target', `${s.config.targetUrl}${s.targetVersion ? ` (PostgreSQL ${s.targetVersion})` : ''}`],
    ['strategy', `${s.config.strategy}, ${s.config.jobs} jobs, cutover ${s.config.cutover}`],
    ['created', s.createdAt],
    ['last update', s.updatedAt],
    ...(s.rowsCopied !== undefined
      ? [['copied', `${s.rowsCopied} rows, ${formatBytes(s.bytesCopied ?? 0)} sent`] as const]
      : []),
    ...lastLagRows(s, generatedAt),
  ]
    .map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`)
    .join('');
  const failure = s.failure
    ? `<p class="attention">Failed in ${escapeHtml(s.failure.phase ?? '?')}: ${escapeHtml(s.failure.message)}${s.failure.hint ? `<br>hint: ${escapeHtml(slackHint(s, s.failure.hint))}` : ''}</p>`
    : '';
  const warnings = s.warnings?.length
    ? `<h2>Warnings</h2><ul>${s.warnings.map((w) => `<li>${escapeHtml(w)}</li>`).join('')}</ul>`
    : '';
  const events = s.events?.length
    ? `<h2>Events</h2><table class="events"><tbody>${s.events.map((e) => `<tr><td>${escapeHtml(e.at)}</td><td>${escapeHtml(e.message)}</td></tr>`).join('')}</tbody></table>`
    : '';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgferry migration ${escapeHtml(s.id)}</title><style>${STYLE}</style></head>
<body>
<h1>pgferry migration ${escapeHtml(s.id)}</h1>
<table class="summary"><tbody>${header}</tbody></table>${failure}
<section id="timeline"><h2>Phase timeline</h2>${timelineSection(s)}</section>
<section id="lag"><h2>Replication lag</h2>${lagSection(s, lagSeries)}</section>
<section id="write-gap"><h2>Write gap</h2>${writeGapSection(s)}</section>
<section id="verification"><h2>Verification</h2>${verifySection(s)}</section>
${warnings}${events}
<p class="note">Generated by pgferry at ${escapeHtml(generatedAt.toISOString())}.</p>
</body></html>
`;
}

/**
 * Written owner-only, as the state (it names the servers), through a new file renamed over the old:
 * an existing file's own mode would otherwise stay, and a reader never sees half a page.
 */
export function writeHtmlReport(path: string, state: MigrationState, lagSeries?: LagSample[]): void {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, renderHtmlReport(state, new Date(), lagSeries), { mode: 0o600, flag: 'wx' });
    renameSync(tmp, path);
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** `pgferry report ID` or `pgferry report --id ID`: exactly one of them. */
export function reportId(positionals: string[], id: string | undefined, command = 'report'): string {
  const usage = command === 'report' ? 'pgferry report ID --html FILE' : `pgferry ${command} ID`;
  if (positionals.length > 1)
    throw new InvalidInputError(
      `pgferry ${command} takes one migration id (got ${positionals.length}: ${positionals.join(' ')})`,
      {
        field: 'ID',
        hint: usage,
      },
    );
  if (positionals.length && id !== undefined && positionals[0] !== id)
    throw new InvalidInputError(`two different ids: ${positionals[0]} and --id ${id}; give one`, { field: '--id' });
  const chosen = positionals[0] ?? id;
  if (!chosen)
    throw new InvalidInputError(`pgferry ${command} needs the migration id`, {
      field: 'ID',
      hint: `${usage} (pgferry status lists the ids)`,
    });
  return chosen;
}
