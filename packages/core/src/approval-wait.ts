/**
 * The wait for a person's cutover approval in AWS, and how old a lag figure is. No I/O.
 *
 * "Await cutover approval" waits one window at a time (a `.waitForTaskToken` with TimeoutSeconds of
 * one window); on `States.Timeout` it is entered again: its Lambda files the new token, takes one gate
 * sample (recorded as "Check lag" records it, and published, so the Slack message shows the lag now),
 * and refuses to wait past the approval deadline, counted from when the wait began.
 */

/** How long nobody may approve before the wait ends (resumable, replication goes on): a week. */
export const APPROVAL_DEADLINE_SECONDS = 7 * 24 * 3600;

/**
 * One approval window: the lag shown at the gate is at most this old (plus one sample). Step Functions
 * keeps at most 25,000 events per execution; each window costs APPROVAL_WINDOW_EVENTS (TaskStateEntered,
 * TaskScheduled, TaskStarted, TaskSubmitted, TaskTimedOut, TaskStateExited), so a whole week of windows
 * costs 604,800 / 600 = 1,008 windows × 6 = 6,048 events, under a quarter of the limit. It is set aside
 * whole in each execution's budget (workflow/history.ts): the catch-up samples get the rest of it and
 * continue in a new execution past that. test/approval-wait.test.ts derives these figures from the definition.
 */
export const APPROVAL_WINDOW_SECONDS = 600;

/** Step Functions' hard limit on events in one standard execution's history. */
export const SFN_HISTORY_EVENT_LIMIT = 25_000;

/** History events of one approval window (see APPROVAL_WINDOW_SECONDS). */
export const APPROVAL_WINDOW_EVENTS = 6;

/** The approval wait as the execution carries it (`$.approvalWait`) and the waiting task reads it. */
export interface ApprovalWaitInput {
  /** When the wait began (the state's entered time), ISO. */
  since?: string;
  windowSeconds?: number;
  deadlineSeconds?: number;
}

/** When the approval wait ends unanswered, or undefined when `since` is unknown. */
export function approvalDeadline(wait: ApprovalWaitInput | undefined): Date | undefined {
  const since = wait?.since ? Date.parse(wait.since) : Number.NaN;
  if (!Number.isFinite(since)) return undefined;
  return new Date(since + (wait?.deadlineSeconds ?? APPROVAL_DEADLINE_SECONDS) * 1000);
}

/** `2026-12-07T14:02:03.123Z` → `14:02:03 UTC` (with the date when it is not `now`'s day). */
export function utcClock(iso: string, now: Date = new Date()): string {
  const at = new Date(iso);
  if (!Number.isFinite(at.getTime())) return iso;
  const time = at.toISOString().slice(11, 19);
  const day = at.toISOString().slice(0, 10);
  return day === now.toISOString().slice(0, 10) ? `${time} UTC` : `${day} ${time} UTC`;
}

/** How long ago `iso` was, in words ("3 s ago", "2 min ago", "5 h 2 min ago"). */
export function agoText(iso: string, now: Date = new Date()): string {
  const ms = Math.max(0, now.getTime() - Date.parse(iso));
  if (!Number.isFinite(ms)) return 'at an unknown time';
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s ago`;
  const min = Math.floor(s / 60);
  if (min < 120) return `${min} min ago`;
  return `${Math.floor(min / 60)} h ${min % 60} min ago`;
}

/** "sampled 14:02:03 UTC, 3 s ago": what every lag figure shown carries. */
export function sampledText(iso: string, now: Date = new Date()): string {
  return `sampled ${utcClock(iso, now)}, ${agoText(iso, now)}`;
}
