import { EventEmitter } from 'node:events';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { CopyInSink, CopyOutRelay, relayCopy } from '../packages/postgres/src/copy-relay';
import { freshPair, type Pair } from './harness/pairs';

let pair: Pair | undefined;
const clients: pg.Client[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) await c.end().catch(() => {});
  await pair?.drop();
  pair = undefined;
});

async function client(url: string) {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => {});
  await c.connect();
  clients.push(c);
  return c;
}

const TABLE = `CREATE TABLE t (
  id int PRIMARY KEY, small text, big text, raw bytea, amount numeric, doc jsonb, tags text[], at timestamptz
)`;
const fingerprint = "SELECT count(*)::int AS n, md5(string_agg(t::text, '|' ORDER BY id)) AS h FROM t";

describe('COPY relay (source socket to target socket, rows untouched)', () => {
  for (const [format, target] of [
    ['binary', 17],
    ['text', 15],
  ] as const) {
    it(`copies every value exactly, ${format} format, 15 → ${target}`, async () => {
      pair = await freshPair(target, 'relay');
      await pair.source(TABLE);
      await pair.target(TABLE);
      // Tiny rows, NULLs, and values of hundreds of KiB that span many socket reads.
      await pair.source(`INSERT INTO t SELECT g, 'row ' || g, CASE WHEN g % 500 = 0 THEN repeat(md5(g::text), 10000) END,
        CASE WHEN g % 3 = 0 THEN decode(md5(g::text), 'hex') END, g / 7.0, jsonb_build_object('g', g, 'q', 'it''s'),
        ARRAY['a', g::text, NULL], '2026-01-01'::timestamptz + g * interval '1 minute'
        FROM generate_series(1, 20000) g`);
      const src = await client(pair.sourceUrl);
      const tgt = await client(pair.targetUrl);
      const opt = format === 'binary' ? ' (FORMAT binary)' : '';
      let seen = 0;
      let messages = 0;
      const { rows, bytes } = await relayCopy(src, tgt, `COPY t TO STDOUT${opt}`, `COPY t FROM STDIN${opt}`, (n, m) => {
        seen += n;
        messages += m;
      });
      expect(rows).toBe(20000);
      expect(messages).toBe(format === 'binary' ? 20001 : 20000); // one per row, and binary's trailer
      expect(bytes).toBe(seen);
      expect(bytes).toBeGreaterThan(12_000_000);
      expect(await pair.target(fingerprint)).toEqual(await pair.source(fingerprint));
      // Both connections are back in pg's hands: ordinary queries work.
      expect((await src.query('SELECT 1 AS one')).rows[0].one).toBe(1);
      expect((await tgt.query('SELECT count(*)::int AS n FROM t')).rows[0].n).toBe(20000);
    });
  }

  it('holds the source back while a slow target catches up, losing or corrupting nothing', async () => {
    pair = await freshPair(16, 'relayslow');
    await pair.source(TABLE);
    await pair.target(TABLE);
    // Every 2000th row makes the target sleep: the sockets' buffers fill and the relay must pause.
    await pair.target(`CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.id % 2000 = 0 THEN PERFORM pg_sleep(0.05); END IF; RETURN NEW; END $$;
      CREATE TRIGGER slow BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION slow()`);
    await pair.source(`INSERT INTO t (id, small, big) SELECT g, 'row ' || g, repeat(md5(g::text), 20)
      FROM generate_series(1, 40000) g`);
    const src = await client(pair.sourceUrl);
    const tgt = await client(pair.targetUrl);
    const sink = new CopyInSink('COPY t FROM STDIN (FORMAT binary)');
    tgt.query(sink as never);
    await sink.ready;
    const relay = new CopyOutRelay('COPY t TO STDOUT (FORMAT binary)', sink);
    src.query(relay as never);
    await relay.done;
    sink.finish();
    expect(await sink.done).toBe(40000);
    expect(relay.pauses).toBeGreaterThan(0);
    expect(await pair.target(fingerprint)).toEqual(await pair.source(fingerprint));
  });

  it('fails with the target error, rolls the target back and stops reading the source', async () => {
    pair = await freshPair(15, 'relayerr');
    await pair.source('CREATE TABLE t (id int PRIMARY KEY, pad text)');
    await pair.target('CREATE TABLE t (id int PRIMARY KEY CHECK (id < 1000), pad text)');
    await pair.source("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g");
    const src = await client(pair.sourceUrl);
    const tgt = await client(pair.targetUrl);
    await tgt.query('BEGIN');
    await expect(relayCopy(src, tgt, 'COPY t TO STDOUT', 'COPY t FROM STDIN')).rejects.toThrow(/t_id_check/);
    await tgt.query('ROLLBACK');
    expect((await tgt.query('SELECT count(*)::int AS n FROM t')).rows[0].n).toBe(0);
    // The source's COPY was cut off by closing its connection: nothing of it runs on.
    await expect(src.query('SELECT 1')).rejects.toThrow();
    // (Its backend notices the closed socket within moments.)
    let copying = 1;
    for (let i = 0; i < 40 && copying > 0; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 50));
      const rows = await pair.source(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'COPY t TO%'",
      );
      copying = rows[0]?.n;
    }
    expect(copying).toBe(0);
  });

  it('fails with the source error and abandons the target COPY', async () => {
    pair = await freshPair(15, 'relaysrcerr');
    await pair.source('CREATE TABLE t (id int PRIMARY KEY, pad text)');
    await pair.target('CREATE TABLE t (id int PRIMARY KEY, pad text)');
    await pair.source("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g");
    const src = await client(pair.sourceUrl);
    const tgt = await client(pair.targetUrl);
    await expect(
      relayCopy(
        src,
        tgt,
        'COPY (SELECT id, pad || (1 / (id - 90000)) FROM t ORDER BY id) TO STDOUT',
        'COPY t FROM STDIN',
      ),
    ).rejects.toThrow(/division by zero/);
    // Without an explicit transaction the COPY was its own: nothing of it stayed.
    expect((await tgt.query('SELECT count(*)::int AS n FROM t')).rows[0].n).toBe(0);
    expect((await src.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  });
});

