/**
 * The one Slack message per migration, as Block Kit: posted once and updated in place (chat.update)
 * at every phase change. A pure function of the state, so the message shown is the state, nothing
 * remembered elsewhere. Buttons carry the migration id only: whoever clicks is checked against the
 * approvers when the click arrives, and the task token stays in the store.
 */
import { agoText, utcClock } from '../approval-wait';
import { cutoverWindowOpensAt, describeCutoverWindow } from '../cutover-window';
import { formatBytes } from '../format';
import { predictDrainMs } from '../lag';
import { type MigrationState, PHASE_TITLES, type VerifyResult } from '../model';
import { executionOrigin } from '../workflow/history';
import { escapeMrkdwn } from './text';

export interface SlackText {
  type: 'plain_text' | 'mrkdwn';
  text: string;
  emoji?: boolean;
}

export interface SlackButton {
  type: 'button';
  action_id: string;
  text: SlackText;
  value: string;
  style?: 'primary' | 'danger';
  confirm?: { title: SlackText; text: SlackText; confirm: SlackText; deny: SlackText; style?: 'primary' | 'danger' };
}

export type SlackBlock =
  | { type: 'header'; text: SlackText }
  | { type: 'section'; text?: SlackText; fields?: SlackText[] }
  | { type: 'actions'; block_id: string; elements: SlackButton[] }
  | { type: 'context'; elements: SlackText[] }
  | { type: 'divider' };

export interface SlackMessage {
  /** The notification's text (and what screen readers and old clients show). */
  text: string;
  blocks: SlackBlock[];
}

/** The `action_id`s of the buttons: the interactivity endpoint routes on them. */
export const SLACK_ACTIONS = {
  approve: 'pgferry_approve_cutover',
  rollback: 'pgferry_rollback',
} as const;

export const GATE_BLOCK_ID = 'pgferry_gate';

const plain = (text: string): SlackText => ({ type: 'plain_text', text: text.slice(0, 150), emoji: false });
const md = (text: string): SlackText => ({ type: 'mrkdwn', text: text.slice(0, 3000) });
const field = (label: string, value: string): SlackText => md(`*${label}*\n${value}`);

function lagText(s: MigrationState, now: Date): string {
  const last = s.lag?.at(-1);
  if (!last) return 'not measured yet';
  if (s.cutover?.switchAt) return 'replication reversed (cut over)';
  const epoch = Math.floor(Date.parse(last.at) / 1000);
  // {ago} is rendered by the reader's Slack client, so it stays true as the message sits there.
  const when = `sampled ${utcClock(last.at, now)} (<!date^${Number.isFinite(epoch) ? epoch : 0}^{ago}|${agoText(last.at, now)}>)`;
  return `${formatBytes(last.bytes)} · ${(last.ms / 1000).toFixed(1)} s\n${when}`;
}

/** At the gate in AWS: what the last sample taken while waiting found, when it is news to the approver. */
function waitingText(s: MigrationState): string | undefined {
  const w = s.status === 'awaiting-cutover' ? s.approvalWait : undefined;
  if (!w) return undefined;
  if (w.sampleError) return `:warning: *No fresh lag sample:* ${escapeMrkdwn(w.sampleError)} (the lag shown is older)`;
  // (Closed only on what the cutover needs: its own block says what.)
  if (w.gateOpen === false && (w.reasons?.length ?? 0) > 0)
    return `:warning: *The gate's limits no longer hold* (the cutover would wait or refuse to freeze): ${escapeMrkdwn((w.reasons ?? []).slice(0, 3).join('; '))}`;
  return undefined;
}

/** The plan's cutover window: open now, or when it next opens. */
export function cutoverWindowText(s: Pick<MigrationState, 'config'>, now: Date): string | undefined {
  const window = s.config.cutoverWindow;
  if (!window) return undefined;
  const opens = cutoverWindowOpensAt(window, now);
  const what = describeCutoverWindow(window);
  return opens ? `closed; opens ${utcClock(opens.toISOString(), now)} (${what})` : `open now (${what})`;
}

