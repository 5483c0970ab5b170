/**
 * Every run of every phase, in order. `phases` keeps one record per phase (the done-checks read it),
 * which a second run overwrites: a catch-up the workflow returns to after a drain over budget, a
 * phase resumed after a crash, a migration resumed after a rollback. The history keeps each attempt
 * with its start, end and outcome, for `pgferry status` and the report's timeline. No I/O.
 */
import { type MigrationState, PHASE_TITLES, type Phase, type PhaseAttempt } from './model';

/** Attempts kept (the oldest are dropped past this): far more than any migration makes. */
export const PHASE_HISTORY_MAX = 500;

function openAttempts(s: MigrationState): PhaseAttempt[] {
  return (s.phaseHistory ?? []).filter((a) => a.outcome === undefined);
}

/**
 * A phase starts: a new attempt. One command or execution acts on a migration at a time (its claim),
 * so an attempt still open now was cut off without ending or failing (its process killed): interrupted.
 */
export function beginAttempt(s: MigrationState, phase: Phase, at: string): void {
  for (const open of openAttempts(s)) open.outcome = 'interrupted';
  s.phaseHistory = [...(s.phaseHistory ?? []), { phase, startedAt: at }].slice(-PHASE_HISTORY_MAX);
}

/** The phase's last attempt still open, or one made from its record (a state from before the history). */
function currentAttempt(s: MigrationState, phase: Phase): PhaseAttempt | undefined {
  const history = s.phaseHistory ?? [];
  for (let i = history.length - 1; i >= 0; i--) {
    const a = history[i]!;
    if (a.phase === phase) return a.outcome === undefined ? a : undefined;
  }
  const startedAt = s.phases[phase]?.startedAt;
  if (!startedAt) return undefined;
  const made: PhaseAttempt = { phase, startedAt };
  s.phaseHistory = [...history, made].slice(-PHASE_HISTORY_MAX);
  return made;
}

/** The phase ended: its open attempt is done, with the phase's summary. */
export function endAttempt(s: MigrationState, phase: Phase, at: string, summary: string): void {
  const a = currentAttempt(s, phase);
  if (a) Object.assign(a, { endedAt: at, outcome: 'done', summary });
}

/** The phase threw: its open attempt failed, with the error (redacted by the store, as all state). */
export function failAttempt(s: MigrationState, phase: Phase, at: string, reason: string): void {
  const a = currentAttempt(s, phase);
  if (a) Object.assign(a, { endedAt: at, outcome: 'failed', summary: reason });
}

/**
 * Every attempt in the order they started. A phase whose record has no attempt in the history (a
 * state written before it existed, or past its bound) appears once, from its record.
 */
export function phaseAttempts(s: MigrationState): PhaseAttempt[] {
  const history = [...(s.phaseHistory ?? [])];
  const known = new Set(history.map((a) => `${a.phase}@${a.startedAt}`));
  for (const [phase, rec] of Object.entries(s.phases) as [Phase, NonNullable<MigrationState['phases'][Phase]>][]) {
    if (!rec?.startedAt || known.has(`${phase}@${rec.startedAt}`)) continue;
    history.push({
      phase,
      startedAt: rec.startedAt,
      ...(rec.endedAt ? { endedAt: rec.endedAt, outcome: 'done' as const } : {}),
      ...(rec.summary ? { summary: rec.summary } : {}),
    });
  }
  return history.sort((a, b) => Date.parse(a.startedAt) - Date.parse(b.startedAt));
}

/** An attempt as status and the report list it: numbered among its phase's, titled. */
export interface NumberedAttempt extends PhaseAttempt {
  nth: number;
  /** "Catch up", or "Catch up (2nd)" for a phase that ran more than once. */
  title: string;
}

/** Every attempt in order (phaseAttempts), numbered per phase; a phase that ran more than once shows its number. */
export function numberedAttempts(s: MigrationState): NumberedAttempt[] {
  const attempts = phaseAttempts(s);
  const counts = new Map<Phase, number>();
  const numbered = attempts.map((a) => {
    const nth = (counts.get(a.phase) ?? 0) + 1;
    counts.set(a.phase, nth);
    return { ...a, nth };
  });
  return numbered.map((a) => ({
    ...a,
    title: `${PHASE_TITLES[a.phase]}${(counts.get(a.phase) ?? 1) > 1 ? ` (${ordinal(a.nth)})` : ''}`,
  }));
}

function ordinal(n: number): string {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? 'th' : (['th', 'st', 'nd', 'rd'][n % 10] ?? 'th');
  return `${n}${suffix}`;
}
