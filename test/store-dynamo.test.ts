/**
 * The DynamoDB store's requests, exactly, and what DynamoDB Local cannot show: writes left unprocessed
 * by throttling. Everything else about the store runs on DynamoDB Local in store-contract.test.ts.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import {
  BatchGetCommand,
  BatchWriteCommand,
  DeleteCommand,
  DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  UpdateCommand,
} from '@aws-sdk/lib-dynamodb';
import { mockClient } from 'aws-sdk-client-mock';
import { beforeEach, describe, expect, it } from 'vitest';
import { COMMIT_WINDOW_MS, DynamoMigrationStore, sha256 } from '../packages/aws/src/index';
import type { MigrationState } from '../packages/core/src/index';

const doc = DynamoDBDocumentClient.from(
  new DynamoDBClient({ region: 'local', credentials: { accessKeyId: 'x', secretAccessKey: 'x' } }),
);
const ddb = mockClient(doc);
const NOW = Date.parse('2026-12-06T12:00:00Z');
const vault = {
  resolve: async () => ({ sourceUrl: 'postgres://a:b@s/db', targetUrl: 'postgres://a:b@t/db' }),
};
const store = () =>
  new DynamoMigrationStore({ client: doc, tableName: 'pgferry-migrations', vault, now: () => NOW, holder: 'task 7' });

function state(version: number, extra: Partial<MigrationState> = {}): MigrationState {
  return {
    id: 'm1',
    version,
    createdAt: '2026-12-06T11:00:00.000Z',
    updatedAt: '2026-12-06T11:00:00.000Z',
    status: 'running',
    phase: 'catch-up',
    config: { id: 'm1' } as MigrationState['config'],
    phases: {},
    events: [],
    ...extra,
  };
}

beforeEach(() => {
  ddb.reset();
});

describe('DynamoMigrationStore requests', () => {
  it('writes the migration item only if the version read is still stored', async () => {
    ddb.on(GetCommand).resolves({ Item: { pk: 'MIGRATION#m1', sk: 'STATE', version: 4, parts: {} } });
    ddb.on(PutCommand).resolves({});
    const next = await store().put(state(4));
    expect(next.version).toBe(5);
    expect(ddb.commandCalls(GetCommand)[0]!.args[0].input).toEqual({
      TableName: 'pgferry-migrations',
      Key: { pk: 'MIGRATION#m1', sk: 'STATE' },
      ConsistentRead: true,
    });
    const put = ddb.commandCalls(PutCommand)[0]!.args[0].input;
    expect(put).toMatchObject({
      TableName: 'pgferry-migrations',
      ConditionExpression: 'version = :read',
      ExpressionAttributeValues: { ':read': 4 },
      ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
      Item: { pk: 'MIGRATION#m1', sk: 'STATE', id: 'm1', version: 5, status: 'running', phase: 'catch-up', parts: {} },
    });
    expect(JSON.parse(String(put.Item!.body))).toMatchObject({ id: 'm1', version: 5, phase: 'catch-up' });
    expect(ddb.commandCalls(BatchWriteCommand)).toHaveLength(0); // nothing large: one item written
  });

  it('sends again the chunk writes DynamoDB left unprocessed, until all are written', async () => {
    ddb.on(GetCommand).resolves({ Item: { pk: 'MIGRATION#m1', sk: 'STATE', version: 1, parts: {} } });
    ddb.on(PutCommand).resolves({});
    const unprocessed = (requests: unknown[]) => ({ UnprocessedItems: { 'pgferry-migrations': requests as never } });
    ddb
      .on(BatchWriteCommand)
      .callsFakeOnce((input) => unprocessed(input.RequestItems['pgferry-migrations']))
      .resolves({});
    const tables = Array.from({ length: 400 }, (_, i) => ({ schema: 'public', name: `table_${i}` }));
    await store().put(state(1, { tables }));
    const batches = ddb
      .commandCalls(BatchWriteCommand)
      .map((c) => c.args[0].input.RequestItems!['pgferry-migrations']!);
    expect(batches).toHaveLength(2);
    expect(batches[1]).toEqual(batches[0]);
    expect(batches[0]![0]).toMatchObject({ PutRequest: { Item: { pk: 'MIGRATION#m1' } } });
    expect(String(batches[0]![0]!.PutRequest!.Item!.sk)).toMatch(/^PART#tables#\w+#00000$/);
  });

  it('removes the chunks of a write that lost its version check, and keeps those of one that may have landed', async () => {
    ddb.on(GetCommand).resolves({ Item: { pk: 'MIGRATION#m1', sk: 'STATE', version: 2, parts: {} } });
    ddb.on(BatchWriteCommand).resolves({});
    const tables = Array.from({ length: 400 }, (_, i) => ({ schema: 'public', name: `table_${i}` }));
    const requests = () =>
      ddb.commandCalls(BatchWriteCommand).flatMap((c) => c.args[0].input.RequestItems!['pgferry-migrations']!);

    ddb.on(PutCommand).rejects(
      Object.assign(new Error('conditional request failed'), {
        name: 'ConditionalCheckFailedException',
        Item: { version: { N: '3' } },
      }),
    );
    await expect(store().put(state(2, { tables }))).rejects.toMatchObject({
      name: 'StateConflictError',
      message: expect.stringContaining('version 3, expected 2'),
    });
    const [written, removed] = requests();
    expect(removed).toEqual({ DeleteRequest: { Key: { pk: 'MIGRATION#m1', sk: written!.PutRequest!.Item!.sk } } });

    ddb.resetHistory();
    ddb.on(PutCommand).rejects(Object.assign(new Error('socket hang up'), { name: 'TimeoutError' }));
    await expect(store().put(state(2, { tables }))).rejects.toMatchObject({ name: 'TimeoutError' });
    expect(requests().map((r) => Object.keys(r))).toEqual([['PutRequest']]);
  });

  it('gives up a write whose chunks took longer than the commit window, removing them', async () => {
    ddb.on(GetCommand).resolves({ Item: { pk: 'MIGRATION#m1', sk: 'STATE', version: 2, parts: {} } });
    ddb.on(BatchWriteCommand).resolves({});
    const tables = Array.from({ length: 400 }, (_, i) => ({ schema: 'public', name: `table_${i}` }));
    let clock = NOW;
    const slow = new DynamoMigrationStore({ client: doc, tableName: 'pgferry-migrations', vault, now: () => clock });
    ddb.on(BatchWriteCommand).callsFake(async () => {
      clock += COMMIT_WINDOW_MS + 1; // the chunk writes were throttled for that long
      return {};
    });
    await expect(slow.put(state(2, { tables }))).rejects.toMatchObject({
      message: expect.stringContaining('not committed'),
    });
    expect(ddb.commandCalls(PutCommand)).toHaveLength(0);
    const requests = ddb
      .commandCalls(BatchWriteCommand)
      .flatMap((c) => c.args[0].input.RequestItems!['pgferry-migrations']!);
    expect(requests.map((r) => Object.keys(r)[0])).toEqual(['PutRequest', 'DeleteRequest']);
    expect(requests[0]!.PutRequest!.Item!.writtenAt).toBe(NOW);
  });

  it('reads the chunks of a large field once: they never change, a new value is a new set of chunks', async () => {
    const tables = Array.from({ length: 400 }, (_, i) => ({ schema: 'public', name: `table_${i}` }));
    const json = JSON.stringify(tables);
    const parts = { tables: { set: 'abc', chunks: 1, bytes: json.length, sha256: sha256(json) } };
    const { tables: _, ...small } = state(3);
    ddb
      .on(GetCommand)
      .resolves({ Item: { pk: 'MIGRATION#m1', sk: 'STATE', version: 3, body: JSON.stringify(small), parts } });
    ddb
      .on(BatchGetCommand)
      .resolves({ Responses: { 'pgferry-migrations': [{ sk: 'PART#tables#abc#00000', data: json }] } });
    const reader = store();
    expect((await reader.get('m1')).tables).toEqual(tables);
    expect((await reader.get('m1')).tables).toEqual(tables);
    expect(ddb.commandCalls(GetCommand)).toHaveLength(2);
    expect(ddb.commandCalls(BatchGetCommand).map((c) => c.args[0].input)).toEqual([
      {
        RequestItems: {
          'pgferry-migrations': { Keys: [{ pk: 'MIGRATION#m1', sk: 'PART#tables#abc#00000' }], ConsistentRead: true },
        },
      },
    ]);
  });

  it('takes a lease with a condition on its expiry and a TTL in epoch seconds', async () => {
    ddb.on(PutCommand).resolves({});
    ddb.on(DeleteCommand).resolves({});
    const release = await store().claim('m1');
    const put = ddb.commandCalls(PutCommand)[0]!.args[0].input;
    expect(put).toMatchObject({
      TableName: 'pgferry-migrations',
      ConditionExpression: 'attribute_not_exists(pk) OR leaseUntil < :now',
      ExpressionAttributeValues: { ':now': NOW },
      Item: {
        pk: 'MIGRATION#m1',
        sk: 'LEASE',
        who: 'task 7',
        since: '2026-12-06T12:00:00.000Z',
        leaseUntil: NOW + 60_000,
        expiresAt: (NOW + 60_000) / 1000 + 60,
      },
    });
    await release();
    expect(ddb.commandCalls(DeleteCommand)[0]!.args[0].input).toEqual({
      TableName: 'pgferry-migrations',
      Key: { pk: 'MIGRATION#m1', sk: 'LEASE' },
      ConditionExpression: 'holder = :me',
      ExpressionAttributeValues: { ':me': put.Item!.holder },
    });
    expect(ddb.commandCalls(UpdateCommand)).toHaveLength(0);
  });

  it('does not report a lease lost when a renewal still in flight at its release finds it gone', async () => {
    ddb.on(PutCommand).resolves({});
    ddb.on(DeleteCommand).resolves({});
    let refuse: (err: Error) => void = () => {};
    ddb.on(UpdateCommand).callsFake(() => new Promise((_, reject) => (refuse = reject)));
    const lost: string[] = [];
    const holder = new DynamoMigrationStore({
      client: doc,
      tableName: 'pgferry-migrations',
      vault,
      renewEveryMs: 5,
      onLeaseLost: (_id, m) => lost.push(m),
    });
    const release = await holder.claim('m1');
    while (ddb.commandCalls(UpdateCommand).length === 0) await new Promise((r) => setTimeout(r, 5));
    await release();
    refuse(Object.assign(new Error('conditional request failed'), { name: 'ConditionalCheckFailedException' }));
    await new Promise((r) => setTimeout(r, 20));
    expect(lost).toEqual([]);
    expect(ddb.commandCalls(UpdateCommand)[0]!.args[0].input).toMatchObject({
      Key: { pk: 'MIGRATION#m1', sk: 'LEASE' },
      ConditionExpression: 'holder = :me',
    });
  });

  it('takes a task token with one delete that returns it', async () => {
    ddb.on(DeleteCommand).resolves({ Attributes: { token: 'tok' } });
    expect(await store().takeTaskToken('m1', 'provisionTarget')).toBe('tok');
    expect(ddb.commandCalls(DeleteCommand)[0]!.args[0].input).toEqual({
      TableName: 'pgferry-migrations',
      Key: { pk: 'MIGRATION#m1', sk: 'TOKEN#provisionTarget' },
      ConditionExpression: 'attribute_exists(pk)',
      ReturnValues: 'ALL_OLD',
    });
  });

  it('asks for its table name', () => {
    expect(() => new DynamoMigrationStore({ client: doc, tableName: '', vault })).toThrow(
      expect.objectContaining({ field: 'tableName' }),
    );
  });
});
