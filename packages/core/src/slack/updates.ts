/**
 * Which Slack call a pgferry bus event leads to: the first event of a migration posts its message,
 * every later one updates that message in place (chat.update on the stored channel and ts), so a
 * channel holds one message per migration, not a stream. Lag samples come every fraction of a second
 * during catch-up: they refresh the message at most every `LAG_REFRESH_MS` (Slack rate-limits
 * chat.update to about one a second per channel); the other events always do.
 */
import type { MigrationState } from '../model';
import type { PgferryEvent } from '../ports';
import { migrationMessage, type SlackMessage } from './message';

export const LAG_REFRESH_MS = 30_000;

/** Where a migration's message lives, kept with the migration once posted. */
export interface SlackMessageRef {
  channel: string;
  /** Slack's message timestamp, its id within the channel. */
  ts: string;
  /** When the message was last written (ISO), for the lag samples' throttle. */
  updatedAt: string;
}

export type SlackCall =
  | { method: 'chat.postMessage'; body: SlackMessage & { channel: string } }
  | { method: 'chat.update'; body: SlackMessage & { channel: string; ts: string } };

/**
 * The call for `event`, or undefined when there is none: an event of another migration (never shown
 * in this one's message), or a lag sample within the refresh interval of the last update.
 */
export function slackCallFor(
  event: PgferryEvent,
  state: MigrationState,
  target: { channel: string; message?: SlackMessageRef; now?: number },
): SlackCall | undefined {
  if (event.detail.migrationId !== state.id) return undefined;
  const message = migrationMessage(state);
  const ref = target.message;
  if (!ref) return { method: 'chat.postMessage', body: { channel: target.channel, ...message } };
  if (event.type === 'Replication Lag Sampled') {
    const since = (target.now ?? Date.now()) - Date.parse(ref.updatedAt);
    if (since < LAG_REFRESH_MS) return undefined;
  }
  return { method: 'chat.update', body: { channel: ref.channel, ts: ref.ts, ...message } };
}
