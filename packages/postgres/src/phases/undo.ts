/**
 * Undoing a cutover or a rollback that did not switch. Every step is tried, whatever failed before it;
 * the breadcrumb (`cutover` or `rollback` in the state) is cleared only once all of them succeeded.
 * Otherwise it stays, with `undoFailed` naming what failed and the command that ends it, and the
 * caller gets an UndoFailedError: never an undo that failed quietly behind a message saying it worked.
 */
import { errorMessage, UndoFailedError } from '@pgferry/core';
import { isServerAway, sleep } from '../db';
import type { PhaseContext } from './context';

export type UndoStep = [what: string, run: () => Promise<unknown>];

export async function runUndo(
  ctx: PhaseContext,
  of: 'cutover' | 'rollback',
  steps: UndoStep[],
  options: { cause?: unknown; command: string },
): Promise<void> {
  // Every step once; then the ones a server away failed (a restart, a failover: the application waits
  // on a frozen database meanwhile) again, with backoff, for as long as catch-up waits for a server.
  // Every step is idempotent. A step that failed otherwise fails the undo.
  let left = steps;
  const finalFailures: UndoStep[] = [];
  const failures = new Map<string, unknown>();
  const deadline = Date.now() + ctx.config.reconnectTimeoutMs;
  for (let round = 0; ; round++) {
    const again: UndoStep[] = [];
    for (const step of left) {
      try {
        await step[1]();
        failures.delete(step[0]);
      } catch (err) {
        failures.set(step[0], err);
        again.push(step);
      }
    }
    // Those a server away failed are tried again; one that failed otherwise is not, and does not keep
    // the others (the unfreeze of a server that restarts) from being tried again.
    const retried = again.filter(([what]) => isServerAway(failures.get(what)));
    finalFailures.push(...again.filter((step) => !retried.includes(step)));
    left = retried;
    if (!left.length || Date.now() >= deadline) break;
    if (round === 0)
      ctx.log(
        `the undo of the ${of} could not ${left.map(([what]) => what).join(', ')} (${errorMessage(failures.get(left[0]![0]))}); trying again for up to ${Math.round(ctx.config.reconnectTimeoutMs / 1000)} s`,
      );
    await sleep(Math.min(5_000, 250 * 2 ** round, Math.max(0, deadline - Date.now())));
  }
  const failed = [...finalFailures, ...left].map(([what]) => `${what}: ${errorMessage(failures.get(what))}`);
  if (failed.length === 0) {
    await ctx.update((s) => {
      s[of] = undefined;
      s.undoFailed = undefined;
    });
    return;
  }
  const message = `the undo of the ${of} failed (${failed.join('; ')})${options.cause === undefined ? '' : `; it was undoing: ${errorMessage(options.cause)}`}`;
  await ctx.update((s) => {
    s.undoFailed = { at: new Date().toISOString(), of, message, command: options.command };
  });
  throw new UndoFailedError(message, {
    cause: options.cause,
    phase: of,
    hint: `\`pgferry status --id ${ctx.config.id}\` shows what is left (a read-only database, a slot retaining WAL); once the cause is fixed, \`${options.command}\` ends it`,
  });
}
