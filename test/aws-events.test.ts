import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { EventBridgeClient, PutEventsCommand } from '@aws-sdk/client-eventbridge';
import { mockClient } from 'aws-sdk-client-mock';
import { beforeEach, describe, expect, it } from 'vitest';
import { EventBridgePublisher, EventPublishFailedError } from '../packages/aws/src/index';
import {
  EVENT_TYPES,
  eventDetailProblems,
  eventJsonSchema,
  eventSchemaFileName,
  type PgferryEvent,
} from '../packages/core/src/index';
import { TEST_CLIENT_CONFIG } from './harness/aws-clients';

const client = new EventBridgeClient(TEST_CLIENT_CONFIG);
const eventBridge = mockClient(client);
const noWait = async () => {};

beforeEach(() => eventBridge.reset());

/** One sample of each detail-type, as the workflow would publish them. */
const SAMPLES: PgferryEvent[] = [
  {
    type: 'Migration Phase Changed',
    detail: {
      migrationId: 'shop',
      at: '2026-11-02T10:20:00.000Z',
      phase: 'bulk-load',
      previousPhase: 'prepare-schema',
      status: 'running',
      summary: '14 tables, 3 sequences created',
    },
  },
  {
    type: 'Replication Lag Sampled',
    detail: {
      migrationId: 'shop',
      at: '2026-11-02T11:00:00.500Z',
      lagBytes: 81920,
      lagMs: 120,
      walRetainedBytes: 4_194_304,
      generatedBps: 350_000,
      appliedBps: 900_000,
      gateOpen: true,
      streak: 3,
    },
  },
  {
    type: 'Cutover Completed',
    detail: {
      migrationId: 'shop',
      at: '2026-11-02T11:05:00.000Z',
      direction: 'forward',
      writeGapMs: 840,
      freezeLsn: '0/3A2B1C8',
      drainMs: 210,
      sequencesSynced: 3,
      sessionsEnded: 2,
    },
  },
  {
    type: 'Migration Failed',
    detail: {
      migrationId: 'shop',
      at: '2026-11-02T11:06:00.000Z',
      phase: 'catch-up',
      errorName: 'LagTimeoutError',
      message: 'lag stayed over 1000 ms for 30 minutes',
      hint: 'raise --max-lag-ms or reduce the write load',
    },
  },
];

describe('the documented event schemas', () => {
  const dir = join(import.meta.dirname, '../docs/events');

  it('docs/events holds exactly one schema per detail-type, equal to what the zod schemas generate', () => {
    const files = readdirSync(dir).filter((f) => f.endsWith('.schema.json'));
    expect(files.sort()).toEqual(EVENT_TYPES.map(eventSchemaFileName).sort());
    for (const type of EVENT_TYPES) {
      const file = JSON.parse(readFileSync(join(dir, eventSchemaFileName(type)), 'utf8'));
      // Out of date? `npx tsx docs/events/generate.ts` writes them again.
      expect(file, eventSchemaFileName(type)).toEqual(eventJsonSchema(type));
    }
  });

  it('accepts a sample of every detail-type, and names what is wrong in a bad one', () => {
    expect(SAMPLES.map((s) => s.type).sort()).toEqual([...EVENT_TYPES].sort());
    for (const s of SAMPLES) expect(eventDetailProblems(s.type, s.detail), s.type).toEqual([]);
    expect(
      eventDetailProblems('Replication Lag Sampled', { migrationId: 'shop', at: 'yesterday', lagBytes: -1, lagMs: 1 }),
    ).toEqual([expect.stringMatching(/^at: /), expect.stringMatching(/^lagBytes: /)]);
    // A detail carries only documented fields: nothing extra (a URL, a password) slips through.
    expect(
      eventDetailProblems('Migration Failed', {
        ...SAMPLES[3]!.detail,
        sourceUrl: 'postgres://a:b@h/d',
      }),
    ).toEqual([expect.stringMatching(/sourceUrl/)]);
  });
});

