import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import puppeteer, { type Browser } from 'puppeteer-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../packages/cli/src/main';
import { lagChart, niceCeiling, renderHtmlReport, writeHtmlReport } from '../packages/cli/src/report';
import { advance } from '../packages/cli/src/runner';
import { type LagSample, type MigrationState, parseMigrationConfig } from '../packages/core/src/index';
import { migrationFixture, newMigration, sleep } from './harness/migration';

const CHROMIUM = '/usr/bin/chromium';

/** Run in the page (browser code, so a string: the project's types have no DOM): what is drawn, as data. */
const PAGE_PROBE = `(() => {
      const q = (sel) => [...document.querySelectorAll(sel)];
      const series = (name) => {
        const path = document.querySelector(\`svg.lag path[data-series="\${name}"]\`);
        const box = path?.getBBox();
        return {
          commands: (path?.getAttribute('d')?.match(/[ML]/g) ?? []).length,
          moves: (path?.getAttribute('d')?.match(/M/g) ?? []).length,
          d: path?.getAttribute('d') ?? '',
          length: path?.getTotalLength() ?? 0,
          stroke: path ? getComputedStyle(path).stroke : '',
          inside: !!box && box.x >= 0 && box.y >= 0 && box.x + box.width <= 760 && box.y + box.height <= 300,
        };
      };
      const rows = (stage) =>
        q(\`table.verify[data-stage="\${stage}"] tbody tr\`).map((tr) => [
          tr.cells[0]?.textContent,
          tr.cells[4]?.textContent,
        ]);
      const lagSvg = document.querySelector('svg.lag')?.getBoundingClientRect();
      return {
        bytes: series('bytes'),
        seconds: series('seconds'),
        dots: q('svg.lag circle').length,
        axisLabels: q('svg.lag text').map((t) => t.textContent),
        lagSize: lagSvg ? [lagSvg.width, lagSvg.height] : [0, 0],
        phaseBars: q('svg.timeline rect.phase-bar').map((r) => [
          r.dataset.phase,
          r.getBBox().width > 0,
        ]),
        attempts: q('svg.timeline rect.phase-bar').map((r) => [
          r.dataset.phase,
          Number(r.dataset.attempt),
          r.dataset.outcome,
          r.getBBox().x,
        ]),
        phaseRows: q('table.phases tbody tr').map((tr) => [tr.cells[0]?.textContent, tr.cells[4]?.textContent]),
        gaps: q('svg.lag rect.sampling-gap').map((r) => [r.getBBox().x, r.getBBox().width]),
        dotXs: q('svg.lag circle.dot-bytes').map((c) => Number(c.getAttribute('cx'))),
        gapStages: q('svg.gap rect.gap-step').map((r) => r.dataset.stage),
        gapTableStages: q('table.gap-steps tbody tr').map((tr) => tr.cells[0]?.textContent),
        before: rows('before-switch'),
        after: rows('after-switch'),
        images: q('img').length,
        scripts: q('script').length,
        title: document.title,
      };
    })()`;

interface Series {
  commands: number;
  moves: number;
  d: string;
  length: number;
  stroke: string;
  inside: boolean;
}

interface Drawn {
  bytes: Series;
  seconds: Series;
  dots: number;
  axisLabels: (string | null)[];
  lagSize: number[];
  phaseBars: [string, boolean][];
  attempts: [string, number, string, number][];
  phaseRows: (string | null)[][];
  gaps: [number, number][];
  dotXs: number[];
  gapStages: string[];
  gapTableStages: (string | null)[];
  before: (string | null)[][];
  after: (string | null)[][];
  images: number;
  scripts: number;
  title: string;
}