/** The cutover's own prediction once it froze; before that, the last sample's bytes at its apply rate. */
function drainText(s: MigrationState): string {
  if (s.cutover?.predictedDrainMs !== undefined) {
    const measured = s.cutover.drainMs !== undefined ? `, measured ${s.cutover.drainMs} ms` : '';
    return `${s.cutover.predictedDrainMs} ms predicted${measured}`;
  }
  const last = s.lag?.at(-1);
  if (!last || last.appliedBps === undefined) return 'not predicted yet';
  return `${predictDrainMs(last.bytes, last.appliedBps)} ms (budget ${s.config.maxDrainMs} ms)`;
}

function verifyText(v: VerifyResult): string {
  const outcome = v.outcome ?? (v.ok ? 'ok' : 'mismatch');
  const different = v.tables.filter((t) => (t.outcome ?? (t.mismatchedRanges.length ? 'mismatch' : 'ok')) !== 'ok');
  const word = outcome === 'ok' ? 'OK' : outcome === 'mismatch' ? 'MISMATCH' : 'not verified (behind)';
  const named = different.length
    ? `: ${different
        .slice(0, 5)
        .map((t) => escapeMrkdwn(t.table))
        .join(', ')}${different.length > 5 ? ` and ${different.length - 5} more` : ''}`
    : '';
  return `${word}, ${v.tables.length} tables${named}`;
}

/**
 * The execution that runs the migration now (or ran it last), as "Assess source" recorded it: its name
 * to find in the Step Functions console, and whether it continued a long catch-up or resumed a stop.
 */
function executionText(e: NonNullable<MigrationState['execution']>, now: Date): string {
  const origin = e.number > 0 ? executionOrigin(e.name) : 'first';
  const how =
    origin === 'continued'
      ? '\ncontinued: the long catch-up goes on in a new execution'
      : origin === 'resumed'
        ? '\nresumed after a stop'
        : '';
  return `\`${escapeMrkdwn(e.name)}\` since ${utcClock(e.since, now)}${how}`;
}

const STATUS_WORDS: Record<MigrationState['status'], string> = {
  running: 'running',
  'awaiting-cutover': 'caught up, waiting for cutover approval',
  'cut-over': 'cut over: the application uses the target',
  completed: 'completed',
  failed: 'FAILED',
  'rolled-back': 'rolled back to the source',
  'cleaned-up': 'cleaned up',
};

function rollbackButton(id: string): SlackButton {
  return {
    type: 'button',
    action_id: SLACK_ACTIONS.rollback,
    text: plain('Roll back'),
    value: id,
    style: 'danger',
    confirm: {
      title: plain('Roll back?'),
      text: md(
        `Roll migration \`${escapeMrkdwn(id)}\` back: before the cutover this removes what pgferry made; after it, the application is switched back to the source, losing nothing.`,
      ),
      confirm: plain('Roll back'),
      deny: plain('Cancel'),
      style: 'danger',
    },
  };
}

/**
 * A failure's hint as Slack shows it. Hints name the CLI's commands (`pgferry resume --id X`); a
 * migration started from a plan is resumed, approved and undone in Slack with its own, so those are
 * named instead where Slack would take them now: resume → `/pgferry resume` (a migration that goes on),
 * cutover → `/pgferry approve` (at the gate), rollback → `/pgferry abort` before the switch (which
 * removes what it made, as the CLI's rollback then does) and `/pgferry rollback` after it. Any other
 * (a failed or half-switched migration, clean-up, unfreeze) is replaced by `pgferry status --stage`,
 * which names what is left and what ends it. A migration not started from a plan: as written.
 */
export function slackHint(
  s: Pick<MigrationState, 'id' | 'planName' | 'cutover' | 'status' | 'phase'>,
  hint: string,
): string {
  if (!s.planName) return hint;
  const switched = !!s.cutover?.switchAt;
  const switching = !!s.cutover?.switchStartedAt && !switched;
  const live = !switching && ['running', 'awaiting-cutover', 'cut-over'].includes(s.status);
  const takes: Record<string, boolean> = {
    resume: live && s.phase !== 'rollback',
    approve: live && s.status === 'awaiting-cutover',
    abort: live && !switched && s.status !== 'cut-over',
    rollback: live && switched && s.phase !== 'cleanup',
  };
  return hint.replace(/`pgferry (resume|cutover|rollback|cleanup|unfreeze)\b[^`]*`/g, (_, verb: string) => {
    const slack = { resume: 'resume', cutover: 'approve', rollback: switched ? 'rollback' : 'abort' }[verb] ?? '';
    return takes[slack]
      ? `\`/pgferry ${slack} ${s.id}\``
      : `\`pgferry status ${s.id} --stage S\` (it names what is left and what ends it)`;
  });
}

