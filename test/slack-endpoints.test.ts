/**
 * The Slack endpoints, the worker and the message function as they run in Lambda: AWS through
 * aws-sdk-client-mock, Slack's Web API and response URLs through a local HTTP server standing in for
 * Slack, the replay cache and message record on DynamoDB Local.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { DatabaseMigrationServiceClient } from '@aws-sdk/client-database-migration-service';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { EventBridgeClient } from '@aws-sdk/client-eventbridge';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { RDSClient } from '@aws-sdk/client-rds';
import { S3Client } from '@aws-sdk/client-s3';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import {
  DescribeExecutionCommand,
  SendTaskFailureCommand,
  SendTaskSuccessCommand,
  SFNClient,
  StartExecutionCommand,
  StopExecutionCommand,
} from '@aws-sdk/client-sfn';
import { DynamoDBDocumentClient, PutCommand } from '@aws-sdk/lib-dynamodb';
import {
  cachedSecretString,
  DynamoReplayCache,
  DynamoSlackMessages,
  handleSlackWork,
  SfnTaskCallbacks,
  type SlackMessageRecord,
  type SlackMessages,
  SlackWebApi,
  type SlackWork,
  type SlackWorkDeps,
  startFromPlan,
} from '@pgferry/aws';
import {
  type DeploymentEnv,
  MIGRATION_ID,
  type MigrationState,
  parseMigrationConfig,
  parseMigrationPlan,
  rollbackExecutionInput,
  SLACK_ACTIONS,
  type SlackEnv,
  slackSignature,
} from '@pgferry/core';
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import type { AwsClients } from '../functions/lib/aws-deps';
import { slackEndpointDeps } from '../functions/lib/slack-deps';
import { createSlackEndpoint, type SlackEndpoint } from '../functions/lib/slack-endpoint';
import { createHandler as createMessageHandler } from '../functions/slack/events';
import { createHandler as createWorkerHandler } from '../functions/slack/worker';
import { type LocalDynamo, startDynamoLocal } from './harness/dynamodb';
import { MemoryMigrationStore } from './harness/memory-store';

const SIGNING_SECRET = 'slack-signing-secret-3f9a0c77d1e2b4a5';
const BOT_TOKEN = 'xoxb-1111-2222-slackbottokenvalue';
const SIGNING_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgferry/slack-signing-AbCdEf';
const BOT_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgferry/slack-bot-GhIjKl';
const MACHINE_ARN = 'arn:aws:states:eu-west-1:123456789012:stateMachine:test-pgferry-migration';
const TOKEN = 'approval-task-token-of-m1';
const APPROVER = 'U0APPROVER';
const OTHER = 'U0OTHERDEV';

const DEPLOYMENT: DeploymentEnv = {
  tableName: 'test-pgferry-Migrations',
  busName: 'test-pgferry-events',
  bucketName: 'test-pgferry-artifacts',
  stage: 'test',
};
const ENV: SlackEnv = {
  signingSecretArn: SIGNING_ARN,
  botTokenArn: BOT_ARN,
  access: { users: [APPROVER, OTHER], channels: [] },
  channel: 'C0MIGRATE',
  stateMachineArn: MACHINE_ARN,
  workerFunction: 'test-pgferry-SlackWorker',
};

const region = 'eu-west-1';
const clients: AwsClients & { lambda: LambdaClient } = {
  dynamo: new DynamoDBClient({ region }),
  sfn: new SFNClient({ region }),
  events: new EventBridgeClient({ region }),
  rds: new RDSClient({ region }),
  secrets: new SecretsManagerClient({ region }),
  cloudwatch: new CloudWatchClient({ region }),
  dms: new DatabaseMigrationServiceClient({ region }),
  s3: new S3Client({ region }),
  lambda: new LambdaClient({ region }),
};
const secretsMock = mockClient(clients.secrets);
const sfnMock = mockClient(clients.sfn);
const lambdaMock = mockClient(clients.lambda);
// The replay cache sends through a document client made from `clients.dynamo`: mocked on its class.
const documentMock = mockClient(DynamoDBDocumentClient);

// ---- Slack, standing in: one local server for the Web API and the response URLs -------------------------

interface Received {
  path: string;
  authorization?: string;
  body: Record<string, unknown>;
}
let slack: Server;
let slackUrl = '';
let received: Received[] = [];
let webApiAnswer: (path: string, body: Record<string, unknown>) => Record<string, unknown>;

beforeAll(async () => {
  slack = createServer((req, res) => {
    let text = '';
    req.on('data', (c) => {
      text += c;
    });
    req.on('end', () => {
      const body = JSON.parse(text || '{}') as Record<string, unknown>;
      const path = req.url ?? '';
      received.push({ path, authorization: req.headers.authorization, body });
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(path.startsWith('/api/') ? webApiAnswer(path, body) : { ok: true }));
    });
  });
  slack.listen(0, '127.0.0.1');
  await once(slack, 'listening');
  slackUrl = `http://127.0.0.1:${(slack.address() as { port: number }).port}`;
});
afterAll(async () => {
  await new Promise((r) => slack.close(r));
});

const http = () => ({ responseUrlPrefix: `${slackUrl}/hooks/`, apiBaseUrl: `${slackUrl}/api/` });

// ---- Requests as Slack signs them ----------------------------------------------------------------------

function slackEvent(
  body: string,
  options: { secret?: string; base64?: boolean; headers?: Record<string, string>; signedBody?: string } = {},
): APIGatewayProxyEventV2 {
  const timestamp = String(Math.floor(Date.now() / 1000));
  const signature = slackSignature(options.secret ?? SIGNING_SECRET, timestamp, options.signedBody ?? body);
  return {
    version: '2.0',
    routeKey: 'POST /slack/commands',
    rawPath: '/slack/commands',
    rawQueryString: '',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      'x-slack-request-timestamp': timestamp,
      'x-slack-signature': signature,
      ...options.headers,
    },
    body: options.base64 ? Buffer.from(body, 'utf8').toString('base64') : body,
    isBase64Encoded: options.base64 ?? false,
    requestContext: {} as APIGatewayProxyEventV2['requestContext'],
  };
}

const form = (fields: Record<string, string>) => new URLSearchParams(fields).toString();
const command = (text: string, user = APPROVER) =>
  form({ text, user_id: user, channel_id: 'C0OPS', response_url: `${slackUrl}/hooks/commands/1` });
const click = (action: string, id: string, user = APPROVER) =>
  form({
    payload: JSON.stringify({
      type: 'block_actions',
      user: { id: user },
      channel: { id: 'C0OPS' },
      actions: [{ action_id: action, value: id }],
      response_url: `${slackUrl}/hooks/actions/1`,
    }),
  });

/** A stateful stand-in for the replay cache's conditional put: a second put of the same key fails. */
function replayTable() {
  const seen = new Set<string>();
  documentMock.on(PutCommand).callsFake((input: { Item: { pk: string } }) => {
    if (seen.has(input.Item.pk)) {
      const err = new Error('The conditional request failed');
      err.name = 'ConditionalCheckFailedException';
      throw err;
    }
    seen.add(input.Item.pk);
    return {};
  });
}