function state(overrides: Partial<MigrationState> = {}): MigrationState {
  return {
    id: 'm1',
    version: 3,
    createdAt: '2026-12-06T11:00:00.000Z',
    updatedAt: '2026-12-06T11:00:05.000Z',
    status: 'running',
    phase: 'assess',
    config: parseMigrationConfig({
      id: 'm1',
      sourceUrl: 'postgres://app:***@old-db:5432/shop',
      targetUrl: 'postgres://admin:***@new-db:5432/shop',
    }),
    phases: {},
    events: [],
    ...overrides,
  };
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'pgferry-report-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('the HTML report, rendered', () => {
  it('says in each section that a young migration has not got that far', () => {
    const html = renderHtmlReport(state({ phases: { assess: { startedAt: '2026-12-06T11:00:01.000Z' } } }));
    expect(html).toContain('No lag sample recorded yet');
    expect(html).toContain('No cutover yet: the write gap is measured');
    expect(html).toContain('Not verified before a switch yet');
    expect(html).toContain('No verification after a switch');
    expect(html).toContain('not ended (running or interrupted)');
  });

  it('escapes user data and redacts a password that reached the state', () => {
    const evil = '<img src=x onerror=alert(1)>';
    const html = renderHtmlReport(
      state({
        warnings: [`table "${evil}" & friends`],
        failure: { name: 'X', message: 'could not connect to postgres://app:s3cret@old-db/shop', phase: 'assess' },
        verifyBeforeSwitch: {
          ok: true,
          outcome: 'ok',
          stage: 'before-switch',
          replication: 'replication',
          tables: [
            { table: `public."${evil}"`, sourceRows: 1, targetRows: 1, chunks: 1, mismatchedRanges: [] },
            { table: 'public.busy', sourceRows: 9, targetRows: 9, chunks: 1, mismatchedRanges: [], rowsFollowed: 412 },
          ],
          at: '2026-12-06T11:00:04.000Z',
          ms: 10,
          sourceBytes: 0,
          targetBytes: 0,
          sourceMiBps: 0,
          targetMiBps: 0,
        },
      }),
    );
    expect(html).not.toContain('<img');
    expect(html).toContain('&lt;img src=x onerror=alert(1)&gt;');
    expect(html).toContain('&amp; friends');
    expect(html).not.toContain('s3cret');
    expect(html).toContain('postgres://app:***@old-db/shop');
    expect(html).toContain('<li>412 row read(s) compared one by one</li>');
  });

  it('sums the write gap steps into its six stages, and says that a rollback records no steps', () => {
    const html = renderHtmlReport(
      state({
        status: 'rolled-back',
        cutover: {
          freezeAt: '2026-12-06T11:00:01.000Z',
          switchAt: '2026-12-06T11:00:01.200Z',
          writeGapMs: 200,
          stepsMs: {
            freeze: 10,
            prepared: 5,
            drain: 40,
            sequences: 20,
            writesAfterFreeze: 2,
            stopForward: 3,
            lastLook: 4,
            reverseSlot: 30,
            reverseSubscription: 6,
            record: 50,
            switch: 30,
          },
        },
        rollback: { freezeAt: '2026-12-06T11:10:00.000Z', switchAt: '2026-12-06T11:10:00.090Z', writeGapMs: 90 },
      }),
    );
    const stage = (name: string) =>
      new RegExp(`${name}</td><td class="num">([^<]+)</td>`).exec(html.replace(/<span[^>]*><\/span>/g, ''))?.[1];
    expect([
      stage('freeze'),
      stage('drain'),
      stage('sequences'),
      stage('reverse replication'),
      stage('unfreeze'),
      stage('switch'),
    ]).toEqual(['15 ms', '42 ms', '20 ms', '43 ms', '50 ms', '30 ms']);
    expect(html).toContain('Cutover write gap: 200 ms');
    expect(html).toContain('Rollback write gap: 90 ms');
    expect(html).toContain('pgferry records the total of a rollback&#39;s write gap, not its steps.');
  });

  it('draws both lag series with one point per sample, on axes with units', () => {
    const svg = lagChart([
      { at: '2026-12-06T11:00:00.000Z', bytes: 3 * 1024 ** 2, ms: 2500 },
      { at: '2026-12-06T11:00:01.000Z', bytes: 1024 ** 2, ms: 900 },
      { at: '2026-12-06T11:00:02.000Z', bytes: 0, ms: 0 },
    ]);
    const bytes = /class="series lag-bytes"[^>]* d="([^"]+)"/.exec(svg)?.[1];
    const seconds = /class="series lag-seconds"[^>]* d="([^"]+)"/.exec(svg)?.[1];
    expect(bytes?.match(/[ML]/g)).toHaveLength(3);
    expect(seconds?.match(/[ML]/g)).toHaveLength(3);
    expect(svg).toContain('lag (MiB)');
    expect(svg).toContain('lag (s)');
    // The axes end on round figures above the peaks: 5 MiB and 5 s, ticks at quarters.
    expect(svg).toMatch(/>5<\/text>/);
    expect(svg).toMatch(/>1\.25<\/text>/);
    // Under a second of lag, the time axis counts milliseconds.
    expect(lagChart([{ at: '2026-12-06T11:00:00.000Z', bytes: 10, ms: 8 }])).toContain('lag (ms)');
    expect([niceCeiling(3), niceCeiling(0.9), niceCeiling(2.5), niceCeiling(0), niceCeiling(10)]).toEqual([
      5, 1, 5, 1, 10,
    ]);
  });

  it('says when the last lag was sampled and how long before the report, the gate while waiting, and the cutover window', () => {
    const html = renderHtmlReport(
      state({
        status: 'awaiting-cutover',
        phase: 'catch-up',
        config: { ...state().config, cutoverWindow: { start: '04:00', end: '05:00', timezone: 'UTC' } },
        lag: [{ at: '2026-12-07T03:10:00.000Z', bytes: 2048, ms: 300 }],
        approvalWait: { since: '2026-12-07T01:00:00.000Z', gateOpen: false, reasons: ['lag 900 MiB over the limit'] },
      }),
      new Date('2026-12-07T03:10:05.000Z'),
    );
    expect(html).toContain(
      '<tr><th>last lag</th><td>2 KiB (2048 bytes), 0.30 s behind, sampled 03:10:00 UTC, 5 s ago</td></tr>',
    );
    expect(html).toContain(
      '<tr><th>gate while waiting</th><td>limits no longer hold: lag 900 MiB over the limit</td></tr>',
    );
    expect(html).toContain('<tr><th>cutover window</th><td>closed; opens 04:00:00 UTC (04:00–05:00 UTC)</td></tr>');
  });

  it('writes the file readable by its owner only, even over a file that was not', () => {
    const file = join(dir, 'open.html');
    writeFileSync(file, 'old', { mode: 0o644 });
    writeHtmlReport(file, state());
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(file, 'utf8')).toMatch(/^<!doctype html>/);
  });

  it('is a command of the built pgferry, with its help', () => {
    const bin = resolve(__dirname, '../packages/cli/bin/pgferry.mjs');
    expect(execFileSync(process.execPath, [bin, '--help'], { encoding: 'utf8' })).toMatch(/^ {2}report {4}Write one/m);
    expect(execFileSync(process.execPath, [bin, 'report', '--help'], { encoding: 'utf8' })).toMatch(
      /^Usage: pgferry report ID --html FILE/,
    );
  });

  it('pgferry report refuses a missing --html, an unknown id and two ids, naming what is wrong', async () => {
    const stateDir = join(dir, 'state');
    const write = process.stderr.write;
    const errors: string[] = [];
    process.stderr.write = ((chunk: string) => errors.push(String(chunk)) > 0) as typeof process.stderr.write;
    try {
      expect(await main(['report', 'm1', '--state-dir', stateDir])).toBe(2);
      expect(await main(['report', 'nosuch', '--html', join(dir, 'x.html'), '--state-dir', stateDir])).toBe(2);
      expect(await main(['report', 'a1', 'b2', '--html', join(dir, 'x.html'), '--state-dir', stateDir])).toBe(2);
      expect(await main(['status', 'm1', '--state-dir', stateDir])).toBe(2);
    } finally {
      process.stderr.write = write;
    }
    expect(errors.join('')).toMatch(/--html is required/);
    expect(errors.join('')).toMatch(/nosuch/);
    expect(errors.join('')).toMatch(/takes one migration id \(got 2: a1 b2\)/);
  });
});

