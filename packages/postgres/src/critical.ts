/**
 * Work that must not be cut short by Ctrl-C: the write gap (source frozen, switch pending). The CLI's
 * signal handler asks `whenIdle` before exiting, so an interrupted cutover finishes or undoes itself.
 */
let depth = 0;
const waiters: (() => void)[] = [];

export async function critical<T>(fn: () => Promise<T>): Promise<T> {
  depth++;
  try {
    return await fn();
  } finally {
    depth--;
    if (depth === 0) for (const w of waiters.splice(0)) w();
  }
}

export function inCriticalSection(): boolean {
  return depth > 0;
}

export function whenIdle(): Promise<void> {
  return depth === 0 ? Promise.resolve() : new Promise((resolve) => waiters.push(resolve));
}
