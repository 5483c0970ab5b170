import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, type Db, freezeWrites, isFrozen, unfreezeWrites, writesSince } from '../packages/postgres/src/index';
import { freshPair, type Pair } from './harness/pairs';

let pair: Pair | undefined;
let db: Db | undefined;
afterEach(async () => {
  await db?.end();
  await pair?.drop();
  pair = undefined;
  db = undefined;
});

describe('write freeze', () => {
  it('ends every session of every role, makes new ones read-only, and counts a write that sneaks past it', async () => {
    pair = await freshPair(15, 'freeze');
    await pair.source('CREATE TABLE t (id int PRIMARY KEY)');
    db = await connect(pair.sourceUrl, { side: 'source', applicationName: 'pgferry:test' });
    const idle = new pg.Client({ connectionString: pair.sourceUrl, application_name: 'app' });
    idle.on('error', () => {});
    await idle.connect();
    await idle.query('BEGIN');
    await idle.query('INSERT INTO t VALUES (1)'); // an open writing transaction at freeze time

    const freeze = await freezeWrites(db);
    expect(freeze.sessionsEnded).toBe(1);
    expect(await isFrozen(db)).toBe(true);
    await expect(idle.query('COMMIT')).rejects.toThrow(); // its transaction died with the session; not acknowledged
    expect(await writesSince(db, freeze.xmax)).toBe(0);

    // A new session is read-only by default...
    const late = new pg.Client({ connectionString: pair.sourceUrl, application_name: 'late' });
    await late.connect();
    await expect(late.query('INSERT INTO t VALUES (2)')).rejects.toThrow(/read-only transaction/);
    // ...but one that turns it off can still write: the cutover counts it and drains it before the switch.
    await late.query('SET default_transaction_read_only = off');
    await late.query('INSERT INTO t VALUES (3)');
    await late.end();
    expect(await writesSince(db, freeze.xmax)).toBe(1);

    await unfreezeWrites(db);
    expect(await isFrozen(db)).toBe(false);
    expect(await pair.source('SELECT id FROM t ORDER BY id')).toEqual([{ id: 3 }]);
  });
});
