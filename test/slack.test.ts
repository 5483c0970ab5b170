import { describe, expect, it } from 'vitest';
import {
  actionStep,
  authorizeForMigration,
  authorizeSlack,
  CUTOVER_REJECTED_ERROR,
  failureAction,
  GATE_BLOCK_ID,
  interactionRequest,
  LAG_REFRESH_MS,
  MemoryReplayCache,
  type MigrationAction,
  type MigrationState,
  migrationMessage,
  NO_FACTS,
  parseMigrationConfig,
  parseSlackCommand,
  requiredSlackEnv,
  rollbackExecutionInput,
  SLACK_ACTIONS,
  SlackRequestRejectedError,
  slackCallFor,
  slackEnv,
  slackSignature,
  slashCommandRequest,
  verifiedSlackForm,
  verifySlackRequest,
  WORKFLOW_TASKS,
  workflowDefinition,
} from '../packages/core/src/index';

// Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack).
const DOC_SECRET = '8f742231b10e8888abcd99yyyzzz85a5';
const DOC_TIMESTAMP = '1531420618';
const DOC_BODY =
  'token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c';
const DOC_SIGNATURE = 'v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503';

const SECRET = 'test-signing-secret-0123456789abcdef';
const NOW = Date.parse('2026-12-06T12:00:00Z');

function signed(body: string, at = NOW, secret = SECRET) {
  const timestamp = String(Math.floor(at / 1000));
  return { rawBody: body, timestamp, signature: slackSignature(secret, timestamp, body) };
}

async function rejection(p: Promise<unknown>): Promise<SlackRequestRejectedError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SlackRequestRejectedError);
  return err as SlackRequestRejectedError;
}

describe('Slack request signatures', () => {
  it("computes Slack's documented example signature", () => {
    expect(slackSignature(DOC_SECRET, DOC_TIMESTAMP, DOC_BODY)).toBe(DOC_SIGNATURE);
  });

  it('accepts a valid request once and gives its form fields', async () => {
    const cache = new MemoryReplayCache(() => NOW);
    const body = 'command=%2Fpgferry&text=status&user_id=U024BE7LH&channel_id=C024BE91L';
    const form = await verifiedSlackForm(signed(body), { signingSecret: SECRET, replayCache: cache, now: NOW });
    expect(form.get('text')).toBe('status');
    expect(form.get('user_id')).toBe('U024BE7LH');
  });

  it('accepts the raw bytes as received (a Buffer body)', async () => {
    const body = 'text=approve+m1&user_id=U1';
    const req = { ...signed(body), rawBody: Buffer.from(body) };
    await expect(
      verifySlackRequest(req, { signingSecret: SECRET, replayCache: new MemoryReplayCache(), now: NOW }),
    ).resolves.toBeUndefined();
  });

  it('refuses a tampered body, a tampered timestamp and another secret, before parsing anything', async () => {
    const body = 'text=status&user_id=U024BE7LH';
    const good = signed(body);
    const opts = () => ({ signingSecret: SECRET, replayCache: new MemoryReplayCache(), now: NOW });
    const tampered = await rejection(
      verifiedSlackForm({ ...good, rawBody: 'text=approve+m1&user_id=U024BE7LH' }, opts()),
    );
    expect(tampered.reason).toBe('invalid');
    const moved = await rejection(
      verifySlackRequest({ ...good, timestamp: String(Number(good.timestamp) - 1) }, opts()),
    );
    expect(moved.reason).toBe('invalid');
    const other = await rejection(verifySlackRequest(signed(body, NOW, 'another-secret'), opts()));
    expect(other.reason).toBe('invalid');
    // One flipped hex digit: same length, compared in constant time, refused.
    const last = good.signature.at(-1) === '0' ? '1' : '0';
    const flipped = await rejection(
      verifySlackRequest({ ...good, signature: good.signature.slice(0, -1) + last }, opts()),
    );
    expect(flipped.reason).toBe('invalid');
    expect(flipped.message).not.toContain(good.signature);
  });

  it('refuses a request signed more than 5 minutes ago or ahead, even with a valid signature', async () => {
    const opts = { signingSecret: SECRET, replayCache: new MemoryReplayCache(), now: NOW };
    const stale = await rejection(verifySlackRequest(signed('text=help', NOW - 301_000), opts));
    expect(stale.reason).toBe('stale');
    expect(stale.message).toContain('301 s ago');
    const ahead = await rejection(verifySlackRequest(signed('text=help', NOW + 301_000), opts));
    expect(ahead.reason).toBe('stale');
    // Inside the window it passes.
    await expect(verifySlackRequest(signed('text=help', NOW - 299_000), opts)).resolves.toBeUndefined();
  });

  it('refuses the second copy of a replayed request, and remembers only valid signatures', async () => {
    const cache = new MemoryReplayCache(() => NOW);
    const opts = { signingSecret: SECRET, replayCache: cache, now: NOW };
    const req = signed('text=approve+m1&user_id=U024BE7LH');
    await verifySlackRequest(req, opts);
    expect((await rejection(verifySlackRequest(req, opts))).reason).toBe('replayed');
    // A forged request with the same signature later does not poison anything: it is invalid first.
    const forged = { ...req, rawBody: 'text=abort+m1' };
    expect((await rejection(verifySlackRequest(forged, opts))).reason).toBe('invalid');
  });

  it('refuses missing and malformed headers and a missing signing secret', async () => {
    const opts = { signingSecret: SECRET, replayCache: new MemoryReplayCache(), now: NOW };
    const good = signed('text=help');
    expect((await rejection(verifySlackRequest({ ...good, signature: undefined }, opts))).reason).toBe('missing');
    expect((await rejection(verifySlackRequest({ ...good, timestamp: undefined }, opts))).reason).toBe('missing');
    expect((await rejection(verifySlackRequest({ ...good, timestamp: '12ab' }, opts))).reason).toBe('malformed');
    expect((await rejection(verifySlackRequest({ ...good, signature: 'v1=abc' }, opts))).reason).toBe('malformed');
    const noSecret = await rejection(verifySlackRequest(good, { ...opts, signingSecret: '' }));
    expect(noSecret.reason).toBe('missing');
  });

  it('forgets a remembered signature after its time to live', async () => {
    let now = NOW;
    const cache = new MemoryReplayCache(() => now);
    expect(await cache.remember('a', 600)).toBe(true);
    expect(await cache.remember('a', 600)).toBe(false);
    now += 601_000;
    expect(await cache.remember('a', 600)).toBe(true);
  });
});