/** Protocol messages by hand, for the one thing a real socket cannot be made to do on demand: cut anywhere. */
function message(type: string, body: Buffer) {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeUInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

describe('COPY relay framing', () => {
  /** A relay wired to fake sockets: what the target got, and the source's pause state. */
  function wired(targetAccepts: () => boolean) {
    const written: Buffer[] = [];
    const target = Object.assign(new EventEmitter(), {
      write(b: Buffer) {
        written.push(Buffer.from(b));
        return targetAccepts();
      },
    });
    const sink = new CopyInSink('COPY t FROM STDIN');
    sink.submit({ stream: target as never, query() {}, endCopyFrom() {}, sendCopyFail() {} });
    const state = { paused: false, destroyed: false };
    const source = Object.assign(new EventEmitter(), {
      pause() {
        state.paused = true;
      },
      resume() {
        state.paused = false;
      },
      destroy() {
        state.destroyed = true;
      },
    });
    source.on('data', () => {}); // pg's own listener, which the relay takes over
    const relay = new CopyOutRelay('COPY t TO STDOUT', sink);
    relay.submit({ stream: source as never, query() {}, endCopyFrom() {}, sendCopyFail() {} });
    relay.done.catch(() => {});
    return { written, target, source, state, relay };
  }

  it('completes a half-sent message with filler when it stops, so the target stays in step', () => {
    const { written, state, relay } = wired(() => true);
    const full = message('d', Buffer.alloc(100, 1));
    (relay as unknown as { onData(b: Buffer): void }).onData(full.subarray(0, 35)); // header + 30 body bytes
    relay.abort(new Error('target failed'));
    const sent = Buffer.concat(written);
    expect(sent.length).toBe(full.length); // 5 + 30 forwarded, then 70 bytes of filler
    expect(sent.subarray(0, 35).equals(full.subarray(0, 35))).toBe(true);
    expect(sent.subarray(35).every((b) => b === 0)).toBe(true);
    expect(state.destroyed).toBe(true);
  });

  it('pauses the source while the target socket is full and resumes on drain', () => {
    let accept = false;
    const { written, target, state, relay } = wired(() => accept);
    const onData = (b: Buffer) => (relay as unknown as { onData(b: Buffer): void }).onData(b);
    onData(Buffer.concat([message('d', Buffer.from('a')), message('d', Buffer.from('b'))]));
    expect(state.paused).toBe(true);
    expect(relay.pauses).toBe(1);
    accept = true;
    target.emit('drain');
    expect(state.paused).toBe(false);
    onData(message('d', Buffer.from('c')));
    expect(relay.pauses).toBe(1);
    expect(Buffer.concat(written).equals(Buffer.concat(['a', 'b', 'c'].map((x) => message('d', Buffer.from(x)))))).toBe(
      true,
    );
  });

  it('refuses to start once aborted, so nothing reaches the target', () => {
    const written: Buffer[] = [];
    const sink = new CopyInSink('COPY t FROM STDIN');
    const target = Object.assign(new EventEmitter(), { write: (b: Buffer) => written.push(b) > 0 });
    sink.submit({ stream: target as never, query() {}, endCopyFrom() {}, sendCopyFail() {} });
    const relay = new CopyOutRelay('COPY t TO STDOUT', sink);
    relay.abort(new Error('the target failed first'));
    const source = Object.assign(new EventEmitter(), { pause() {}, resume() {}, destroy() {} });
    let queried = false;
    const refused = relay.submit({
      stream: source as never,
      query: () => {
        queried = true;
      },
      endCopyFrom() {},
      sendCopyFail() {},
    });
    expect(refused).toBeInstanceOf(Error);
    expect(queried).toBe(false);
    source.emit('data', message('d', Buffer.from('1\n')));
    expect(written).toEqual([]);
    return expect(relay.done).rejects.toThrow('the target failed first');
  });

  it('forwards exactly the CopyData messages, wherever the socket cuts the stream', () => {
    const data = [
      message('d', Buffer.from('1\tone\n')),
      message('d', Buffer.alloc(0)),
      message('d', Buffer.alloc(70_000, 7)),
    ];
    const tail = Buffer.concat([
      message('c', Buffer.alloc(0)),
      message('C', Buffer.from('COPY 3\0')),
      message('Z', Buffer.from('I')),
    ]);
    const stream = Buffer.concat([
      message('H', Buffer.from([0, 0, 1, 0, 0])),
      data[0] as Buffer,
      message('N', Buffer.from('Snotice\0\0')), // a notice in the middle is not data
      data[1] as Buffer,
      data[2] as Buffer,
      tail,
    ]);
    const expected = Buffer.concat(data);
    // Every cut position up to past the second message, then coarse steps: each header split is covered.
    const cuts = [...Array.from({ length: 60 }, (_, i) => i + 1), 1000, 40_000, 70_030, stream.length - 20];
    for (const size of cuts) {
      const written: Buffer[] = [];
      const handedBack: Buffer[] = [];
      const socket = Object.assign(new EventEmitter(), {
        pause() {},
        resume() {},
        destroy() {},
        write(b: Buffer) {
          written.push(Buffer.from(b));
          return true;
        },
        once: EventEmitter.prototype.once,
      });
      const sink = new CopyInSink('COPY t FROM STDIN');
      sink.submit({ stream: socket as never, query() {}, endCopyFrom() {}, sendCopyFail() {} });
      const relay = new CopyOutRelay('COPY t TO STDOUT', sink);
      const source = Object.assign(new EventEmitter(), { pause() {}, resume() {}, destroy() {} });
      const pgHandler = (b: Buffer) => handedBack.push(Buffer.from(b));
      source.on('data', pgHandler);
      relay.submit({ stream: source as never, query() {}, endCopyFrom() {}, sendCopyFail() {} });
      for (let at = 0; at < stream.length; at += size) source.emit('data', stream.subarray(at, at + size));
      expect(Buffer.concat(written).equals(expected), `cut every ${size} bytes`).toBe(true);
      // pg gets everything from CopyDone on, and its listener is back in place.
      expect(Buffer.concat(handedBack).equals(tail), `cut every ${size} bytes`).toBe(true);
      expect(source.listeners('data')).toEqual([pgHandler]);
      expect(relay.bytes).toBe(expected.length);
      expect(relay.messages).toBe(3);
    }
  });
});