const logged: string[] = [];
function endpoint(kind: SlackEndpoint) {
  const deps = slackEndpointDeps(clients, {
    env: ENV,
    deployment: DEPLOYMENT,
    log: (m) => logged.push(m),
    http: http(),
  });
  return createSlackEndpoint(kind, () => deps);
}
const call = (handler: ReturnType<typeof endpoint>, event: APIGatewayProxyEventV2) =>
  handler(event, {} as never) as Promise<APIGatewayProxyStructuredResultV2>;
const invoked = () =>
  lambdaMock.commandCalls(InvokeCommand).map((c) => {
    const input = c.args[0].input;
    return { ...input, Payload: JSON.parse(Buffer.from(input.Payload as Uint8Array).toString('utf8')) };
  });

beforeEach(() => {
  for (const m of [secretsMock, sfnMock, lambdaMock, documentMock]) m.reset();
  secretsMock.on(GetSecretValueCommand, { SecretId: SIGNING_ARN }).resolves({ SecretString: SIGNING_SECRET });
  secretsMock.on(GetSecretValueCommand, { SecretId: BOT_ARN }).resolves({ SecretString: BOT_TOKEN });
  lambdaMock.on(InvokeCommand).resolves({ StatusCode: 202 });
  received = [];
  logged.length = 0;
  webApiAnswer = () => ({ ok: true, channel: 'C0MIGRATE', ts: '1733486400.000100' });
  replayTable();
});
afterEach(() => {
  vi.restoreAllMocks();
});

// ---- Migrations ---------------------------------------------------------------------------------------

function migration(id: string, overrides: Partial<MigrationState> = {}): MigrationState {
  return {
    id,
    version: 3,
    createdAt: '2026-12-06T11:00:00.000Z',
    updatedAt: '2026-12-06T11:30:00.000Z',
    status: 'awaiting-cutover',
    phase: 'catch-up',
    planName: 'shop',
    config: parseMigrationConfig({
      id,
      sourceUrl: 'postgres://app@old-db:5432/shop',
      targetUrl: 'postgres://admin@new-db:5432/shop',
    }),
    phases: {},
    events: [],
    ...overrides,
  };
}

class MemoryMessages implements SlackMessages {
  readonly records = new Map<string, SlackMessageRecord>();
  async get(id: string) {
    return this.records.get(id);
  }
  async put(id: string, record: SlackMessageRecord) {
    this.records.set(id, { ...record });
  }
}

async function workerDeps(states: MigrationState[]) {
  const store = new MemoryMigrationStore();
  for (const s of states) await store.create(s, { sourceUrl: 'postgres://x', targetUrl: 'postgres://y' });
  const start = vi.fn<SlackWorkDeps['start']>(async () => ({
    migrationId: 'm9',
    executionArn: `${MACHINE_ARN.replace(':stateMachine:', ':execution:')}:m9`,
    alreadyStarted: false,
  }));
  const responses: { url: string; text: string }[] = [];
  const messages = new MemoryMessages();
  const deps: SlackWorkDeps & { respond(url: string, r: { text: string }): Promise<void> } = {
    store,
    plans: {
      getPlan: async (name) =>
        name === 'shop' ? { approvers: { users: [APPROVER], channels: [] as string[] } } : undefined,
    },
    sfn: clients.sfn,
    callbacks: new SfnTaskCallbacks(clients.sfn),
    stateMachineArn: MACHINE_ARN,
    start,
    messages,
    respond: async (url, r) => {
      responses.push({ url, text: r.text });
    },
    log: (m) => logged.push(m),
  };
  return { store, start, deps, responses, messages };
}

const work = (kind: 'approve' | 'rollback' | 'abort' | 'resume', id: string, userId = APPROVER): SlackWork => ({
  command: { kind, id },
  actor: { userId, channelId: 'C0OPS' },
  via: 'button',
  responseUrl: `${slackUrl}/hooks/actions/1`,
});

// ---- The tests ----------------------------------------------------------------------------------------