describe('the /pgferry command parser', () => {
  it.each([
    ['start shop-to-rds', { kind: 'start', plan: 'shop-to-rds' }],
    ['status', { kind: 'status' }],
    ['  status   m2612061200_ab12 ', { kind: 'status', id: 'm2612061200_ab12' }],
    ['approve m1', { kind: 'approve', id: 'm1' }],
    ['ROLLBACK m1', { kind: 'rollback', id: 'm1' }],
    ['abort\u00a0m1', { kind: 'abort', id: 'm1' }],
    ['resume m1', { kind: 'resume', id: 'm1' }],
    ['help', { kind: 'help' }],
    ['', { kind: 'help' }],
  ])('reads "%s"', (text, command) => {
    expect(parseSlackCommand(text)).toEqual({ ok: true, command });
  });

  it.each([
    ['deploy m1', /unknown command `deploy`/],
    ['approve', /`approve` needs a migration id: `\/pgferry approve <id>`/],
    ['resume', /`resume` needs a migration id: `\/pgferry resume <id>`/],
    ['start', /`start` needs a plan name: `\/pgferry start <plan>`/],
    ['rollback m1 m2', /`rollback` takes one migration id, got 2: `m1` `m2`/],
    ['status M1;DROP', /`M1;DROP` is not a migration id: a migration id is 1-24 characters/],
    ['start Shop_Plan', /`Shop_Plan` is not a plan name: a plan name is 1-48 characters/],
    ['help me', /`help` takes nothing/],
  ])('says what is wrong with "%s" and shows the usage', (text, message) => {
    const parsed = parseSlackCommand(text);
    expect(parsed.ok).toBe(false);
    if (parsed.ok) return;
    expect(parsed.message).toMatch(message);
    expect(parsed.message).toContain('Usage:\n`/pgferry start <plan>`');
  });
});

