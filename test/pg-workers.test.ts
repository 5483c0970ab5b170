import { describe, expect, it } from 'vitest';
import { postgresWorkers } from '../vitest.config';
import { workerIndex } from './harness/workers';

describe('PostgreSQL test workers', () => {
  it('runs one PostgreSQL file at a time unless PGFERRY_TEST_PG_WORKERS asks for more', () => {
    expect(postgresWorkers({})).toBe(1);
    expect(postgresWorkers({ PGFERRY_TEST_PG_WORKERS: '' })).toBe(1);
    expect(postgresWorkers({ PGFERRY_TEST_PG_WORKERS: '2' })).toBe(2);
    expect(postgresWorkers({ PGFERRY_TEST_PG_WORKERS: '4' })).toBe(4);
  });

  it('names the variable and what it takes when the value is not a worker count', () => {
    for (const bad of ['0', '5', '1.5', 'two', '-1'])
      expect(() => postgresWorkers({ PGFERRY_TEST_PG_WORKERS: bad })).toThrow(
        `PGFERRY_TEST_PG_WORKERS=${bad}: give a whole number from 1 to 4`,
      );
  });

  it("gives each of vitest's workers its own set of servers", () => {
    // Vitest numbers a group's running workers 1..maxWorkers (VITEST_POOL_ID), one number per running file.
    expect([1, 2].map((id) => workerIndex(2, { VITEST_POOL_ID: String(id) }))).toEqual([0, 1]);
    expect([1, 2, 3].map((id) => workerIndex(3, { VITEST_POOL_ID: String(id) }))).toEqual([0, 1, 2]);
    // One set: every worker on it; outside vitest's pool (no id): the first set.
    expect(workerIndex(1, { VITEST_POOL_ID: '1' })).toBe(0);
    expect(workerIndex(2, {})).toBe(0);
  });
});
