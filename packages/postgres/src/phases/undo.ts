/**
 * Undoing a cutover or a rollback that did not switch. Every step is tried, whatever failed before it;
 * the breadcrumb (`cutover` or `rollback` in the state) is cleared only once all of them succeeded.
 * Otherwise it stays, with `undoFailed` naming what failed and the command that ends it, and the
 * caller gets an UndoFailedError: never an undo that failed quietly behind a message saying it worked.
 */
import { errorMessage, UndoFailedError } from '@pgferry/core';
import type { PhaseContext } from './context';

export type UndoStep = [what: string, run: () => Promise<unknown>];

export async function runUndo(
  ctx: PhaseContext,
  of: 'cutover' | 'rollback',
  steps: UndoStep[],
  options: { cause?: unknown; command: string },
): Promise<void> {
  const failed: string[] = [];
  for (const [what, run] of steps) {
    try {
      await run();
    } catch (err) {
      failed.push(`${what}: ${errorMessage(err)}`);
    }
  }
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