describe('Slack authorization', () => {
  const access = { users: ['U0APPROVER'], channels: ['C0DBATEAM'] };

  it('lets configured users act anywhere and anyone act in a configured channel', () => {
    expect(authorizeSlack({ userId: 'U0APPROVER', channelId: 'C0RANDOM' }, access, 'approve')).toEqual({
      allowed: true,
      by: 'user',
    });
    expect(authorizeSlack({ userId: 'U0SOMEONE', channelId: 'C0DBATEAM' }, access, 'rollback')).toEqual({
      allowed: true,
      by: 'channel',
    });
  });

  it.each(['start', 'status', 'approve', 'rollback', 'abort', 'resume'] as const)(
    'refuses %s to an unauthorized user politely, saying nothing changed',
    (command) => {
      const result = authorizeSlack({ userId: 'U0INTRUDER', channelId: 'C0RANDOM' }, access, command);
      expect(result.allowed).toBe(false);
      if (result.allowed) return;
      expect(result.message).toMatch(/^Sorry <@U0INTRUDER>, you are not allowed to .* so nothing was changed\./);
    },
  );

  it('lets anyone read the help', () => {
    expect(authorizeSlack({ userId: 'U0INTRUDER' }, { users: [], channels: [] }, 'help').allowed).toBe(true);
  });

  it('escapes a user id that is not one, so it cannot mention a channel', () => {
    const result = authorizeSlack({ userId: 'x> <!channel' }, access, 'abort');
    expect(!result.allowed && result.message).toContain('<@x&gt; &lt;!channel>');
  });
});

function state(overrides: Partial<MigrationState> = {}): MigrationState {
  const config = parseMigrationConfig({
    id: 'm1',
    sourceUrl: 'postgres://app:***@old-db:5432/shop',
    targetUrl: 'postgres://admin:***@new-db:5432/shop',
  });
  return {
    id: 'm1',
    version: 7,
    createdAt: '2026-12-06T11:00:00.000Z',
    updatedAt: '2026-12-06T11:30:00.000Z',
    status: 'running',
    phase: 'bulk-load',
    config,
    phases: {},
    events: [],
    ...overrides,
  };
}

const texts = (m: ReturnType<typeof migrationMessage>) => JSON.stringify(m.blocks);
const actions = (m: ReturnType<typeof migrationMessage>) => m.blocks.filter((b) => b.type === 'actions');

