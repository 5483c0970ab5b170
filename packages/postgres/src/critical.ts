/**
 * Work that must not be cut short by Ctrl-C: the write gap (source frozen, switch pending). The CLI's
 * signal handler asks `whenIdle` before exiting, so an interrupted cutover finishes or undoes itself.
 */
let depth = 0;
const waiters: (() => void)[] = [];
const labels: string[] = [];

/** What a person is told is being finished when a signal comes inside the cutover's write gap. */
export const CUTOVER_GAP = 'the cutover write gap first (the source is frozen until it ends)';
/** The same for a rollback's write gap, where the target is the frozen one. */
export const ROLLBACK_GAP = "the rollback's write gap first (the target is frozen until it ends)";

export async function critical<T>(fn: () => Promise<T>, label = CUTOVER_GAP): Promise<T> {
  depth++;
  labels.push(label);
  try {
    return await fn();
  } finally {
    depth--;
    labels.splice(labels.lastIndexOf(label), 1);
    if (depth === 0) for (const w of waiters.splice(0)) w();
  }
}

export function inCriticalSection(): boolean {
  return depth > 0;
}

/** What the critical work running now is (the outermost), for the message a signal gets. */
export function criticalLabel(): string {
  return labels[0] ?? CUTOVER_GAP;
}

export function whenIdle(): Promise<void> {
  return depth === 0 ? Promise.resolve() : new Promise((resolve) => waiters.push(resolve));
}

/**
 * Work whose leftovers only this run could use: while `fn` runs, a signal first runs `undo` (say, drop
 * the slot of a copy that cannot go on in its snapshot after the process is gone, and would only
 * retain WAL on the source until someone resumes). If `fn` finishes after the undo began, its result
 * is thrown away: what it built on (the slot) is gone.
 */
const undoers = new Map<() => Promise<string>, { started?: Promise<string> }>();
let interrupted = false;

/** A signal stopped this run: nothing may roll back or record a failure now (the process is exiting). */
export function wasInterrupted(): boolean {
  return interrupted;
}

export class InterruptedError extends Error {
  override name = 'InterruptedError';
}

export async function undoOnInterrupt<T>(undo: () => Promise<string>, fn: () => Promise<T>): Promise<T> {
  const entry: { started?: Promise<string> } = {};
  undoers.set(undo, entry);
  try {
    const result = await fn();
    if (entry.started) throw new InterruptedError('interrupted');
    return result;
  } finally {
    // Whichever way fn ended, an undo that began is waited for.
    if (entry.started) await entry.started.catch(() => {});
    undoers.delete(undo);
  }
}

/** Run what `undoOnInterrupt` registered, within `timeoutMs`; resolves with what each one did. */
export async function undoInterrupted(timeoutMs: number): Promise<string[]> {
  interrupted = true;
  const running = [...undoers].map(([undo, entry]) => {
    entry.started ??= undo();
    return entry.started.catch((err) => `could not undo: ${(err as Error).message}`);
  });
  if (!running.length) return [];
  const timeout = new Promise<string[]>((resolve) =>
    setTimeout(() => resolve([`gave up waiting after ${timeoutMs} ms`]), timeoutMs).unref(),
  );
  return Promise.race([Promise.all(running), timeout]);
}

/**
 * What records that a signal stopped this run, called by the CLI's signal handler just before the
 * process exits: the local execution record, which would otherwise stay "running" until status took it
 * for a crash. Each hook runs once, synchronously; one that throws does not stop the others.
 */
const stopHooks = new Set<(signal: string) => void>();

/** Register `hook` for a stop by a signal; returns what unregisters it. */
export function onSignalStop(hook: (signal: string) => void): () => void {
  stopHooks.add(hook);
  return () => stopHooks.delete(hook);
}

/** Run the hooks onSignalStop registered (the process is exiting on `signal`). */
export function signalStopped(signal: string): void {
  for (const hook of [...stopHooks]) {
    stopHooks.delete(hook);
    try {
      hook(signal);
    } catch {
      // the process exits all the same
    }
  }
}
