/**
 * The drain forecast the cutover and the rollback both freeze by (forecastDrain): on a real server,
 * with a slot whose subscriber confirms nothing, no rate can be measured, so the caller's fallback rate
 * (never below the floor) is used, and the forecast's text says it was assumed.
 */

import { APPLY_RATE_FLOOR_BPS, predictDrainMs } from '@pgferry/core';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, type Db, describeDrainForecast, forecastDrain } from '../packages/postgres/src/index';
import { freshPair, type Pair } from './harness/pairs';

let pair: Pair | undefined;
let db: Db | undefined;
afterEach(async () => {
  await db?.end();
  await pair?.drop();
  db = undefined;
  pair = undefined;
});

describe('drain forecast', () => {
  it('uses the fallback rate when nothing was applied to measure one, never below the floor, and says so', async () => {
    pair = await freshPair(15, 'forecast');
    await pair.source("SELECT pg_create_logical_replication_slot('forecast_slot', 'pgoutput')");
    // WAL the slot's (absent) subscriber has not confirmed.
    await pair.source(
      'CREATE TABLE t AS SELECT g AS id, repeat(md5(g::text), 4) AS v FROM generate_series(1, 20000) g',
    );
    db = await connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test' });

    const fast = 8 * 1024 * 1024;
    const f = await forecastDrain(db, 'forecast_slot', 200, fast);
    expect(f.slotFound).toBe(true);
    expect(f.caughtUp).toBe(false);
    expect(f.measured).toBe(false);
    expect(f.bytes).toBeGreaterThan(1024 * 1024);
    expect(f.appliedBps).toBe(fast);
    expect(f.predictedMs).toBe(predictDrainMs(f.bytes, fast));
    expect(describeDrainForecast(f, 'the target')).toMatch(
      /^\d+\.\d MiB unconfirmed, the target applying [\d.]+ MB\/s assumed \(too little was applied during the catch-up to measure a rate\)$/,
    );

    // A fallback below the floor (an idle gate measured 0 B/s): the floor.
    const idle = await forecastDrain(db, 'forecast_slot', 200, 0);
    expect(idle.appliedBps).toBe(APPLY_RATE_FLOOR_BPS);
    expect(idle.predictedMs).toBe(predictDrainMs(idle.bytes, APPLY_RATE_FLOOR_BPS));
    // The rollback's default fallback is the floor too.
    expect((await forecastDrain(db, 'forecast_slot', 200)).appliedBps).toBe(APPLY_RATE_FLOOR_BPS);

    // No slot: nothing to forecast, never a freeze.
    const gone = await forecastDrain(db, 'no_such_slot', 200);
    expect(gone).toMatchObject({ slotFound: false, caughtUp: false, predictedMs: Number.POSITIVE_INFINITY });
    await pair.source("SELECT pg_drop_replication_slot('forecast_slot')");
  });
});