describe('the Slack message of a migration', () => {
  it('shows phase, lag, rows copied and the predicted drain, without buttons while it runs', () => {
    const m = migrationMessage(
      state({
        phase: 'catch-up',
        rowsCopied: 1234567,
        bytesCopied: 512 * 1024 ** 2,
        lag: [{ at: '2026-12-06T11:29:59.000Z', bytes: 3 * 1024 ** 2, ms: 1500, appliedBps: 2 * 1024 ** 2 }],
      }),
      new Date('2026-12-06T11:30:02.000Z'),
    );
    expect(m.text).toBe('pgferry migration m1: running (Catch up)');
    expect(m.blocks[0]).toEqual({
      type: 'header',
      text: { type: 'plain_text', text: 'pgferry migration m1', emoji: false },
    });
    const section = m.blocks[1];
    expect(section?.type === 'section' && section.fields?.map((f) => f.text)).toEqual([
      '*Phase*\nCatch up',
      '*Status*\nrunning',
      // Its time, and its age as the reader's Slack client renders it (3 s when the message was written).
      '*Lag*\n3.0 MiB · 1.5 s\nsampled 11:29:59 UTC (<!date^1796556599^{ago}|3 s ago>)',
      '*Rows copied*\n1,234,567 (512.0 MiB)',
      // 3 MiB at 2 MiB/s applied.
      '*Predicted drain*\n1500 ms (budget 1000 ms)',
    ]);
    expect(actions(m)).toEqual([]);
  });

  it('names the execution that runs the migration, to find in the Step Functions console, and says when it continued or resumed', () => {
    const now = new Date('2026-12-07T03:10:00.000Z');
    const executionField = (execution: MigrationState['execution']) => {
      const section = migrationMessage(state({ phase: 'catch-up', execution }), now).blocks[1];
      return section?.type === 'section' ? section.fields?.find((f) => f.text.startsWith('*Execution*'))?.text : 'none';
    };
    expect(executionField({ name: 'm1', number: 0, since: '2026-12-07T01:00:00.000Z' })).toBe(
      '*Execution*\n`m1` since 01:00:00 UTC',
    );
    expect(executionField({ name: 'm1-continued-2', number: 2, since: '2026-12-07T02:00:00.000Z' })).toBe(
      '*Execution*\n`m1-continued-2` since 02:00:00 UTC\ncontinued: the long catch-up goes on in a new execution',
    );
    expect(executionField({ name: 'm1-resumed-3', number: 3, since: '2026-12-06T23:00:00.000Z' })).toBe(
      '*Execution*\n`m1-resumed-3` since 2026-12-06 23:00:00 UTC\nresumed after a stop',
    );
    // Not recorded yet (before "Assess source"): no field rather than a guess.
    expect(executionField(undefined)).toBeUndefined();
  });

  it('says what is not known yet', () => {
    const fields = JSON.stringify(migrationMessage(state()).blocks[1]);
    expect(fields).toContain('*Lag*\\nnot measured yet');
    expect(fields).toContain('*Rows copied*\\nnot copied yet');
    expect(fields).toContain('*Predicted drain*\\nnot predicted yet');
  });

  it('at the gate, says when the lag was sampled, when the gate’s limits no longer hold, and the cutover window', () => {
    const now = new Date('2026-12-07T03:12:00.000Z');
    const waiting = state({
      status: 'awaiting-cutover',
      phase: 'catch-up',
      config: {
        ...state().config,
        cutover: 'auto',
        cutoverWindow: { start: '04:00', end: '05:00', timezone: 'UTC' },
      },
      lag: [{ at: '2026-12-07T03:10:00.000Z', bytes: 900 * 1024 ** 2, ms: 42_000 }],
      approvalWait: {
        since: '2026-12-07T01:00:00.000Z',
        sampledAt: '2026-12-07T03:10:00.000Z',
        gateOpen: false,
        reasons: ['lag 900.0 MiB over the limit of 64.0 MiB'],
      },
    });
    const shown = texts(migrationMessage(waiting, now));
    expect(shown).toContain('sampled 03:10:00 UTC (<!date^1796613000^{ago}|2 min ago>)');
    expect(shown).toContain("The gate's limits no longer hold");
    expect(shown).toContain('lag 900.0 MiB over the limit of 64.0 MiB');
    expect(shown).toContain('*Cutover window*\\nclosed; opens 04:00:00 UTC (04:00–05:00 UTC)');
    const open = texts(
      migrationMessage(
        { ...waiting, approvalWait: { since: '2026-12-07T01:00:00.000Z', gateOpen: true } },
        new Date('2026-12-07T04:30:00.000Z'),
      ),
    );
    expect(open).toContain('*Cutover window*\\nopen now (04:00–05:00 UTC)');
    expect(open).not.toContain('no longer hold');
    const blind = texts(
      migrationMessage(
        {
          ...waiting,
          approvalWait: { since: waiting.approvalWait!.since, sampleError: 'cannot connect to the source' },
        },
        now,
      ),
    );
    expect(blind).toContain('No fresh lag sample:* cannot connect to the source (the lag shown is older)');
    // What only the cutover needs, named at the gate: an approval would wait on it.
    const grant = 'the source role (--source) may not create the reverse subscription';
    expect(texts(migrationMessage({ ...waiting, beforeCutover: [grant] }, now))).toContain(
      `Before the cutover can switch, put right* (an approval waits on it): ${grant}`,
    );
    expect(texts(migrationMessage(waiting, now))).not.toContain('Before the cutover can switch');
  });

  it('at the gate, carries Approve cutover and Roll back buttons with the migration id and nothing else', () => {
    const m = migrationMessage(state({ status: 'awaiting-cutover', phase: 'catch-up' }));
    const [gate] = actions(m);
    expect(gate?.type === 'actions' && gate.block_id).toBe(GATE_BLOCK_ID);
    const buttons = gate?.type === 'actions' ? gate.elements : [];
    expect(buttons.map((b) => [b.action_id, b.text.text, b.value, b.style])).toEqual([
      [SLACK_ACTIONS.approve, 'Approve cutover', 'm1', 'primary'],
      [SLACK_ACTIONS.rollback, 'Roll back', 'm1', 'danger'],
    ]);
    expect(buttons.every((b) => b.confirm)).toBe(true);
  });

  it('after the switch shows the write gap and verification and offers only Roll back', () => {
    const m = migrationMessage(
      state({
        status: 'cut-over',
        phase: 'verify',
        cutover: {
          freezeAt: '2026-12-06T11:20:00.000Z',
          switchAt: '2026-12-06T11:20:00.042Z',
          writeGapMs: 42,
          predictedDrainMs: 12,
          drainMs: 9,
        },
        verify: {
          ok: false,
          outcome: 'mismatch',
          stage: 'after-switch',
          replication: 'reverse replication',
          tables: [
            { table: 'public.orders', sourceRows: 10, targetRows: 10, chunks: 1, mismatchedRanges: [] },
            { table: 'public.<!channel>', sourceRows: 3, targetRows: 2, chunks: 1, mismatchedRanges: ['id 1..3'] },
          ],
          at: '2026-12-06T11:21:00.000Z',
          ms: 100,
          sourceBytes: 0,
          targetBytes: 0,
          sourceMiBps: 1,
          targetMiBps: 1,
        },
      }),
    );
    const all = texts(m);
    expect(all).toContain('*Write gap*\\n42 ms');
    expect(all).toContain('*Predicted drain*\\n12 ms predicted, measured 9 ms');
    expect(all).toContain('*Verify after the switch*\\nMISMATCH, 2 tables: public.&lt;!channel&gt;');
    expect(all).not.toContain('<!channel>');
    const buttons = actions(m).flatMap((b) => (b.type === 'actions' ? b.elements : []));
    expect(buttons.map((b) => b.action_id)).toEqual([SLACK_ACTIONS.rollback]);
  });

  it("names Slack's own commands in the hint of a plan's migration where Slack takes them, pgferry status where not", () => {
    const ID = 'm1';
    const hint = `fix the rows, then \`pgferry resume --id ${ID}\` validates it again (or \`pgferry rollback --id ${ID}\`); \`pgferry cutover --id ${ID} --max-drain-ms 2000\` later`;
    const shown = (overrides: Partial<MigrationState>) =>
      texts(
        migrationMessage(
          state({
            planName: 'shop-to-rds',
            status: 'running',
            phase: 'catch-up',
            failure: { name: 'AfterLoadFailedError', message: 'could not be validated', phase: 'catch-up', hint },
            ...overrides,
          }),
        ),
      );
    const status = `\`pgferry status ${ID} --stage S\` (it names what is left and what ends it)`;
    // Stopped resumable before the switch: resume and abort are Slack's; approve only at the gate.
    expect(shown({})).toContain(
      `fix the rows, then \`/pgferry resume ${ID}\` validates it again (or \`/pgferry abort ${ID}\`); ${status} later`,
    );
    expect(shown({ status: 'awaiting-cutover' })).toContain(`; \`/pgferry approve ${ID}\` later`);
    // Switched: the way back is /pgferry rollback.
    expect(
      shown({ status: 'cut-over', cutover: { switchAt: '2026-12-06T20:00:00Z' } as MigrationState['cutover'] }),
    ).toContain(`(or \`/pgferry rollback ${ID}\`)`);
    // Half switched, or failed: Slack refuses every one of them, so none is named.
    for (const over of [
      { cutover: { switchStartedAt: '2026-12-06T20:00:00Z' } as MigrationState['cutover'] },
      { status: 'failed' as const },
    ]) {
      const text = shown(over);
      expect(text).not.toContain('/pgferry');
      expect(text).toContain(`fix the rows, then ${status} validates it again`);
    }
    // Not started from a plan: Slack cannot act on it; the hint as written.
    expect(shown({ planName: undefined })).toContain(`then \`pgferry resume --id ${ID}\` validates it again`);
  });

  it('shows a failure, escaped and without a password', () => {
    const m = migrationMessage(
      state({
        status: 'failed',
        failure: {
          name: 'ConnectionFailedError',
          message: 'could not connect to postgres://app:s3cret@old-db/shop',
          phase: 'assess',
          hint: 'check <the> host',
        },
      }),
    );
    const all = texts(m);
    expect(all).toContain('*Failed in assess:* could not connect to postgres://app:***@old-db/shop');
    expect(all).toContain('check &lt;the&gt; host');
    expect(all).not.toContain('s3cret');
    expect(actions(m)).toEqual([]);
  });
});