describe('the HTML report of a real migration, in headless Chromium', () => {
  const fixture = migrationFixture();
  let browser: Browser | undefined;
  afterEach(async () => {
    await browser?.close();
    browser = undefined;
  });

  it('breaks the lag lines where sampling stopped, and shows every attempt of a phase in order, a failed one too', async () => {
    const at = (ms: number) => new Date(Date.parse('2026-12-06T10:00:00.000Z') + ms).toISOString();
    // Five minutes sampled every 5 s, a stop of 20 hours (killed, resumed the next day), two minutes more.
    const series: LagSample[] = [
      ...Array.from({ length: 60 }, (_, i) => ({ at: at(i * 5000), bytes: 1000 + i * 10, ms: 200 + i })),
      ...Array.from({ length: 24 }, (_, i) => ({ at: at(20 * 3_600_000 + i * 5000), bytes: 500 + i, ms: 100 + i })),
    ];
    const h = 3_600_000;
    const s = state({
      status: 'cut-over',
      phase: 'verify',
      updatedAt: at(21 * h),
      lag: series.slice(-10),
      phaseHistory: [
        { phase: 'assess', startedAt: at(-60_000), endedAt: at(-50_000), outcome: 'done', summary: 'no blockers' },
        { phase: 'catch-up', startedAt: at(0), endedAt: at(290_000), outcome: 'done', summary: 'caught up' },
        {
          phase: 'cutover',
          startedAt: at(291_000),
          endedAt: at(292_000),
          outcome: 'failed',
          summary: 'DrainTimeoutError: the target did not confirm 0/3000 within the drain budget of 300 ms',
        },
        { phase: 'catch-up', startedAt: at(293_000), outcome: 'interrupted' },
        { phase: 'catch-up', startedAt: at(20 * h), endedAt: at(20 * h + 115_000), outcome: 'done', summary: 'ok' },
        {
          phase: 'cutover',
          startedAt: at(20 * h + 116_000),
          endedAt: at(20 * h + 117_000),
          outcome: 'done',
          summary: 'gap 90 ms',
        },
      ],
    });
    const file = join(dir, 'history.html');
    writeFileSync(file, renderHtmlReport(s, new Date(), series));
    browser = await puppeteer.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], headless: true });
    const page = await browser.newPage();
    await page.goto(pathToFileURL(file).href, { waitUntil: 'load' });
    const drawn = (await page.evaluate(PAGE_PROBE)) as Drawn;

    // Every point drawn, as two segments: a new M where sampling stopped, nothing drawn across the stop.
    for (const line of [drawn.bytes, drawn.seconds]) {
      expect(line.commands).toBe(series.length);
      expect(line.moves).toBe(2);
      const xs = [...line.d.matchAll(/([ML])([\d.]+) /g)].map(([, c, x]) => [c, Number(x)] as const);
      expect(xs[60]?.[0]).toBe('M');
      expect(xs.filter(([c]) => c === 'M').map(([, x]) => x)).toEqual([xs[0]![1], xs[60]![1]]);
    }
    expect(drawn.dotXs).toHaveLength(series.length);
    // The stop is shaded between the last point before it and the first after it.
    expect(drawn.gaps).toHaveLength(1);
    const [[gapX, gapW]] = drawn.gaps as [[number, number]];
    expect(gapX).toBeCloseTo(drawn.dotXs[59]!, 0);
    expect(gapX + gapW).toBeCloseTo(drawn.dotXs[60]!, 0);

    // The timeline: one bar and one row per attempt, in order, numbered, each with its outcome.
    expect(drawn.attempts.map(([p, n, o]) => [p, n, o])).toEqual([
      ['assess', 1, 'done'],
      ['catch-up', 1, 'done'],
      ['cutover', 1, 'failed'],
      ['catch-up', 2, 'interrupted'],
      ['catch-up', 3, 'done'],
      ['cutover', 2, 'done'],
    ]);
    const xs = drawn.attempts.map(([, , , x]) => x);
    expect([...xs].sort((a, b) => a - b)).toEqual(xs);
    expect(drawn.phaseRows).toEqual([
      ['Assess source', 'done'],
      ['Catch up (1st)', 'done'],
      ['Cut over (1st)', 'failed'],
      ['Catch up (2nd)', 'interrupted (its process stopped before the phase ended)'],
      ['Catch up (3rd)', 'done'],
      ['Cut over (2nd)', 'done'],
    ]);
  });

  it('draws the timeline, both lag series, the write gap and both verification tables, loading nothing', async () => {
    const { pair, rt } = await fixture.setup('report', 500);
    // A table name is user data: it must come out as text, never as markup.
    const evil = '<img src=x onerror=alert(1)>';
    await pair.source(
      `CREATE TABLE "${evil}" (id int PRIMARY KEY, v text); INSERT INTO "${evil}" SELECT g, 'x' FROM generate_series(1, 10) g`,
    );
    const writer = fixture.writer(rt);
    await sleep(200);
    const m = await newMigration(rt, pair, { cutover: 'auto' });
    const s = await advance(rt, m.id, { cutover: 'auto' });
    await writer.stop();
    expect(s.status).toBe('cut-over');
    expect(s.cutover?.writeGapMs).toBeGreaterThan(0);
    expect(s.verifyBeforeSwitch?.tables.length).toBeGreaterThan(3);
    expect(s.verify?.tables.length).toBe(s.verifyBeforeSwitch?.tables.length);
    // The report draws the whole series the store kept (the state keeps only its last samples).
    const series = await rt.store.lagSeries!(m.id);
    expect(series.length).toBeGreaterThanOrEqual(s.lag?.length ?? 0);
    expect(series.slice(-(s.lag?.length ?? 0))).toEqual(s.lag);
    const samples = series.length;
    expect(samples).toBeGreaterThanOrEqual(2);

    // Through the command, as a user runs it.
    const file = join(rt.dir, 'report.html');
    const write = process.stdout.write;
    process.stdout.write = (() => true) as typeof process.stdout.write;
    let code: number;
    try {
      code = await main(['report', m.id, '--html', file, '--state-dir', rt.stateDir]);
    } finally {
      process.stdout.write = write;
    }
    expect(code).toBe(0);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const html = readFileSync(file, 'utf8');
    expect(html).not.toContain(pair.sourceServer.password);
    expect(html).not.toContain(pair.targetServer.password);

    browser = await puppeteer.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], headless: true });
    const page = await browser.newPage();
    const requests: string[] = [];
    const problems: string[] = [];
    page.on('request', (r) => requests.push(r.url()));
    page.on('console', (msg) => {
      if (msg.type() === 'error' || msg.type() === 'warn') problems.push(msg.text());
    });
    page.on('pageerror', (err) => problems.push(String(err)));
    page.on('requestfailed', (r) => problems.push(`failed: ${r.url()}`));
    const url = pathToFileURL(file).href;
    await page.goto(url, { waitUntil: 'load' });

    const drawn = (await page.evaluate(PAGE_PROBE)) as Drawn;

    // The lag chart: both series, a point per sample, inside the plot, drawn in their colours.
    expect(drawn.bytes.commands).toBe(samples);
    expect(drawn.seconds.commands).toBe(samples);
    expect(drawn.bytes.inside && drawn.seconds.inside).toBe(true);
    expect(drawn.bytes.length).toBeGreaterThan(0);
    expect(drawn.seconds.length).toBeGreaterThan(0);
    expect(drawn.bytes.stroke).not.toBe(drawn.seconds.stroke);
    expect(drawn.dots).toBe(2 * samples);
    expect(drawn.axisLabels).toContain('time (UTC)');
    expect(drawn.axisLabels.some((t) => /^lag \((ms|s)\)$/.test(t ?? ''))).toBe(true);
    expect(drawn.axisLabels.some((t) => /^lag \((B|KiB|MiB|GiB)\)$/.test(t ?? ''))).toBe(true);
    expect(drawn.lagSize[0]).toBeGreaterThan(0);
    expect(drawn.lagSize[1]).toBeGreaterThan(0);
    // Every attempt of every phase that ran has its bar, in the order they ran (catch-up twice: before
    // and after the verification that precedes the cutover).
    expect(drawn.phaseBars.map(([p]) => p)).toEqual(s.phaseHistory?.map((a) => a.phase));
    expect(drawn.phaseBars.filter(([p]) => p === 'catch-up').length).toBeGreaterThanOrEqual(2);
    expect(drawn.phaseBars.every(([, visible]) => visible)).toBe(true);
    // The write gap, by stage, as recorded.
    expect(drawn.gapTableStages).toEqual(['freeze', 'drain', 'sequences', 'reverse replication', 'unfreeze', 'switch']);
    expect(drawn.gapStages).toEqual(expect.arrayContaining(['freeze', 'drain', 'switch']));
    // Both verification tables, a row per table with its outcome; the hostile name as text.
    const expected = (v: typeof s.verify) => v?.tables.map((t) => [t.table, t.outcome ?? 'ok']);
    expect(drawn.before).toEqual(expected(s.verifyBeforeSwitch));
    expect(drawn.after).toEqual(expected(s.verify));
    expect(drawn.before.map(([t]) => t)).toContain(`public.${evil}`);
    expect(drawn.images).toBe(0);
    expect(drawn.scripts).toBe(0);
    expect(drawn.title).toBe(`pgferry migration ${m.id}`);
    // Nothing but the page itself was requested, and nothing complained.
    expect(requests).toEqual([url]);
    expect(problems).toEqual([]);
  });
});
