/**
 * This worker's index into the server sets the global setup started, one per worker of the `postgres`
 * project (PGFERRY_TEST_PG_WORKERS, see vitest.config.ts). Vitest numbers a group's workers
 * 1..maxWorkers (VITEST_POOL_ID) and gives a starting file the lowest number no running file holds,
 * so two files running at once never share a set.
 */
export function workerIndex(sets: number, env: NodeJS.ProcessEnv = process.env): number {
  const id = Number(env.VITEST_POOL_ID ?? '1');
  return Number.isInteger(id) && id >= 1 ? (id - 1) % sets : 0;
}