describe('the Slack endpoints: signature, then command or click, then who', () => {
  const access = { users: ['U0APPROVER'], channels: [] };
  const options = () => ({ signingSecret: SECRET, replayCache: new MemoryReplayCache(() => NOW), access, now: NOW });
  const form = (fields: Record<string, string>) => new URLSearchParams(fields).toString();

  it('acknowledges an allowed command and hands it on to be done', async () => {
    const out = await slashCommandRequest(
      signed(form({ text: 'approve m1', user_id: 'U0APPROVER', channel_id: 'C0OPS' })),
      options(),
    );
    expect(out).toEqual({
      status: 200,
      reply: { response_type: 'ephemeral', text: 'Approving the cutover of `m1`…' },
      actor: { userId: 'U0APPROVER', channelId: 'C0OPS' },
      act: { kind: 'approve', id: 'm1' },
    });
  });

  it('refuses an unauthorized user politely and hands nothing on', async () => {
    const out = await slashCommandRequest(signed(form({ text: 'abort m1', user_id: 'U0INTRUDER' })), options());
    expect(out.status).toBe(200);
    expect(out.status === 200 && out.act).toBeUndefined();
    expect(out.status === 200 && out.reply.text).toMatch(/^Sorry <@U0INTRUDER>.*nothing was changed/);
  });

  it('answers a malformed command with what is wrong and the usage, and help with the usage only', async () => {
    const bad = await slashCommandRequest(signed(form({ text: 'approve', user_id: 'U0APPROVER' })), options());
    expect(bad.status === 200 && bad.act).toBeUndefined();
    expect(bad.status === 200 && bad.reply.text).toMatch(/^`approve` needs a migration id.*\n\nUsage:\n/s);
    const help = await slashCommandRequest(signed(form({ text: 'help', user_id: 'U0ANYONE' })), options());
    expect(help.status === 200 && help.act).toBeUndefined();
    expect(help.status === 200 && help.reply.text).toMatch(/^Usage:\n`\/pgferry start <plan>`/);
  });

  it('answers 401 to a tampered or replayed request, reading nothing of it', async () => {
    const opts = options();
    const req = signed(form({ text: 'status', user_id: 'U0APPROVER' }));
    expect(
      await slashCommandRequest({ ...req, rawBody: form({ text: 'abort m1', user_id: 'U0APPROVER' }) }, opts),
    ).toEqual({
      status: 401,
      reason: 'invalid',
    });
    expect((await slashCommandRequest(req, opts)).status).toBe(200);
    expect(await slashCommandRequest(req, opts)).toEqual({ status: 401, reason: 'replayed' });
  });

  const click = (actionId: string, value: string, user = 'U0APPROVER') =>
    signed(
      form({
        payload: JSON.stringify({
          type: 'block_actions',
          user: { id: user },
          channel: { id: 'C0OPS' },
          actions: [{ action_id: actionId, block_id: GATE_BLOCK_ID, value }],
        }),
      }),
    );

  it("turns an approver's click on a gate button into its action, once", async () => {
    const opts = options();
    const req = click(SLACK_ACTIONS.approve, 'm1');
    const out = await interactionRequest(req, opts);
    expect(out.status === 200 && out.act).toEqual({ action: 'approve', migrationId: 'm1' });
    expect(await interactionRequest(req, opts)).toEqual({ status: 401, reason: 'replayed' });
    const back = await interactionRequest(click(SLACK_ACTIONS.rollback, 'm1'), opts);
    expect(back.status === 200 && back.act).toEqual({ action: 'rollback', migrationId: 'm1' });
  });

  it('ignores another button, a value that is not a migration id, and a click by someone not allowed', async () => {
    for (const req of [
      click('other_button', 'm1'),
      click(SLACK_ACTIONS.approve, 'm1; drop'),
      click(SLACK_ACTIONS.approve, 'm1', 'U0INTRUDER'),
    ]) {
      const out = await interactionRequest(req, options());
      expect(out.status).toBe(200);
      expect(out.status === 200 && out.act).toBeUndefined();
      expect(out.status === 200 && out.reply.text).toMatch(/nothing was changed/);
    }
    const notJson = await interactionRequest(signed(form({ payload: '{' })), options());
    expect(notJson.status === 200 && notJson.act).toBeUndefined();
  });
});