describe('EventBridgePublisher', () => {
  it('puts every event on the pgferry bus with source pgferry, its detail-type and time', async () => {
    eventBridge
      .on(PutEventsCommand)
      .resolves({ FailedEntryCount: 0, Entries: SAMPLES.map((_, i) => ({ EventId: `e${i}` })) });
    await new EventBridgePublisher(client, { backoff: noWait }).publish(SAMPLES);
    const calls = eventBridge.commandCalls(PutEventsCommand);
    expect(calls).toHaveLength(1);
    expect(calls[0]!.args[0].input).toEqual({
      Entries: SAMPLES.map((s) => ({
        EventBusName: 'pgferry',
        Source: 'pgferry',
        DetailType: s.type,
        Detail: JSON.stringify(s.detail),
        Time: new Date(s.detail.at as string),
      })),
    });
  });

  it('sends at most 10 entries per PutEvents call', async () => {
    const events = Array.from({ length: 23 }, (_, i) => ({
      ...SAMPLES[1]!,
      detail: { ...SAMPLES[1]!.detail, lagBytes: i },
    }));
    eventBridge.on(PutEventsCommand).callsFake((input: { Entries: unknown[] }) => ({
      FailedEntryCount: 0,
      Entries: input.Entries.map(() => ({ EventId: 'x' })),
    }));
    await new EventBridgePublisher(client, { backoff: noWait }).publish(events);
    const sizes = eventBridge.commandCalls(PutEventsCommand).map((c) => c.args[0].input.Entries?.length);
    expect(sizes).toEqual([10, 10, 3]);
    const sent = eventBridge
      .commandCalls(PutEventsCommand)
      .flatMap((c) => c.args[0].input.Entries!.map((e) => JSON.parse(e.Detail!).lagBytes));
    expect(sent).toEqual(events.map((_, i) => i));
  });

  it('sends again only the entries PutEvents failed, until they are in', async () => {
    eventBridge
      .on(PutEventsCommand)
      .resolvesOnce({
        FailedEntryCount: 2,
        Entries: [
          { EventId: 'a' },
          { ErrorCode: 'ThrottlingException', ErrorMessage: 'Rate exceeded' },
          { EventId: 'c' },
          { ErrorCode: 'InternalFailure', ErrorMessage: 'oops' },
        ],
      })
      .resolves({ FailedEntryCount: 0, Entries: [{ EventId: 'b' }, { EventId: 'd' }] });
    await new EventBridgePublisher(client, { backoff: noWait }).publish(SAMPLES);
    const calls = eventBridge
      .commandCalls(PutEventsCommand)
      .map((c) => c.args[0].input.Entries!.map((e) => e.DetailType));
    expect(calls).toEqual([
      ['Migration Phase Changed', 'Replication Lag Sampled', 'Cutover Completed', 'Migration Failed'],
      ['Replication Lag Sampled', 'Migration Failed'],
    ]);
  });

  it('reports the entries that still fail after its attempts, having sent all the others', async () => {
    eventBridge.on(PutEventsCommand).callsFake((input: { Entries: { DetailType: string }[] }) => ({
      FailedEntryCount: 1,
      Entries: input.Entries.map((e) =>
        e.DetailType === 'Cutover Completed'
          ? { ErrorCode: 'InternalFailure', ErrorMessage: 'try again' }
          : { EventId: 'ok' },
      ),
    }));
    const err = await new EventBridgePublisher(client, { attempts: 3, backoff: noWait })
      .publish(SAMPLES)
      .catch((e) => e);
    expect(err).toBeInstanceOf(EventPublishFailedError);
    expect(err.failures).toEqual([
      { type: 'Cutover Completed', migrationId: 'shop', reason: 'InternalFailure: try again' },
    ]);
    expect(err.message).toMatch(/1 of 4 events could not be published on bus pgferry: Cutover Completed of shop/);
    // The first call carried all four; each retry only the failed one.
    expect(eventBridge.commandCalls(PutEventsCommand).map((c) => c.args[0].input.Entries!.length)).toEqual([4, 1, 1]);
  });

  it('reports a batch whose call failed outright, with the reason', async () => {
    eventBridge.on(PutEventsCommand).rejects(new Error('connect ETIMEDOUT'));
    const err = await new EventBridgePublisher(client, { attempts: 2, backoff: noWait })
      .publish(SAMPLES.slice(0, 1))
      .catch((e) => e);
    expect(err.failures).toEqual([
      { type: 'Migration Phase Changed', migrationId: 'shop', reason: 'connect ETIMEDOUT' },
    ]);
    expect(eventBridge.commandCalls(PutEventsCommand)).toHaveLength(2);
  });

  it('refuses a detail its schema does not allow, before sending anything', async () => {
    const bad: PgferryEvent = { type: 'Cutover Completed', detail: { migrationId: 'shop', at: 'now' } };
    const err = await new EventBridgePublisher(client).publish([SAMPLES[0]!, bad]).catch((e) => e);
    expect(err).toBeInstanceOf(EventPublishFailedError);
    expect(err.message).toMatch(/"Cutover Completed" event does not match its schema.*at: .*direction: /s);
    expect(eventBridge.calls()).toHaveLength(0);
  });

  it('redacts passwords a message picked up before the detail leaves', async () => {
    eventBridge.on(PutEventsCommand).resolves({ FailedEntryCount: 0, Entries: [{ EventId: 'x' }] });
    await new EventBridgePublisher(client).publish([
      {
        type: 'Migration Failed',
        detail: {
          migrationId: 'shop',
          at: '2026-11-02T11:06:00.000Z',
          errorName: 'ConnectionFailedError',
          message: 'could not connect to postgres://app:hunter2@10.0.0.5:5432/shop, password=hunter2 given',
        },
      },
    ]);
    const detail = eventBridge.commandCalls(PutEventsCommand)[0]!.args[0].input.Entries![0]!.Detail!;
    expect(detail).not.toContain('hunter2');
    expect(JSON.parse(detail).message).toBe(
      'could not connect to postgres://app:***@10.0.0.5:5432/shop, password=*** given',
    );
  });

  it('uses the bus it is given', async () => {
    eventBridge.on(PutEventsCommand).resolves({ FailedEntryCount: 0, Entries: [{ EventId: 'x' }] });
    await new EventBridgePublisher(client, { busName: 'pgferry-staging' }).publish(SAMPLES.slice(0, 1));
    expect(eventBridge.commandCalls(PutEventsCommand)[0]!.args[0].input.Entries![0]!.EventBusName).toBe(
      'pgferry-staging',
    );
  });
});
