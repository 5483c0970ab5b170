import { describe, expect, it } from 'vitest';
import { freshPair } from './harness/pairs';

describe('test harness', () => {
  it.each([15, 16, 17] as const)(
    'gives a logical-replication-ready 15 → %i pair of empty databases',
    async (version) => {
      const pair = await freshPair(version, 'harness');
      try {
        const [src] = await pair.source(
          "SELECT current_setting('server_version_num')::int / 10000 AS v, current_setting('wal_level') AS wl",
        );
        const [tgt] = await pair.target(
          "SELECT current_setting('server_version_num')::int / 10000 AS v, current_setting('wal_level') AS wl",
        );
        expect(src).toEqual({ v: 15, wl: 'logical' });
        expect(tgt).toEqual({ v: version, wl: 'logical' });
      } finally {
        await pair.drop();
      }
    },
  );
});