describe('Slack message updates, driven by pgferry events', () => {
  const ref = { channel: 'C0OPS', ts: '1733486400.000100', updatedAt: '2026-12-06T11:59:50.000Z' };
  const phaseChanged = { type: 'Migration Phase Changed' as const, detail: { migrationId: 'm1', phase: 'catch-up' } };

  it('posts the first message, then updates that same message in place at every phase change', () => {
    const s = state({ phase: 'catch-up', status: 'running' });
    const first = slackCallFor(phaseChanged, s, { channel: 'C0OPS' });
    expect(first?.method).toBe('chat.postMessage');
    expect(first?.body).toMatchObject({ channel: 'C0OPS', text: 'pgferry migration m1: running (Catch up)' });
    const gate = slackCallFor(phaseChanged, state({ phase: 'catch-up', status: 'awaiting-cutover' }), {
      channel: 'C0OPS',
      message: ref,
      now: NOW,
    });
    expect(gate?.method).toBe('chat.update');
    expect(gate?.body).toMatchObject({ channel: 'C0OPS', ts: ref.ts });
    // The update carries the gate's buttons, from the state the event announced.
    expect(JSON.stringify(gate?.body.blocks)).toContain(SLACK_ACTIONS.approve);
    for (const type of ['Cutover Completed', 'Migration Failed'] as const)
      expect(
        slackCallFor({ type, detail: { migrationId: 'm1' } }, s, { channel: 'C0OPS', message: ref, now: NOW })?.method,
      ).toBe('chat.update');
  });

  it('refreshes on lag samples at most every LAG_REFRESH_MS', () => {
    const lag = { type: 'Replication Lag Sampled' as const, detail: { migrationId: 'm1', bytes: 10, ms: 5 } };
    const s = state({ phase: 'catch-up' });
    const updated = Date.parse(ref.updatedAt);
    expect(slackCallFor(lag, s, { channel: 'C0OPS', message: ref, now: updated + LAG_REFRESH_MS - 1 })).toBeUndefined();
    expect(slackCallFor(lag, s, { channel: 'C0OPS', message: ref, now: updated + LAG_REFRESH_MS })?.method).toBe(
      'chat.update',
    );
  });

  it("never shows another migration's event in this message", () => {
    expect(
      slackCallFor({ ...phaseChanged, detail: { migrationId: 'm2' } }, state(), {
        channel: 'C0OPS',
        message: ref,
        now: NOW,
      }),
    ).toBeUndefined();
  });
});

