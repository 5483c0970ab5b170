import { describe, expect, it } from 'vitest';
import { ReadingClock } from '../packages/postgres/src/phases/verify-readers';

describe("verify's reading clock", () => {
  it('counts the time at least one reader was reading, not the sum of the readers, and the most at once', () => {
    const clock = new ReadingClock();
    clock.reading(3, 0); // a big table's three parts, 0 → 10
    clock.reading(1, 2); // and a small table, 2 → 4
    clock.reading(-1, 4);
    clock.reading(-3, 10);
    clock.reading(1, 20); // later, one more read, 20 → 25
    clock.reading(-1, 25);
    expect(clock.busyMs).toBe(15);
    expect(clock.peak).toBe(4);
  });
});
