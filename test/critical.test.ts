import { describe, expect, it } from 'vitest';
import {
  CUTOVER_GAP,
  critical,
  criticalLabel,
  InterruptedError,
  ROLLBACK_GAP,
  undoInterrupted,
  undoOnInterrupt,
  wasInterrupted,
} from '../packages/postgres/src/index';

// Its own file: undoInterrupted marks the whole process as interrupted.
describe('undo on interrupt', () => {
  it('runs the undo of work in progress, and throws away a result that arrives after the undo began', async () => {
    let finish!: () => void;
    const undone: string[] = [];
    const work = undoOnInterrupt(
      async () => {
        undone.push('slot dropped');
        return 'dropped the slot';
      },
      () => new Promise<string>((resolve) => (finish = () => resolve('data loaded'))),
    );
    // Registered only while the work runs: finished work has nothing to undo.
    await undoOnInterrupt(
      async () => 'never',
      async () => 'done early',
    );
    expect(wasInterrupted()).toBe(false);
    expect(await undoInterrupted(1000)).toEqual(['dropped the slot']);
    expect(wasInterrupted()).toBe(true);
    finish(); // the copy finished while the slot was being dropped: it must not count as loaded
    await expect(work).rejects.toBeInstanceOf(InterruptedError);
    expect(undone).toEqual(['slot dropped']);
    expect(await undoInterrupted(1000)).toEqual([]);
  });

  it('gives up waiting for an undo that hangs', async () => {
    const hang = undoOnInterrupt(
      () => new Promise<string>(() => {}),
      () => new Promise<string>(() => {}),
    );
    void hang;
    expect(await undoInterrupted(50)).toEqual(['gave up waiting after 50 ms']);
  });
});

describe('the write gap a signal waits for', () => {
  it("is named as the rollback's, the target frozen, inside a rollback's gap (it said the source was)", async () => {
    const seen = await critical(async () => criticalLabel(), ROLLBACK_GAP);
    expect(seen).toBe("the rollback's write gap first (the target is frozen until it ends)");
    expect(await critical(async () => criticalLabel())).toBe(CUTOVER_GAP);
  });
});