describe('what approve, rollback and abort do to a migration', () => {
  const gate = state({ status: 'awaiting-cutover', phase: 'catch-up' });
  const loading = state({ status: 'running', phase: 'bulk-load' });
  const cutOver = state({
    status: 'cut-over',
    phase: 'verify',
    cutover: { switchStartedAt: '2026-12-06T12:00:00Z', switchAt: '2026-12-06T12:00:01Z' },
  });
  const switching = state({
    status: 'running',
    phase: 'cutover',
    cutover: { switchStartedAt: '2026-12-06T12:00:00Z' },
  });
  const step = (action: MigrationAction, s: MigrationState) => actionStep(action, s).step;

  it('approves only at the gate; rolls back at the gate through its token, after the switch with an execution; aborts before the switch', () => {
    expect(step('approve', gate)).toBe('approve');
    expect(step('approve', loading)).toBe('refuse');
    expect(step('rollback', gate)).toBe('reject-at-gate');
    expect(step('rollback', cutOver)).toBe('stop-then-roll-back');
    expect(step('rollback', loading)).toBe('refuse');
    expect(step('abort', loading)).toBe('stop-then-roll-back');
    expect(step('abort', gate)).toBe('stop-then-roll-back');
    expect(step('abort', cutOver)).toBe('refuse');
  });

  it('touches nothing stopped half way through the switch, cleaned up or finished, and says what to do instead', () => {
    for (const action of ['approve', 'rollback', 'abort'] as const) {
      expect(actionStep(action, switching)).toEqual({
        step: 'refuse',
        message: expect.stringContaining('`pgferry status m1`'),
      });
      for (const status of ['rolled-back', 'cleaned-up', 'failed'] as const)
        expect(step(action, state({ status }))).toBe('refuse');
    }
    expect(actionStep('rollback', { ...cutOver, phase: 'cleanup' })).toEqual({
      step: 'refuse',
      message: expect.stringContaining('no way back'),
    });
    expect(actionStep('rollback', loading)).toEqual({
      step: 'refuse',
      message: expect.stringContaining('`/pgferry abort m1`'),
    });
  });

  it("lets only the plan's approvers act on a migration of a plan; a migration without one is the configured users'", () => {
    const planned = { id: 'm1', planName: 'shop' };
    const plan = { approvers: { users: ['U0APPROVER'], channels: ['C0OPS'] } };
    expect(authorizeForMigration({ userId: 'U0APPROVER' }, planned, plan, 'approve')).toEqual({ allowed: true });
    expect(authorizeForMigration({ userId: 'U0ANYONE', channelId: 'C0OPS' }, planned, plan, 'abort')).toEqual({
      allowed: true,
    });
    const refused = authorizeForMigration({ userId: 'U0OTHER', channelId: 'C0ELSE' }, planned, plan, 'rollback');
    expect(refused).toEqual({ allowed: false, message: expect.stringContaining('approvers of plan `shop`') });
    // It says which list is missing the person, and that the plan's approvers are read at the click.
    const planMessage = refused.allowed ? '' : refused.message;
    expect(planMessage).toMatch(/^Sorry <@U0OTHER>, you are not an approver of plan `shop`, so nothing was changed\./);
    expect(planMessage).toContain('pgferry reads them from the plan when the click or command arrives');
    expect(planMessage).not.toContain('PGFERRY_SLACK_USERS');
    const global = authorizeSlack({ userId: 'U0OTHER' }, { users: [], channels: [] }, 'approve');
    const globalMessage = global.allowed ? '' : global.message;
    expect(globalMessage).toContain('(PGFERRY_SLACK_USERS, PGFERRY_SLACK_CHANNELS)');
    expect(globalMessage).not.toContain('approvers of the plan');
    expect(authorizeForMigration({ userId: 'U0APPROVER' }, planned, undefined, 'approve')).toEqual({
      allowed: false,
      message: expect.stringContaining('no longer exists'),
    });
    expect(authorizeForMigration({ userId: 'U0OTHER' }, { id: 'm1' }, undefined, 'approve')).toEqual({ allowed: true });
  });

  it('goes to "Roll back" with the policy rolling back when the gate is failed with CutoverRejectedError', () => {
    expect(failureAction(CUTOVER_REJECTED_ERROR, 'catch-up', NO_FACTS)).toBe('roll-back');
    // The state machine's Catch on the gate: the first entry whose errors match sends it on.
    const states = (
      workflowDefinition() as { States: Record<string, { Catch?: { ErrorEquals: string[]; Next: string }[] }> }
    ).States;
    const route = states[WORKFLOW_TASKS.awaitApproval.state]!.Catch!.find(
      (c) => c.ErrorEquals.includes(CUTOVER_REJECTED_ERROR) || c.ErrorEquals.includes('States.ALL'),
    );
    expect(route?.Next).toBe(WORKFLOW_TASKS.rollback.state);
    expect(rollbackExecutionInput('m1')).toMatchObject({ migrationId: 'm1', action: 'rollback' });
  });
});

describe('the Slack environment', () => {
  it('reads the allowed users and channels and names a malformed one', () => {
    expect(slackEnv({ PGFERRY_SLACK_USERS: 'U024BE7LH, W0ENTERPR', PGFERRY_SLACK_CHANNELS: '' }).access).toEqual({
      users: ['U024BE7LH', 'W0ENTERPR'],
      channels: [],
    });
    expect(() => slackEnv({ PGFERRY_SLACK_CHANNELS: '#ops' })).toThrow(
      /PGFERRY_SLACK_CHANNELS: "#ops" is not a Slack channel id/,
    );
    expect(() => requiredSlackEnv(slackEnv({}), 'signingSecretArn')).toThrow(
      /PGFERRY_SLACK_SIGNING_SECRET_ARN not set/,
    );
  });
});