describe('the Slack endpoints', () => {
  it('answer a command at once and hand its work to the worker asynchronously, never waiting for the work', async () => {
    // Were the endpoint to do the work itself, it would wait on Step Functions forever.
    sfnMock.onAnyCommand().callsFake(() => new Promise(() => {}));
    const handler = endpoint('commands');
    const res = await call(handler, slackEvent(command('approve m1'), { base64: true }));
    expect(res.statusCode).toBe(200);
    expect(JSON.parse(res.body!)).toEqual({ response_type: 'ephemeral', text: 'Approving the cutover of `m1`…' });
    expect(invoked()).toEqual([
      {
        FunctionName: 'test-pgferry-SlackWorker',
        InvocationType: 'Event',
        Payload: {
          command: { kind: 'approve', id: 'm1' },
          actor: { userId: APPROVER, channelId: 'C0OPS' },
          via: 'command',
          responseUrl: `${slackUrl}/hooks/commands/1`,
          requestKey: expect.stringMatching(/^v0=[0-9a-f]{64}$/),
        },
      },
    ]);
    expect(sfnMock.calls()).toHaveLength(0);
  });

  it('check the signature on the raw bytes first: tampered, unsigned, wrongly signed and replayed requests get 401 and nothing is handed on', async () => {
    const handler = endpoint('commands');
    const good = slackEvent(command('abort m1'));
    const tampered = slackEvent(command('abort m2'), { signedBody: command('abort m1') });
    const unsigned = slackEvent(command('abort m1'), { headers: { 'x-slack-signature': '' } });
    const otherSecret = slackEvent(command('abort m1'), { secret: 'not-the-signing-secret' });
    for (const event of [tampered, unsigned, otherSecret]) expect((await call(handler, event)).statusCode).toBe(401);
    expect((await call(handler, good)).statusCode).toBe(200);
    expect((await call(handler, good)).statusCode).toBe(401);
    // Slack's own retry of a request already received is acknowledged, and acted on only once.
    const retried = { ...good, headers: { ...good.headers, 'x-slack-retry-num': '1' } };
    expect((await call(handler, retried)).statusCode).toBe(200);
    expect(invoked().map((i) => i.Payload.command)).toEqual([{ kind: 'abort', id: 'm1' }]);
    expect(logged.filter((l) => l.includes('refused'))).toEqual([
      'slack: refused a request to /slack/commands: invalid',
      'slack: refused a request to /slack/commands: missing',
      'slack: refused a request to /slack/commands: invalid',
      'slack: refused a request to /slack/commands: replayed',
    ]);
    // The signing secret is read once per container, however many requests come.
    expect(secretsMock.commandCalls(GetSecretValueCommand)).toHaveLength(1);
  });

  it('refuse users and channels not configured politely, changing nothing; help is for anyone', async () => {
    const handler = endpoint('commands');
    const refused = await call(handler, slackEvent(command('approve m1', 'U0INTRUDER')));
    expect(refused.statusCode).toBe(200);
    expect(JSON.parse(refused.body!).text).toMatch(/^Sorry <@U0INTRUDER>, you are not allowed to approve cutovers/);
    const help = await call(handler, slackEvent(command('help', 'U0INTRUDER')));
    expect(JSON.parse(help.body!).text).toContain('/pgferry start <plan>');
    const malformed = await call(handler, slackEvent(command('approve', APPROVER)));
    expect(JSON.parse(malformed.body!).text).toMatch(/`approve` needs a migration id/);
    expect(invoked()).toEqual([]);
  });

  it('hand a gate button click to the worker; a click by someone not configured is answered through response_url', async () => {
    const handler = endpoint('interactions');
    const ok = await call(handler, slackEvent(click(SLACK_ACTIONS.approve, 'm1')));
    expect(ok.statusCode).toBe(200);
    const refused = await call(handler, slackEvent(click(SLACK_ACTIONS.rollback, 'm1', 'U0INTRUDER')));
    expect(refused.statusCode).toBe(200);
    expect(invoked().map((i) => i.Payload)).toEqual([
      {
        command: { kind: 'approve', id: 'm1' },
        actor: { userId: APPROVER, channelId: 'C0OPS' },
        via: 'button',
        responseUrl: `${slackUrl}/hooks/actions/1`,
      },
    ]);
    expect(received).toEqual([
      {
        path: '/hooks/actions/1',
        body: expect.objectContaining({
          response_type: 'ephemeral',
          text: expect.stringMatching(/^Sorry <@U0INTRUDER>, you are not allowed to roll migrations back/),
        }),
      },
    ]);
  });
});

