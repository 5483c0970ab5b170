/**
 * A plan's cutover window ("policy: window"): the cutover goes ahead on its own as soon as the gate
 * opens, but only between `start` and `end` (local time in `timezone`, on `days`). Outside it, catch-up
 * goes on and the gate waits, saying when the window opens.
 */
import { z } from 'zod';

export const WEEKDAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] as const;
type Weekday = (typeof WEEKDAYS)[number];

const hhmm = (field: string) =>
  z
    .string({ error: `${field} is required, as HH:MM (24 h)` })
    .regex(/^([01]\d|2[0-3]):[0-5]\d$/, `${field} must be a time of day as HH:MM (24 h), e.g. 02:30`);

function validTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

export const cutoverWindowSchema = z.strictObject({
  start: hhmm('cutover.start'),
  end: hhmm('cutover.end'),
  timezone: z
    .string({ error: 'cutover.timezone is required, e.g. Europe/Paris or UTC' })
    .refine(validTimeZone, 'cutover.timezone must be an IANA time zone such as Europe/Paris or UTC'),
  days: z
    .array(z.enum(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun']), {
      error: 'cutover.days must be a list of mon, tue, wed, thu, fri, sat, sun',
    })
    .min(1, 'cutover.days needs at least one day (or leave it out for every day)')
    .optional(),
});
export type CutoverWindow = z.output<typeof cutoverWindowSchema>;

const minutes = (hhmm: string) => Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));

/** One formatter per zone: cutoverWindowOpensAt asks for thousands of minutes, and building one is costly. */
const FORMATS = new Map<string, Intl.DateTimeFormat>();

/** The local weekday and minute of the day of `at` in `timeZone`. */
function localTime(at: Date, timeZone: string): { day: Weekday; minute: number } {
  let format = FORMATS.get(timeZone);
  if (!format) {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone,
      weekday: 'short',
      hour: '2-digit',
      minute: '2-digit',
      hourCycle: 'h23',
    });
    FORMATS.set(timeZone, format);
  }
  const parts = format.formatToParts(at);
  const part = (type: string) => parts.find((p) => p.type === type)?.value ?? '';
  return {
    day: part('weekday').toLowerCase().slice(0, 3) as Weekday,
    minute: Number(part('hour')) * 60 + Number(part('minute')),
  };
}

const previousDay = (day: Weekday): Weekday => WEEKDAYS[(WEEKDAYS.indexOf(day) + 6) % 7]!;

/**
 * Whether `at` is inside the window. A window whose end is before its start crosses midnight and
 * belongs to the day it starts on (fri 23:00–01:00 is open on Saturday at 00:30). start = end: all day.
 */
export function inCutoverWindow(window: CutoverWindow, at: Date): boolean {
  const { day, minute } = localTime(at, window.timezone);
  const start = minutes(window.start);
  const end = minutes(window.end);
  const on = (d: Weekday) => !window.days || window.days.includes(d);
  if (start === end) return on(day);
  if (start < end) return on(day) && minute >= start && minute < end;
  if (minute >= start) return on(day);
  return minute < end && on(previousDay(day));
}

/** When the window next opens after `at` (to the minute), or undefined when it is open at `at`. */
export function cutoverWindowOpensAt(window: CutoverWindow, at: Date): Date | undefined {
  if (inCutoverWindow(window, at)) return undefined;
  const step = 60_000;
  const first = new Date(Math.ceil(at.getTime() / step) * step);
  // At most a week and a day of minutes: a window is open at least once a week.
  for (let t = first.getTime(); t <= at.getTime() + 8 * 24 * 3_600_000; t += step)
    if (inCutoverWindow(window, new Date(t))) return new Date(t);
  return undefined;
}

export function describeCutoverWindow(window: CutoverWindow): string {
  return `${window.start}–${window.end} ${window.timezone}${window.days ? ` on ${window.days.join(', ')}` : ''}`;
}