/** The message for one migration. At the gate: "Approve cutover" and "Roll back"; after the switch: "Roll back". */
export function migrationMessage(s: MigrationState, now: Date = new Date()): SlackMessage {
  const id = escapeMrkdwn(s.id);
  const phase = PHASE_TITLES[s.phase] ?? s.phase;
  const fields = [
    field('Phase', escapeMrkdwn(phase)),
    field('Status', escapeMrkdwn(STATUS_WORDS[s.status] ?? s.status)),
    field('Lag', lagText(s, now)),
    field(
      'Rows copied',
      s.rowsCopied === undefined
        ? 'not copied yet'
        : `${s.rowsCopied.toLocaleString('en-US')} (${formatBytes(s.bytesCopied ?? 0)})`,
    ),
    field('Predicted drain', drainText(s)),
  ];
  if (s.execution) fields.push(field('Execution', executionText(s.execution, now)));
  if (s.cutover?.switchAt && s.cutover.writeGapMs !== undefined)
    fields.push(field('Write gap', `${s.cutover.writeGapMs} ms`));
  const window = s.cutover?.switchAt ? undefined : cutoverWindowText(s, now);
  if (window) fields.push(field('Cutover window', escapeMrkdwn(window)));
  if (s.verifyBeforeSwitch) fields.push(field('Verify before the switch', verifyText(s.verifyBeforeSwitch)));
  if (s.verify) fields.push(field('Verify after the switch', verifyText(s.verify)));
  const blocks: SlackBlock[] = [
    { type: 'header', text: plain(`pgferry migration ${s.id}`) },
    { type: 'section', fields: fields.slice(0, 10) },
  ];
  if (s.failure)
    blocks.push({
      type: 'section',
      text: md(
        `:x: *Failed in ${escapeMrkdwn(s.failure.phase ?? phase)}:* ${escapeMrkdwn(s.failure.message)}${s.failure.hint ? `\n_${escapeMrkdwn(slackHint(s, s.failure.hint))}_` : ''}`,
      ),
    });
  const waiting = waitingText(s);
  if (waiting) blocks.push({ type: 'section', text: md(waiting) });
  // Caught up, but the cutover's gate would hold on these until a person puts them right.
  if (s.status === 'awaiting-cutover' && s.beforeCutover?.length)
    blocks.push({
      type: 'section',
      text: md(
        `:warning: *Before the cutover can switch, put right* (an approval waits on it): ${escapeMrkdwn(s.beforeCutover.slice(0, 3).join('; '))}`,
      ),
    });
  if (s.status === 'awaiting-cutover')
    blocks.push({
      type: 'actions',
      block_id: GATE_BLOCK_ID,
      elements: [
        {
          type: 'button',
          action_id: SLACK_ACTIONS.approve,
          text: plain('Approve cutover'),
          value: s.id,
          style: 'primary',
          confirm: {
            title: plain('Approve the cutover?'),
            text: md(
              `Writes to the source of \`${id}\` are frozen for the write gap (budget ${s.config.maxDrainMs} ms for the drain), then the application is switched to the target.`,
            ),
            confirm: plain('Cut over'),
            deny: plain('Cancel'),
            style: 'primary',
          },
        },
        rollbackButton(s.id),
      ],
    });
  else if (s.status === 'cut-over')
    blocks.push({ type: 'actions', block_id: GATE_BLOCK_ID, elements: [rollbackButton(s.id)] });
  const epoch = Math.floor(Date.parse(s.updatedAt) / 1000);
  blocks.push({
    type: 'context',
    elements: [
      md(
        `Updated <!date^${Number.isFinite(epoch) ? epoch : 0}^{date_short_pretty} {time_secs}|${escapeMrkdwn(s.updatedAt)}> · \`pgferry status ${id}\``,
      ),
    ],
  });
  return { text: `pgferry migration ${s.id}: ${STATUS_WORDS[s.status] ?? s.status} (${phase})`, blocks };
}