describe('the Slack worker', () => {
  it('approve: two concurrent clicks complete the waiting token with SendTaskSuccess exactly once', async () => {
    const { store, deps } = await workerDeps([migration('m1')]);
    await store.putTaskToken('m1', 'awaitApproval', TOKEN);
    sfnMock.on(SendTaskSuccessCommand).resolves({});
    const worker = createWorkerHandler(() => deps);
    const answers = await Promise.all([
      worker(work('approve', 'm1'), {} as never),
      worker(work('approve', 'm1'), {} as never),
    ]);
    const calls = sfnMock.commandCalls(SendTaskSuccessCommand).map((c) => c.args[0].input);
    expect(calls).toEqual([
      { taskToken: TOKEN, output: JSON.stringify({ summary: `cutover approved in Slack by ${APPROVER}` }) },
    ]);
    expect(sfnMock.calls()).toHaveLength(1);
    expect(answers.map((a) => a.text).sort()).toEqual([
      expect.stringMatching(/^Cutover of `m1` approved by <@U0APPROVER>/),
      expect.stringMatching(/^Nothing waits for a decision on `m1` any more/),
    ]);
    expect(store.tokens.size).toBe(0);
  });

  it('approve: a click that took the token of a window that had just ended completes the renewed token, exactly once', async () => {
    const { store, deps } = await workerDeps([migration('m1')]);
    const RENEWED = `${TOKEN}-renewed`;
    await store.putTaskToken('m1', 'awaitApproval', TOKEN);
    // The window ended as the click arrived: Step Functions answers TaskTimedOut, and the next window
    // files its token (the waiting task does that first thing).
    sfnMock.on(SendTaskSuccessCommand, { taskToken: TOKEN }).callsFake(async () => {
      setTimeout(() => void store.putTaskToken('m1', 'awaitApproval', RENEWED), 300);
      throw Object.assign(new Error('Task Timed Out'), { name: 'TaskTimedOut' });
    });
    sfnMock.on(SendTaskSuccessCommand, { taskToken: RENEWED }).resolves({});
    const answer = await handleSlackWork(work('approve', 'm1'), deps);
    expect(sfnMock.commandCalls(SendTaskSuccessCommand).map((c) => c.args[0].input.taskToken)).toEqual([
      TOKEN,
      RENEWED,
    ]);
    expect(answer.text).toMatch(/^Cutover of `m1` approved by <@U0APPROVER>/);
    expect(store.tokens.size).toBe(0);

    // No new window within the wait (the execution stopped): nothing is claimed done; press again.
    sfnMock.reset();
    await store.putTaskToken('m1', 'awaitApproval', TOKEN);
    sfnMock.on(SendTaskSuccessCommand).rejects(Object.assign(new Error('Task Timed Out'), { name: 'TaskTimedOut' }));
    const lost = await handleSlackWork(work('approve', 'm1'), { ...deps, renewedTokenWaitMs: 600 });
    expect(sfnMock.commandCalls(SendTaskSuccessCommand)).toHaveLength(1);
    expect(lost.text).toMatch(/approval window of `m1` had just ended .*nothing was changed.*press again/);
    expect(lost.text).not.toMatch(/approved/);
  });

  it('approve: only the approvers of the migration’s plan; anyone else changes nothing and the token stays', async () => {
    const { store, deps, responses } = await workerDeps([migration('m1')]);
    await store.putTaskToken('m1', 'awaitApproval', TOKEN);
    for (const kind of ['approve', 'rollback', 'abort'] as const) await handleSlackWork(work(kind, 'm1', OTHER), deps);
    expect(sfnMock.calls()).toHaveLength(0);
    expect(store.tokens.get('m1#awaitApproval')).toBe(TOKEN);
    expect(responses).toHaveLength(3);
    for (const r of responses) expect(r.text).toMatch(/Only the approvers of plan `shop` may act on `m1`/);
  });

  it('rollback at the gate fails the approval token with CutoverRejectedError, which the workflow routes to "Roll back"', async () => {
    const { store, deps } = await workerDeps([migration('m1')]);
    await store.putTaskToken('m1', 'awaitApproval', TOKEN);
    sfnMock.on(SendTaskFailureCommand).resolves({});
    const answer = await handleSlackWork(work('rollback', 'm1'), deps);
    expect(sfnMock.calls().map((c) => c.args[0].input)).toEqual([
      {
        taskToken: TOKEN,
        error: 'CutoverRejectedError',
        cause: `rollback requested in Slack by ${APPROVER} at the cutover gate`,
      },
    ]);
    expect(answer.text).toMatch(/^Rolling back `m1`/);
  });

  it('rollback after the switch stops the baking execution and starts one rollback execution; a second click starts none', async () => {
    const cutOver = migration('m2', {
      status: 'cut-over',
      phase: 'verify',
      cutover: { switchStartedAt: '2026-12-06T12:00:00.000Z', switchAt: '2026-12-06T12:00:01.000Z' },
    });
    const { deps } = await workerDeps([cutOver]);
    const executionArn = 'arn:aws:states:eu-west-1:123456789012:execution:test-pgferry-migration:m2';
    const none = Object.assign(new Error('none'), { name: 'ExecutionDoesNotExist' });
    sfnMock
      .on(DescribeExecutionCommand)
      .resolves({ status: 'RUNNING' })
      // The rollback execution: none yet at the first click, running at the second.
      .on(DescribeExecutionCommand, { executionArn: `${executionArn}-rollback` })
      .rejectsOnce(none)
      .resolves({ status: 'RUNNING' });
    sfnMock.on(StopExecutionCommand).resolves({});
    sfnMock
      .on(StartExecutionCommand)
      .resolvesOnce({ executionArn: `${executionArn}-rollback` })
      .rejects(Object.assign(new Error('exists'), { name: 'ExecutionAlreadyExists' }));
    const first = await handleSlackWork(work('rollback', 'm2'), deps);
    const second = await handleSlackWork(work('rollback', 'm2'), deps);
    expect(sfnMock.commandCalls(StartExecutionCommand)).toHaveLength(1);
    expect(sfnMock.commandCalls(StopExecutionCommand).map((c) => c.args[0].input)[0]).toEqual({
      executionArn,
      error: 'RollbackRequested',
      cause: `rollback requested in Slack by ${APPROVER}`,
    });
    const starts = sfnMock.commandCalls(StartExecutionCommand).map((c) => c.args[0].input);
    expect(starts[0]).toEqual({
      stateMachineArn: MACHINE_ARN,
      name: 'm2-rollback',
      input: JSON.stringify(rollbackExecutionInput('m2')),
    });
    expect(JSON.parse(starts[0]!.input!)).toMatchObject({ migrationId: 'm2', action: 'rollback' });
    expect(first.text).toMatch(/^Rolling `m2` back to the source/);
    expect(second.text).toMatch(/^A rollback of `m2` was started already \(`m2-rollback`\)/);
  });

  it('rollback asked for again after the last rollback execution failed starts the next one; resume stays refused', async () => {
    const cutOver = migration('m8', {
      status: 'cut-over',
      phase: 'rollback',
      cutover: { switchStartedAt: '2026-12-06T12:00:00.000Z', switchAt: '2026-12-06T12:00:01.000Z' },
    });
    const { deps } = await workerDeps([cutOver]);
    const arn = (name: string) => `${MACHINE_ARN.replace(':stateMachine:', ':execution:')}:${name}`;
    const none = Object.assign(new Error('none'), { name: 'ExecutionDoesNotExist' });
    // The rollback failed (the target away, or a task of the stopped execution held the migration past
    // the wait): m8-rollback ended FAILED.
    sfnMock
      .on(DescribeExecutionCommand)
      .rejects(none)
      .on(DescribeExecutionCommand, { executionArn: arn('m8') })
      .resolves({ status: 'ABORTED' })
      .on(DescribeExecutionCommand, { executionArn: arn('m8-rollback') })
      .resolves({ status: 'FAILED' });
    sfnMock.on(StartExecutionCommand).resolves({ executionArn: arn('m8-rollback-2') });
    const again = await handleSlackWork(work('rollback', 'm8'), deps);
    expect(sfnMock.commandCalls(StartExecutionCommand).map((c) => c.args[0].input)).toEqual([
      { stateMachineArn: MACHINE_ARN, name: 'm8-rollback-2', input: JSON.stringify(rollbackExecutionInput('m8')) },
    ]);
    expect(again.text).toMatch(
      /^Rolling `m8` back to the source .* Started again as `m8-rollback-2`: `m8-rollback: FAILED`\.$/,
    );
    expect(sfnMock.commandCalls(StopExecutionCommand)).toHaveLength(0);

    // While the second runs, another rollback starts nothing (resume: the test of resume below).
    sfnMock.on(DescribeExecutionCommand, { executionArn: arn('m8-rollback-2') }).resolves({ status: 'RUNNING' });
    const third = await handleSlackWork(work('rollback', 'm8'), deps);
    expect(third.text).toMatch(/^A rollback of `m8` was started already \(`m8-rollback-2`\)/);
    expect(sfnMock.commandCalls(StartExecutionCommand)).toHaveLength(1);
  });

  it('abort stops a running migration and starts its rollback; after the switch it is refused', async () => {
    const running = migration('m3', { status: 'running', phase: 'bulk-load' });
    const cutOver = migration('m4', { status: 'cut-over', cutover: { switchStartedAt: 'x', switchAt: 'y' } });
    const { deps } = await workerDeps([running, cutOver]);
    sfnMock
      .on(DescribeExecutionCommand)
      .rejects(Object.assign(new Error('none'), { name: 'ExecutionDoesNotExist' }))
      .on(DescribeExecutionCommand, { executionArn: `${MACHINE_ARN.replace(':stateMachine:', ':execution:')}:m3` })
      .resolves({ status: 'RUNNING' });
    sfnMock.on(StopExecutionCommand).resolves({});
    sfnMock.on(StartExecutionCommand).resolves({ executionArn: 'arn' });
    const aborted = await handleSlackWork(work('abort', 'm3'), deps);
    const refused = await handleSlackWork(work('abort', 'm4'), deps);
    // The execution named after it, stopped; none had continued or resumed it (m3-continued-1 and
    // m3-resumed-1 do not exist).
    expect(sfnMock.calls().map((c) => c.args[0].constructor.name)).toEqual([
      'DescribeExecutionCommand',
      'DescribeExecutionCommand',
      'DescribeExecutionCommand',
      'StopExecutionCommand',
      // No rollback execution yet (m3-rollback): the first is started.
      'DescribeExecutionCommand',
      'StartExecutionCommand',
    ]);
    expect(sfnMock.commandCalls(StopExecutionCommand)[0]!.args[0].input).toMatchObject({
      executionArn: 'arn:aws:states:eu-west-1:123456789012:execution:test-pgferry-migration:m3',
      error: 'MigrationAborted',
    });
    expect(aborted.text).toMatch(/^Aborted `m3`/);
    expect(refused.text).toMatch(/`m4` is cut over already: `\/pgferry rollback m4`/);
  });

  it('abort stops the execution the catch-up continued in, and the one that just continued it before it was recorded', async () => {
    const continued = migration('m5', {
      status: 'running',
      phase: 'catch-up',
      execution: { name: 'm5-continued-1', number: 1, since: '2026-12-07T01:00:00.000Z' },
    });
    const { deps } = await workerDeps([continued]);
    const arn = (name: string) => `${MACHINE_ARN.replace(':stateMachine:', ':execution:')}:${name}`;
    // m5-continued-1 has just started m5-continued-2 and ended; the store does not name the new one yet.
    sfnMock
      .on(DescribeExecutionCommand)
      .rejects(Object.assign(new Error('none'), { name: 'ExecutionDoesNotExist' }))
      .on(DescribeExecutionCommand, { executionArn: arn('m5-continued-1') })
      .resolves({ status: 'SUCCEEDED' })
      .on(DescribeExecutionCommand, { executionArn: arn('m5-continued-2') })
      .resolves({ status: 'RUNNING' });
    sfnMock.on(StopExecutionCommand).resolves({});
    sfnMock.on(StartExecutionCommand).resolves({ executionArn: 'arn' });
    await handleSlackWork(work('abort', 'm5'), deps);
    expect(sfnMock.commandCalls(DescribeExecutionCommand).map((c) => c.args[0].input.executionArn)).toEqual([
      arn('m5-continued-1'),
      arn('m5-continued-2'),
      arn('m5-resumed-2'),
      arn('m5-rollback'),
    ]);
    expect(sfnMock.commandCalls(StopExecutionCommand).map((c) => c.args[0].input)).toEqual([
      {
        executionArn: arn('m5-continued-2'),
        error: 'MigrationAborted',
        cause: `abort requested in Slack by ${APPROVER}`,
      },
    ]);
    expect(sfnMock.commandCalls(StartExecutionCommand)).toHaveLength(1);
  });

  it('abort stops a resume started a moment ago that has not recorded itself yet, passing over one that ended unrecorded', async () => {
    const stopped = migration('m7', {
      status: 'running',
      phase: 'catch-up',
      execution: { name: 'm7', number: 0, since: '2026-12-07T01:00:00.000Z' },
    });
    const { deps } = await workerDeps([stopped]);
    const arn = (name: string) => `${MACHINE_ARN.replace(':stateMachine:', ':execution:')}:${name}`;
    // m7 stopped; a resume (m7-resumed-1) failed before its assessment; the next (m7-resumed-2) runs.
    sfnMock
      .on(DescribeExecutionCommand)
      .rejects(Object.assign(new Error('none'), { name: 'ExecutionDoesNotExist' }))
      .on(DescribeExecutionCommand, { executionArn: arn('m7') })
      .resolves({ status: 'FAILED' })
      .on(DescribeExecutionCommand, { executionArn: arn('m7-resumed-1') })
      .resolves({ status: 'FAILED' })
      .on(DescribeExecutionCommand, { executionArn: arn('m7-resumed-2') })
      .resolves({ status: 'RUNNING' });
    sfnMock.on(StopExecutionCommand).resolves({});
    sfnMock.on(StartExecutionCommand).resolves({ executionArn: 'arn' });
    await handleSlackWork(work('abort', 'm7'), deps);
    expect(sfnMock.commandCalls(StopExecutionCommand).map((c) => c.args[0].input.executionArn)).toEqual([
      arn('m7-resumed-2'),
    ]);
    expect(sfnMock.commandCalls(StartExecutionCommand).map((c) => c.args[0].input.name)).toEqual(['m7-rollback']);
  });

  it('resume starts the next execution of a stopped migration by the rule of `pgferry start --id`; nothing while one runs, once it is over, or for someone not an approver', async () => {
    const since = '2026-12-07T01:00:00.000Z';
    const stopped = migration('m6', {
      status: 'running',
      phase: 'catch-up',
      execution: { name: 'm6-continued-2', number: 2, since },
    });
    const over = (['rolled-back', 'completed', 'cleaned-up', 'failed'] as const).map((status, i) =>
      migration(`m${10 + i}`, { status, phase: 'cleanup', execution: { name: `m${10 + i}`, number: 0, since } }),
    );
    const local = migration('m20', { status: 'running', planName: undefined });
    const { deps, store } = await workerDeps([stopped, ...over, local]);
    // The real startFromPlan (packages/aws start.ts), reading the plan from the store.
    Object.assign(store, {
      getPlan: async (name: string) =>
        name === 'shop'
          ? parseMigrationPlan({
              name: 'shop',
              source: { secretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-source-AbCdEf' },
              target: {
                kind: 'existing',
                instanceIdentifier: 'shop-db',
                secretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-target-AbCdEf',
              },
              strategy: 'snapshot',
              cutover: { policy: 'manual' },
              switch: { kind: 'ssm-parameter', name: '/shop/database-url' },
              approvers: { users: [APPROVER] },
            })
          : undefined,
    });
    deps.start = startFromPlan;
    const arn = (name: string) => `${MACHINE_ARN.replace(':stateMachine:', ':execution:')}:${name}`;

    // Typed in Slack: acknowledged at once and handed to the worker, which takes it.
    const res = await call(endpoint('commands'), slackEvent(command('resume m6')));
    expect(JSON.parse(res.body!).text).toBe('Resuming `m6`…');
    const [handed] = invoked();
    expect(handed!.Payload.command).toEqual({ kind: 'resume', id: 'm6' });
    const worker = createWorkerHandler(() => deps);
    const resume = (id: string, user = APPROVER) =>
      worker(
        { ...handed!.Payload, command: { kind: 'resume', id }, actor: { userId: user, channelId: 'C0OPS' } },
        {} as never,
      ) as Promise<{ text: string }>;

    // Its last execution still runs: nothing is started.
    sfnMock.on(DescribeExecutionCommand, { executionArn: arn('m6-continued-2') }).resolves({ status: 'RUNNING' });
    expect((await resume('m6')).text).toBe(
      '`m6` is running already, in execution `m6-continued-2`; nothing was started. `/pgferry status m6` shows where it stands.',
    );
    expect(sfnMock.commandCalls(StartExecutionCommand)).toHaveLength(0);

    // Someone allowed to use /pgferry but not an approver of the plan: nothing is asked of Step Functions.
    sfnMock.reset();
    expect((await resume('m6', OTHER)).text).toMatch(/you are not an approver of plan `shop`, so nothing was changed/);
    expect(sfnMock.calls()).toHaveLength(0);

    // It stopped (resumable): the next execution, numbered on from the last.
    sfnMock
      .on(DescribeExecutionCommand)
      .rejects(Object.assign(new Error('none'), { name: 'ExecutionDoesNotExist' }))
      .on(DescribeExecutionCommand, { executionArn: arn('m6-continued-2') })
      .resolves({ status: 'FAILED' });
    sfnMock.on(StartExecutionCommand).resolves({ executionArn: arn('m6-resumed-3') });
    expect((await resume('m6')).text).toBe(
      `Resumed \`m6\` (requested by <@${APPROVER}>) in execution \`m6-resumed-3\`: it goes on from where it stopped.`,
    );
    const started = sfnMock.commandCalls(StartExecutionCommand).map((c) => c.args[0].input);
    expect(started).toEqual([{ stateMachineArn: MACHINE_ARN, name: 'm6-resumed-3', input: expect.any(String) }]);
    expect(JSON.parse(started[0]!.input!)).toMatchObject({ migrationId: 'm6', action: 'migrate', execution: 3 });

    // Over (rolled back, aborted: rolled back or cleaned up; completed; failed): refused, nothing started.
    sfnMock.reset();
    sfnMock.on(DescribeExecutionCommand).resolves({ status: 'SUCCEEDED' });
    for (const s of over)
      expect((await resume(s.id)).text).toBe(
        `migration ${s.id} is ${s.status}: there is nothing to resume. Nothing was started.`,
      );
    // Aborted in Slack, whose rollback execution then failed (the migration still "running"): not resumed
    // behind the back of whoever aborted it.
    sfnMock.reset();
    sfnMock
      .on(DescribeExecutionCommand)
      .rejects(Object.assign(new Error('none'), { name: 'ExecutionDoesNotExist' }))
      .on(DescribeExecutionCommand, { executionArn: arn('m6-continued-2') })
      .resolves({ status: 'ABORTED' })
      .on(DescribeExecutionCommand, { executionArn: arn('m6-rollback') })
      .resolves({ status: 'FAILED' });
    expect((await resume('m6')).text).toMatch(
      /^migration m6 was being rolled back \(execution m6-rollback: FAILED\): it is not resumed\. Nothing was started\./,
    );
    // A rollback asked for again after that one failed (m6-rollback-2) runs: nothing is started beside it.
    sfnMock.on(DescribeExecutionCommand, { executionArn: arn('m6-rollback-2') }).resolves({ status: 'RUNNING' });
    expect((await resume('m6')).text).toMatch(
      /^`m6` is running already, in execution `m6-rollback-2`; nothing was started/,
    );
    expect(sfnMock.commandCalls(StartExecutionCommand)).toHaveLength(0);
    // Not started from a plan (the CLI ran it): not Slack's to resume.
    expect((await resume('m20')).text).toMatch(
      /^`m20` was not started from a plan, so Slack cannot resume it; nothing was started\. .*`pgferry resume --id m20`/,
    );
    expect(sfnMock.commandCalls(StartExecutionCommand)).toHaveLength(0);
  });

  it('start calls startFromPlan with the plan and the Slack user, and files the channel for the message', async () => {
    const { deps, start, messages } = await workerDeps([]);
    const answer = await handleSlackWork(
      { command: { kind: 'start', plan: 'shop' }, actor: { userId: APPROVER, channelId: 'C0OPS' }, via: 'command' },
      deps,
    );
    expect(start).toHaveBeenCalledTimes(1);
    expect(start.mock.calls[0]![0]).toEqual({ planName: 'shop', requestedBy: APPROVER });
    expect(start.mock.calls[0]![1]).toEqual({ store: deps.store, sfn: clients.sfn, stateMachineArn: MACHINE_ARN });
    expect(answer.text).toBe('Started migration `m9` from plan `shop`.');
    expect(await messages.get('m9')).toEqual({ channel: 'C0OPS' });
    const unknown = await handleSlackWork(
      { command: { kind: 'start', plan: 'nope' }, actor: { userId: APPROVER }, via: 'command' },
      deps,
    );
    expect(unknown.text).toMatch(/^There is no plan `nope`; nothing was started/);
    expect(start).toHaveBeenCalledTimes(1);
  });

  it('start names the migration after the Slack request, so a retried invocation of the same work starts the same migration', async () => {
    const { deps, start } = await workerDeps([]);
    const work = (requestKey: string) =>
      ({
        command: { kind: 'start', plan: 'shop' },
        actor: { userId: APPROVER, channelId: 'C0OPS' },
        via: 'command',
        requestKey,
      }) as const;
    await handleSlackWork(work('v0=aaaa'), deps);
    await handleSlackWork(work('v0=aaaa'), deps);
    await handleSlackWork(work('v0=bbbb'), deps);
    const ids = start.mock.calls.map((c) => c[0].migrationId);
    expect(ids[0]).toMatch(MIGRATION_ID);
    expect(ids[1]).toBe(ids[0]);
    expect(ids[2]).toMatch(MIGRATION_ID);
    expect(ids[2]).not.toBe(ids[0]);
  });

  it('status shows the migration’s message, or the list; a failure is answered through response_url, redacted', async () => {
    const { deps, responses } = await workerDeps([
      migration('m1', { execution: { name: 'm1-resumed-1', number: 1, since: '2026-12-07T01:00:00.000Z' } }),
      migration('m2', { status: 'running' }),
    ]);
    const one = await handleSlackWork(
      { command: { kind: 'status', id: 'm1' }, actor: { userId: APPROVER }, via: 'command' },
      deps,
    );
    expect(one.text).toMatch(/^pgferry migration m1: caught up, waiting for cutover approval/);
    expect(JSON.stringify(one.blocks)).toContain(SLACK_ACTIONS.approve);
    // The execution to look for in the Step Functions console, and that it resumed the migration.
    expect(JSON.stringify(one.blocks)).toMatch(/\*Execution\*\\n`m1-resumed-1` since [^"]*\\nresumed after a stop/);
    const all = await handleSlackWork(
      { command: { kind: 'status' }, actor: { userId: APPROVER }, via: 'command' },
      deps,
    );
    expect(all.text.split('\n').sort()).toEqual(['• `m1`: awaiting-cutover, catch-up', '• `m2`: running, catch-up']);
    const missing = await handleSlackWork(work('approve', 'm7'), deps);
    expect(missing.text).toBe('There is no migration `m7`; nothing was changed.');
    await deps.store.putTaskToken?.('m1', 'awaitApproval', TOKEN);
    sfnMock.on(SendTaskSuccessCommand).rejects(new Error('connect ETIMEDOUT postgres://app:hunter2@old-db/shop'));
    const failed = await handleSlackWork(work('approve', 'm1'), deps);
    expect(failed.text).toMatch(/^:x: `approve` failed: connect ETIMEDOUT/);
    expect(failed.text).not.toContain('hunter2');
    expect(responses.at(-1)).toEqual({ url: `${slackUrl}/hooks/actions/1`, text: failed.text });
    // Step Functions did not answer: the token is back for the next click.
    expect(await deps.store.takeTaskToken?.('m1', 'awaitApproval')).toBe(TOKEN);
  });
});

describe('the Slack functions’ input', () => {
  it('is refused naming the field when it is not what the endpoints or the bus send, and nothing is done', async () => {
    const { deps } = await workerDeps([migration('m1')]);
    const worker = createWorkerHandler(() => deps);
    await expect(
      worker({ ...work('approve', 'm1'), command: { kind: 'approve', id: 'M1; drop' } }, {} as never),
    ).rejects.toThrow(/not Slack work: command\.id: /);
    await expect(
      worker({ command: { kind: 'help' }, actor: { userId: APPROVER }, via: 'command' }, {} as never),
    ).rejects.toThrow(/not Slack work: command\.kind/);
    const message = createMessageHandler(() => {
      throw new Error('no dependencies are needed to refuse an event');
    });
    await expect(
      message({ source: 'aws.rds', 'detail-type': 'Migration Failed', detail: { migrationId: 'm1' } }, {} as never),
    ).rejects.toThrow(/not a pgferry bus event: source: /);
    await expect(
      message({ source: 'pgferry', 'detail-type': 'Something Else', detail: { migrationId: 'm1' } }, {} as never),
    ).rejects.toThrow(/not a pgferry bus event: detail-type: /);
    expect(sfnMock.calls()).toHaveLength(0);
    expect(received).toEqual([]);
  });
});

describe("each migration's Slack message", () => {
  it('is posted on its first event and updated in place after, through the Web API with the bot token', async () => {
    const store = new MemoryMigrationStore();
    await store.create(migration('m1', { status: 'running', phase: 'bulk-load' }), {
      sourceUrl: 'postgres://x',
      targetUrl: 'postgres://y',
    });
    const messages = new MemoryMessages();
    let now = Date.parse('2026-12-06T12:00:00Z');
    // Made once, as the deployed handler makes them once per container.
    const deps = {
      store,
      messages,
      api: new SlackWebApi(cachedSecretString(clients.secrets, BOT_ARN), { baseUrl: `${slackUrl}/api/` }),
      defaultChannel: 'C0MIGRATE',
      now: () => now,
      log: (m: string) => logged.push(m),
    };
    const handler = createMessageHandler(() => deps);
    const event = (type: string, detail: Record<string, unknown>) => ({
      source: 'pgferry',
      'detail-type': type,
      detail: { migrationId: 'm1', at: new Date(now).toISOString(), ...detail },
    });
    expect(
      await handler(event('Migration Phase Changed', { phase: 'bulk-load', status: 'running' }), {} as never),
    ).toEqual({ action: 'posted', channel: 'C0MIGRATE', ts: '1733486400.000100' });
    now += 1000;
    const s = await store.get('m1');
    await store.put({ ...s, phase: 'catch-up', status: 'awaiting-cutover' });
    expect(
      await handler(event('Migration Phase Changed', { phase: 'catch-up', status: 'awaiting-cutover' }), {} as never),
    ).toMatchObject({ action: 'updated' });
    now += 1000;
    // A lag sample within 30 s of the last update changes nothing.
    expect(await handler(event('Replication Lag Sampled', { lagBytes: 10, lagMs: 5 }), {} as never)).toEqual({
      action: 'ignored',
      reason: 'throttled',
    });
    expect(received.map((r) => [r.path, r.authorization, r.body.channel, r.body.ts])).toEqual([
      ['/api/chat.postMessage', `Bearer ${BOT_TOKEN}`, 'C0MIGRATE', undefined],
      ['/api/chat.update', `Bearer ${BOT_TOKEN}`, 'C0MIGRATE', '1733486400.000100'],
    ]);
    expect(received[0]!.body.text).toMatch(/^pgferry migration m1: running/);
    expect(JSON.stringify(received[1]!.body.blocks)).toContain(SLACK_ACTIONS.approve);
    expect(await messages.get('m1')).toEqual({
      channel: 'C0MIGRATE',
      ts: '1733486400.000100',
      updatedAt: new Date(now - 1000).toISOString(),
    });
    // The bot token is read once per container.
    expect(secretsMock.commandCalls(GetSecretValueCommand, { SecretId: BOT_ARN })).toHaveLength(1);
    // A message someone deleted is posted anew, and the new one is updated from then on.
    webApiAnswer = (path) =>
      path === '/api/chat.update'
        ? { ok: false, error: 'message_not_found' }
        : { ok: true, channel: 'C0MIGRATE', ts: '1733486999.000200' };
    received = [];
    expect(await handler(event('Cutover Completed', { direction: 'forward', writeGapMs: 800 }), {} as never)).toEqual({
      action: 'posted',
      channel: 'C0MIGRATE',
      ts: '1733486999.000200',
    });
    expect(received.map((r) => [r.path, r.body.ts])).toEqual([
      ['/api/chat.update', '1733486400.000100'],
      ['/api/chat.postMessage', undefined],
    ]);
    expect((await messages.get('m1'))?.ts).toBe('1733486999.000200');
  });
});

describe('Slack secrets', () => {
  it('appear in no logged line: endpoints, worker and message function run with console spied on, failures included', async () => {
    const lines: string[] = [];
    for (const level of ['log', 'info', 'warn', 'error', 'debug'] as const)
      vi.spyOn(console, level).mockImplementation((...args: unknown[]) => {
        lines.push(args.map((a) => (a instanceof Error ? `${a.message} ${a.stack}` : String(a))).join(' '));
      });
    const deps = slackEndpointDeps(clients, { env: ENV, deployment: DEPLOYMENT, http: http() });
    const commands = createSlackEndpoint('commands', () => deps);
    const interactions = createSlackEndpoint('interactions', () => deps);
    await call(commands, slackEvent(command('approve m1')));
    await call(commands, slackEvent(command('approve m1'), { secret: 'wrong' }));
    await call(interactions, slackEvent(click(SLACK_ACTIONS.approve, 'm1')));
    await call(interactions, slackEvent(click(SLACK_ACTIONS.approve, 'm1'), { signedBody: 'x' }));
    const { deps: worker, store } = await workerDeps([migration('m1')]);
    await store.putTaskToken('m1', 'awaitApproval', TOKEN);
    sfnMock.on(SendTaskSuccessCommand).rejects(new Error('ThrottlingException'));
    await handleSlackWork(work('approve', 'm1'), { ...worker, log: (m) => console.log(m) });
    webApiAnswer = () => ({ ok: false, error: 'invalid_auth' });
    const message = createMessageHandler(() => ({
      store,
      messages: new MemoryMessages(),
      api: new SlackWebApi(cachedSecretString(clients.secrets, BOT_ARN), { baseUrl: `${slackUrl}/api/` }),
      defaultChannel: 'C0MIGRATE',
      log: (m) => console.log(m),
    }));
    await expect(
      message({ source: 'pgferry', 'detail-type': 'Migration Failed', detail: { migrationId: 'm1' } }, {} as never),
    ).rejects.toThrow(/chat.postMessage failed: invalid_auth/);
    // The secrets were used: the signature checked out and the bot token went to Slack.
    expect(invoked()).toHaveLength(2);
    expect(received.some((r) => r.authorization === `Bearer ${BOT_TOKEN}`)).toBe(true);
    expect(lines.length).toBeGreaterThan(2);
    for (const line of lines) {
      expect(line).not.toContain(SIGNING_SECRET);
      expect(line).not.toContain(BOT_TOKEN);
    }
  });
});

describe('Slack items on DynamoDB Local', () => {
  let dynamo: LocalDynamo;
  beforeAll(async () => {
    dynamo = await startDynamoLocal();
  }, 60_000);
  afterAll(async () => {
    await dynamo?.stop();
  });

  it('remembers a signature once until its TTL, and keeps a migration’s message record', async () => {
    documentMock.restore();
    const table = await dynamo.createTable('slack-items');
    let now = Date.parse('2026-12-06T12:00:00Z');
    const cache = new DynamoReplayCache(dynamo.doc, table, () => now);
    expect(await Promise.all([cache.remember('v0=abc', 600), cache.remember('v0=abc', 600)])).toEqual(
      expect.arrayContaining([true, false]),
    );
    expect(await cache.remember('v0=def', 600)).toBe(true);
    now += 601_000;
    // Expired, though DynamoDB has not deleted it yet: remembered anew.
    expect(await cache.remember('v0=abc', 600)).toBe(true);
    const records = new DynamoSlackMessages(dynamo.doc, table);
    expect(await records.get('m1')).toBeUndefined();
    await records.put('m1', { channel: 'C0OPS' });
    expect(await records.get('m1')).toEqual({ channel: 'C0OPS' });
    await records.put('m1', { channel: 'C0OPS', ts: '1.2', updatedAt: '2026-12-06T12:00:00.000Z' });
    expect(await records.get('m1')).toEqual({ channel: 'C0OPS', ts: '1.2', updatedAt: '2026-12-06T12:00:00.000Z' });
  });
});
