/**
 * A migration started in AWS from a named plan (packages/aws/src/start.ts): the record written in the
 * DynamoDB store (DynamoDB Local), the exact StartExecution request (aws-sdk-client-mock), a retried
 * start that creates nothing twice, and the definition run from the very input the start sends.
 * Then "Provision target" takes its target from that record and hands the endpoint on.
 */
import {
  CreateDBInstanceCommand,
  CreateDBParameterGroupCommand,
  DBInstanceNotFoundFault,
  DescribeDBInstancesCommand,
  DescribeDBParametersCommand,
  ModifyDBParameterGroupCommand,
  RDSClient,
} from '@aws-sdk/client-rds';
import {
  DescribeExecutionCommand,
  ExecutionAlreadyExists,
  SendTaskSuccessCommand,
  SFNClient,
  StartExecutionCommand,
} from '@aws-sdk/client-sfn';
import { ScanCommand } from '@aws-sdk/lib-dynamodb';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  DynamoMigrationStore,
  handleRdsInstanceEvent,
  RdsTargetProvisioner,
  SfnTaskCallbacks,
  startFromPlan,
} from '../packages/aws/src/index';
import { runLocalWorkflow } from '../packages/cli/src/local-workflow';
import {
  BULK_LOAD_STATES,
  type MigrationPlanInput,
  STATE,
  type TaskName,
  type TaskOutput,
  WORKFLOW_TASKS,
  type WorkflowInput,
  workflowDefinitionJson,
} from '../packages/core/src/index';
import { TEST_CLIENT_CONFIG } from './harness/aws-clients';
import { type LocalDynamo, startDynamoLocal } from './harness/dynamodb';
import { availableInstance, groupParameters, rdsInstance } from './harness/rds';

const ARN = 'arn:aws:states:eu-west-1:123456789012:stateMachine:pgferry-prod';
const SOURCE_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-source-AbCdEf';

const PLAN: MigrationPlanInput = {
  name: 'shop-to-rds',
  source: { secretArn: SOURCE_SECRET },
  target: {
    kind: 'new',
    instanceClass: 'db.r6g.large',
    engineVersion: '17',
    allocatedStorageGiB: 100,
    dbSubnetGroupName: 'shop-db',
    vpcSecurityGroupIds: ['sg-0123abcd'],
    dbName: 'shop',
  },
  strategy: 'snapshot',
  cutover: { policy: 'manual' },
  switch: { kind: 'ssm-parameter', name: '/shop/database-url' },
  approvers: { users: ['U024BE7LH'] },
  copyWorkers: 2,
};

const sfnClient = new SFNClient(TEST_CLIENT_CONFIG);
const sfn = mockClient(sfnClient);
const rdsClient = new RDSClient(TEST_CLIENT_CONFIG);
const rds = mockClient(rdsClient);

let dynamo: LocalDynamo;
let store: DynamoMigrationStore;
let table: string;
let tables = 0;

beforeAll(async () => {
  dynamo = await startDynamoLocal();
});
afterAll(async () => {
  await dynamo?.stop();
});

beforeEach(async () => {
  sfn.reset();
  rds.reset();
  table = await dynamo.createTable(`start_${++tables}`);
  // In AWS the vault reads Secrets Manager by the config's ARNs; starting a migration reads no secret.
  store = new DynamoMigrationStore({
    client: dynamo.doc,
    tableName: table,
    vault: {
      resolve: async () => {
        throw new Error('no secret is read when a migration starts');
      },
    },
  });
  await store.putPlan(PLAN);
});

const deps = () => ({ store, sfn: sfnClient, stateMachineArn: ARN, now: () => new Date('2026-12-06T20:00:00Z') });

async function items() {
  return (await dynamo.doc.send(new ScanCommand({ TableName: table }))).Items ?? [];
}

describe('startFromPlan', () => {
  it('records the migration from the plan and starts the execution named after it with the input the definition reads', async () => {
    sfn.on(StartExecutionCommand).resolves({ executionArn: `${ARN.replace('stateMachine', 'execution')}:shop1` });
    const started = await startFromPlan(
      { planName: 'shop-to-rds', requestedBy: 'U024BE7LH', migrationId: 'shop1' },
      deps(),
    );
    expect(started).toEqual({
      migrationId: 'shop1',
      executionArn: 'arn:aws:states:eu-west-1:123456789012:execution:pgferry-prod:shop1',
      alreadyStarted: false,
    });
    const expected: WorkflowInput = {
      migrationId: 'shop1',
      action: 'migrate',
      cutover: 'manual',
      approved: false,
      provisionTarget: true,
      cleanup: false,
      bakeSeconds: 0,
      copyWorkers: 2,
      execution: 0,
      continued: null,
    };
    expect(sfn.commandCalls(StartExecutionCommand).map((c) => c.args[0].input)).toEqual([
      { stateMachineArn: ARN, name: 'shop1', input: JSON.stringify(expected) },
    ]);
    const state = await store.get('shop1');
    expect(state).toMatchObject({ planName: 'shop-to-rds', requestedBy: 'U024BE7LH', status: 'running' });
    expect(state.config).toMatchObject({
      id: 'shop1',
      strategy: 'snapshot',
      cutover: 'manual',
      copyWorkers: 2,
      secrets: { source: { secretArn: SOURCE_SECRET, sslmode: 'verify-full' } },
      target: { kind: 'new', instanceClass: 'db.r6g.large', dbName: 'shop' },
      switch: { kind: 'ssm-parameter', name: '/shop/database-url' },
    });
    // No target secret before the instance exists; the URLs carry no password and never resolve.
    expect(state.config.secrets?.target).toBeUndefined();
    expect(state.config.sourceUrl).toBe('postgres://shop-source-AbCdEf@from-secret.invalid/from-secret');
    expect(state.config.targetUrl).toMatch(/^postgres:\/\/pgferry@[^:/]+\.invalid\/shop$/);
  });

  it('creates nothing twice when the same start is retried, and refuses an id taken by another plan', async () => {
    const input = () => JSON.parse(String(sfn.commandCalls(StartExecutionCommand)[0]!.args[0].input!.input));
    sfn
      .on(StartExecutionCommand)
      .resolvesOnce({ executionArn: 'arn:first' })
      .rejects(new ExecutionAlreadyExists({ message: 'Execution Already Exists', $metadata: {} }));
    await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop2' }, deps());
    const before = await items();
    sfn.on(DescribeExecutionCommand).resolves({ input: JSON.stringify(input()), status: 'RUNNING' });
    const again = await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop2' }, deps());
    expect(again).toEqual({
      migrationId: 'shop2',
      executionArn: 'arn:aws:states:eu-west-1:123456789012:execution:pgferry-prod:shop2',
      alreadyStarted: true,
    });
    expect(await items()).toEqual(before);
    expect(sfn.commandCalls(DescribeExecutionCommand).map((c) => c.args[0].input)).toEqual([
      { executionArn: 'arn:aws:states:eu-west-1:123456789012:execution:pgferry-prod:shop2' },
    ]);
    // An execution of that name with another input is not this start's.
    sfn.on(DescribeExecutionCommand).resolves({ input: '{"migrationId":"shop2","action":"rollback"}' });
    await expect(
      startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop2' }, deps()),
    ).rejects.toMatchObject({ name: 'StateConflictError', field: 'migrationId' });
    await store.putPlan({ ...PLAN, name: 'other-plan' });
    await expect(
      startFromPlan({ planName: 'other-plan', requestedBy: 'U1', migrationId: 'shop2' }, deps()),
    ).rejects.toThrow(/shop2 exists already, started from plan shop-to-rds/);
    expect((await items()).length).toBe(before.length + 1); // only the other plan's item
  });

  it('never calls a first execution that ended before recording itself "already started": it goes on in a new one, or names the failure it recorded', async () => {
    const execArn = (name: string) => `arn:aws:states:eu-west-1:123456789012:execution:pgferry-prod:${name}`;
    const missing = Object.assign(new Error('none'), { name: 'ExecutionDoesNotExist' });
    const exists = new ExecutionAlreadyExists({ message: 'Execution Already Exists', $metadata: {} });
    sfn.on(StartExecutionCommand).resolves({ executionArn: execArn('shop3') });
    await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop3' }, deps());
    const firstInput = String(sfn.commandCalls(StartExecutionCommand)[0]!.args[0].input.input);
    // shop3 was stopped (or its failure could not be written) before "Assess source" recorded it.
    sfn.reset();
    sfn
      .on(DescribeExecutionCommand)
      .rejects(missing)
      .on(DescribeExecutionCommand, { executionArn: execArn('shop3') })
      .resolves({ input: firstInput, status: 'ABORTED' });
    sfn
      .on(StartExecutionCommand)
      .rejects(exists)
      .on(StartExecutionCommand, { name: 'shop3-resumed-1' })
      .resolves({ executionArn: execArn('shop3-resumed-1') });
    const again = await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop3' }, deps());
    expect(again).toEqual({ migrationId: 'shop3', executionArn: execArn('shop3-resumed-1'), alreadyStarted: false });
    const started = sfn.commandCalls(StartExecutionCommand).map((c) => c.args[0].input);
    expect(started.map((i) => i.name)).toEqual(['shop3', 'shop3-resumed-1']);
    expect(JSON.parse(started[1]!.input!)).toMatchObject({ migrationId: 'shop3', execution: 1, continued: null });
    // Its assessment was blocked and recorded so: nothing to go on with, said with the failure.
    await store.put({
      ...(await store.get('shop3')),
      status: 'failed',
      failure: { name: 'AssessmentBlockedError', message: 'source has 2 blocker(s)', phase: 'assess' },
    });
    sfn.reset();
    sfn.on(DescribeExecutionCommand).resolves({ input: firstInput, status: 'FAILED' });
    sfn.on(StartExecutionCommand).rejects(exists);
    const refused = await startFromPlan(
      { planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop3' },
      deps(),
    ).catch((e) => e);
    expect(refused).toMatchObject({ name: 'StateConflictError', field: 'migrationId' });
    expect(refused.message).toBe(
      'migration shop3 is failed: its execution shop3 ended (AssessmentBlockedError: source has 2 blocker(s))',
    );
    expect(sfn.commandCalls(StartExecutionCommand)).toHaveLength(1);
  });

  it('resumes a migration whose executions all ended in a new execution numbered on from the last, and starts nothing while one runs or once it is over', async () => {
    sfn.on(StartExecutionCommand).resolves({ executionArn: 'arn:first' });
    await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop5' }, deps());
    // Its executions ran (the last one, the 3rd continuation, recorded itself), then stopped resumable.
    const stopped = { ...(await store.get('shop5')), status: 'running' as const };
    stopped.execution = { name: 'shop5-continued-3', number: 3, since: '2026-12-06T21:00:00Z' };
    await store.put(stopped);
    const execArn = (name: string) => `arn:aws:states:eu-west-1:123456789012:execution:pgferry-prod:${name}`;
    const missing = Object.assign(new Error('none'), { name: 'ExecutionDoesNotExist' });
    sfn.reset();
    sfn
      .on(DescribeExecutionCommand)
      .rejects(missing)
      .on(DescribeExecutionCommand, { executionArn: execArn('shop5-continued-3') })
      .resolves({ status: 'FAILED' });
    sfn.on(StartExecutionCommand).resolves({ executionArn: execArn('shop5-resumed-4') });
    const resumed = await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop5' }, deps());
    expect(resumed).toEqual({ migrationId: 'shop5', executionArn: execArn('shop5-resumed-4'), alreadyStarted: false });
    // The last, the continuation it may have started and a resume started before either recorded
    // itself, and the migration's rollback.
    expect(sfn.commandCalls(DescribeExecutionCommand).map((c) => c.args[0].input)).toEqual([
      { executionArn: execArn('shop5-continued-3') },
      { executionArn: execArn('shop5-continued-4') },
      { executionArn: execArn('shop5-resumed-4') },
      { executionArn: execArn('shop5-rollback') },
    ]);
    const [start] = sfn.commandCalls(StartExecutionCommand).map((c) => c.args[0].input);
    expect(start).toMatchObject({ stateMachineArn: ARN, name: 'shop5-resumed-4' });
    expect(JSON.parse(start!.input!)).toMatchObject({
      migrationId: 'shop5',
      action: 'migrate',
      execution: 4,
      continued: null,
    });
    // The same resume retried: the execution it started, nothing new.
    sfn.reset();
    sfn.on(DescribeExecutionCommand).rejects(missing);
    sfn.on(DescribeExecutionCommand, { executionArn: execArn('shop5-continued-3') }).resolves({ status: 'FAILED' });
    sfn
      .on(DescribeExecutionCommand, { executionArn: execArn('shop5-resumed-4') })
      .resolves({ input: start!.input, status: 'RUNNING' });
    sfn
      .on(StartExecutionCommand)
      .rejects(new ExecutionAlreadyExists({ message: 'Execution Already Exists', $metadata: {} }));
    expect(await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop5' }, deps())).toEqual({
      migrationId: 'shop5',
      executionArn: execArn('shop5-resumed-4'),
      alreadyStarted: true,
    });
    // Its last execution still running: nothing started.
    sfn.reset();
    sfn
      .on(DescribeExecutionCommand)
      .rejects(missing)
      .on(DescribeExecutionCommand, { executionArn: execArn('shop5-continued-3') })
      .resolves({ status: 'RUNNING' });
    expect(await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop5' }, deps())).toEqual({
      migrationId: 'shop5',
      executionArn: execArn('shop5-continued-3'),
      alreadyStarted: true,
    });
    expect(sfn.commandCalls(StartExecutionCommand)).toHaveLength(0);
    // The last one ended by continuing the catch-up in shop5-continued-4, which runs but has not recorded
    // itself yet: nothing started beside it.
    sfn.reset();
    sfn
      .on(DescribeExecutionCommand)
      .rejects(Object.assign(new Error('none'), { name: 'ExecutionDoesNotExist' }))
      .on(DescribeExecutionCommand, { executionArn: execArn('shop5-continued-3') })
      .resolves({ status: 'SUCCEEDED' })
      .on(DescribeExecutionCommand, { executionArn: execArn('shop5-continued-4') })
      .resolves({ status: 'RUNNING' });
    expect(await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop5' }, deps())).toEqual({
      migrationId: 'shop5',
      executionArn: execArn('shop5-continued-4'),
      alreadyStarted: true,
    });
    expect(sfn.commandCalls(StartExecutionCommand)).toHaveLength(0);
    // Its rollback (Slack's abort) runs, the status not changed yet: nothing started beside it.
    sfn.reset();
    sfn
      .on(DescribeExecutionCommand)
      .rejects(missing)
      .on(DescribeExecutionCommand, { executionArn: execArn('shop5-continued-3') })
      .resolves({ status: 'ABORTED' })
      .on(DescribeExecutionCommand, { executionArn: execArn('shop5-rollback') })
      .resolves({ status: 'RUNNING' });
    expect(await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop5' }, deps())).toEqual({
      migrationId: 'shop5',
      executionArn: execArn('shop5-rollback'),
      alreadyStarted: true,
    });
    expect(sfn.commandCalls(StartExecutionCommand)).toHaveLength(0);
    // A resume whose execution failed before it recorded itself (shop5-resumed-4): passed over, the
    // next number starts.
    sfn.reset();
    sfn
      .on(DescribeExecutionCommand)
      .rejects(missing)
      .on(DescribeExecutionCommand, { executionArn: execArn('shop5-continued-3') })
      .resolves({ status: 'FAILED' })
      .on(DescribeExecutionCommand, { executionArn: execArn('shop5-resumed-4') })
      .resolves({ status: 'FAILED', input: start!.input });
    sfn
      .on(StartExecutionCommand)
      .rejects(new ExecutionAlreadyExists({ message: 'Execution Already Exists', $metadata: {} }))
      .on(StartExecutionCommand, { name: 'shop5-resumed-5' })
      .resolves({ executionArn: execArn('shop5-resumed-5') });
    expect(await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop5' }, deps())).toEqual({
      migrationId: 'shop5',
      executionArn: execArn('shop5-resumed-5'),
      alreadyStarted: false,
    });
    const next = sfn.commandCalls(StartExecutionCommand).map((c) => c.args[0].input);
    expect(next.map((i) => i.name)).toEqual(['shop5-resumed-4', 'shop5-resumed-5']);
    expect(JSON.parse(next[1]!.input!)).toMatchObject({ execution: 5 });
    // Rolled back: nothing to resume.
    await store.put({ ...(await store.get('shop5')), status: 'rolled-back' });
    sfn.reset();
    sfn
      .on(DescribeExecutionCommand)
      .rejects(missing)
      .on(DescribeExecutionCommand, { executionArn: execArn('shop5-continued-3') })
      .resolves({ status: 'SUCCEEDED' });
    await expect(
      startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop5' }, deps()),
    ).rejects.toMatchObject({
      name: 'StateConflictError',
      message: 'migration shop5 is rolled-back: there is nothing to resume',
    });
    expect(sfn.commandCalls(StartExecutionCommand)).toHaveLength(0);
  });

  it('refuses a second migration of a plan in progress; a start whose execution failed to start names its id, and its retry starts it', async () => {
    sfn
      .on(StartExecutionCommand)
      .rejectsOnce(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9'), { name: 'Error' }))
      .resolves({ executionArn: 'arn:retried' });
    const failed = await startFromPlan(
      { planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop3' },
      deps(),
    ).catch((e: Error & { hint?: string }) => e);
    expect(failed).toMatchObject({
      message: expect.stringContaining('migration shop3 is recorded, but its execution did not start'),
      hint: expect.stringContaining('--id shop3'),
    });
    // Another start of the plan (another Slack request, another id) is refused while shop3 is in progress.
    await expect(startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U2' }, deps())).rejects.toMatchObject({
      name: 'StateConflictError',
      migrationId: 'shop3',
      message: expect.stringContaining('plan shop-to-rds has a migration in progress already: shop3'),
    });
    // The retry with the id reuses the record and starts the execution: that is a start, not "already started".
    const retried = await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop3' }, deps());
    expect(retried).toMatchObject({ migrationId: 'shop3', alreadyStarted: false });
    expect(sfn.commandCalls(StartExecutionCommand)).toHaveLength(2);
    expect((await store.list()).migrations.map((m) => m.id)).toEqual(['shop3']);
  });

  it.each([
    { kind: 'instance' as const, replicationInstanceArn: 'arn:aws:dms:eu-west-1:123456789012:rep:R1' },
    {
      kind: 'serverless' as const,
      maxCapacityUnits: 16,
      minCapacityUnits: 2,
      replicationSubnetGroupId: 'pgferry-subnets',
      vpcSecurityGroupIds: ['sg-0123abcd'],
      multiAz: true,
    },
  ])(
    "starts a dms plan ($kind compute): the record carries the DMS settings naming the plan's own two secrets",
    async (compute) => {
      sfn.on(StartExecutionCommand).resolves({ executionArn: 'arn:dms' });
      const targetSecret = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-target-GhIjKl';
      const dms = { secretsAccessRoleArn: 'arn:aws:iam::123456789012:role/pgferry-dms-secrets', compute };
      await store.putPlan({
        ...PLAN,
        name: 'shop-dms',
        strategy: 'dms',
        target: { kind: 'existing', instanceIdentifier: 'shop-17', secretArn: targetSecret },
        dms,
      });
      await startFromPlan({ planName: 'shop-dms', requestedBy: 'U1', migrationId: 'shopdms' }, deps());
      const state = await store.get('shopdms');
      expect(state.config).toMatchObject({
        strategy: 'dms',
        dms: { ...dms, sourceSecretArn: SOURCE_SECRET, targetSecretArn: targetSecret },
      });
      expect(JSON.parse(String(sfn.commandCalls(StartExecutionCommand)[0]!.args[0].input!.input))).toMatchObject({
        migrationId: 'shopdms',
        provisionTarget: true,
      });
    },
  );

  it('names an unknown plan and the command that lists them, creating nothing and starting nothing', async () => {
    const before = await items();
    await expect(startFromPlan({ planName: 'nosuch', requestedBy: 'U1' }, deps())).rejects.toMatchObject({
      name: 'PlanNotFoundError',
      field: 'plan',
      message: expect.stringContaining('nosuch'),
      hint: expect.stringContaining('pgferry plan list'),
    });
    await expect(startFromPlan({ planName: 'Bad Name', requestedBy: 'U1' }, deps())).rejects.toMatchObject({
      name: 'InvalidInputError',
      field: 'plan',
    });
    await expect(
      startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1' }, { ...deps(), stateMachineArn: 'pgferry' }),
    ).rejects.toMatchObject({ field: '--state-machine-arn' });
    expect(await items()).toEqual(before);
    expect(sfn.commandCalls(StartExecutionCommand)).toHaveLength(0);
  });
});

describe('the definition run from the input startFromPlan sends (scripted tasks)', () => {
  async function run(input: WorkflowInput) {
    const entered: string[] = [];
    const seen: Partial<Record<TaskName, unknown>> = {};
    let lag = 0;
    const ok = (task: TaskName, extra: Record<string, unknown> = {}): TaskOutput => ({ summary: task, ...extra });
    const execution = runLocalWorkflow(
      input,
      async (task, i) => {
        seen[task] = i;
        if (task === 'checkLag') return ok(task, { ready: ++lag % 2 === 0, streak: 1, waitSeconds: 0 });
        if (task === 'verifyBeforeSwitch') return ok(task, { done: true, rounds: 1, outcome: 'ok' });
        // The scaled-out path: its coordinator fails at once (which path was chosen is what is checked).
        if ((task === 'bulkLoad' && input.copyWorkers > 1) || task === 'copyShare' || task === 'readCopyPlan')
          throw Object.assign(new Error('scripted'), { name: 'BulkLoadFailedError' });
        return ok(task);
      },
      {
        onHistory: (e, ev) => {
          if (ev === 'entered') entered.push(e.state);
        },
      },
    );
    return { outcome: await execution.done, entered, seen };
  }

  it('provisions the target, splits the copy over the plan’s workers, and waits for a manual approval', async () => {
    sfn.on(StartExecutionCommand).resolves({ executionArn: 'arn:x' });
    await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop3' }, deps());
    const [scaled] = sfn.commandCalls(StartExecutionCommand).map((c) => JSON.parse(c.args[0].input!.input!));
    const a = await run(scaled);
    expect(a.entered).toContain(WORKFLOW_TASKS.provisionTarget.state);
    expect(a.entered).toContain(BULK_LOAD_STATES.load);
    expect(a.entered).not.toContain(WORKFLOW_TASKS.bulkLoad.state);
    expect(a.seen.provisionTarget).toMatchObject({ migrationId: 'shop3' });

    await store.putPlan({ ...PLAN, name: 'one-worker', copyWorkers: 1 });
    await startFromPlan({ planName: 'one-worker', requestedBy: 'U1', migrationId: 'shop5' }, deps());
    const one = JSON.parse(sfn.commandCalls(StartExecutionCommand).at(-1)!.args[0].input!.input!);
    const b = await run(one);
    expect(b.outcome.status).toBe('succeeded');
    const tasks = b.entered.filter((s) => Object.values(WORKFLOW_TASKS).some((t) => t.state === s));
    expect(tasks.slice(0, 3)).toEqual(['Assess source', 'Provision target', 'Prepare schema']);
    expect(tasks).toContain('Bulk load');
    expect(tasks).toContain('Await cutover approval');
    expect(tasks.indexOf('Await cutover approval')).toBeLessThan(tasks.indexOf('Cut over'));
  });
});

describe("a plan's automatic clean-up, through the start and the definition", () => {
  it('starts the execution with the plan’s bake, which "Bake" waits before "Clean up"', async () => {
    sfn.on(StartExecutionCommand).resolves({ executionArn: 'arn:x' });
    await store.putPlan({
      ...PLAN,
      name: 'baked',
      cutover: { policy: 'auto' },
      cleanup: 'automatic',
      bakeSeconds: 7200,
    });
    await startFromPlan({ planName: 'baked', requestedBy: 'U1', migrationId: 'baked1' }, deps());
    const input = JSON.parse(sfn.commandCalls(StartExecutionCommand).at(-1)!.args[0].input!.input!);
    expect(input).toEqual({
      migrationId: 'baked1',
      action: 'migrate',
      cutover: 'auto',
      approved: false,
      provisionTarget: true,
      cleanup: true,
      bakeSeconds: 7200,
      copyWorkers: 2,
      execution: 0,
      continued: null,
    });
    // "Bake" reads its wait from the execution's state, not from a constant of the definition.
    const definition = JSON.parse(workflowDefinitionJson()) as { States: Record<string, Record<string, unknown>> };
    expect(definition.States[STATE.bake]).toMatchObject({ Type: 'Wait', SecondsPath: '$.bakeSeconds' });
    expect(definition.States[STATE.bake]).not.toHaveProperty('Seconds');
    await store.putPlan({
      ...PLAN,
      name: 'baked-one',
      copyWorkers: 1,
      cutover: { policy: 'auto' },
      cleanup: 'automatic',
      bakeSeconds: 7200,
    });
    await startFromPlan({ planName: 'baked-one', requestedBy: 'U1', migrationId: 'baked2' }, deps());
    const one = JSON.parse(sfn.commandCalls(StartExecutionCommand).at(-1)!.args[0].input!.input!);
    const ran: string[] = [];
    const second = runLocalWorkflow(
      one,
      async (task) => {
        if (task === 'checkLag') return { summary: task, ready: true, streak: 1, waitSeconds: 0 };
        if (task === 'verifyBeforeSwitch') return { summary: task, done: true, rounds: 1, outcome: 'ok' };
        // Clean-up follows only a verify that found the sides equal.
        if (task === 'verify') return { summary: task, outcome: 'ok' };
        return { summary: task };
      },
      { onHistory: (e, ev) => ev === 'entered' && ran.push(e.state), waitMs: { [STATE.bake]: 0 } },
    );
    expect((await second.done).status).toBe('succeeded');
    expect(ran.slice(ran.indexOf('Verify'))).toEqual([
      'Verify',
      STATE.cleanupAsked,
      STATE.bake,
      'Clean up',
      STATE.migrated,
    ]);
    expect(second.inputOf(STATE.bake)).toMatchObject({ cleanup: true, bakeSeconds: 7200 });
  });
});

describe('Provision target of a migration started from a plan', () => {
  const LOGICAL_ON = groupParameters({
    'rds.logical_replication': '1',
    max_replication_slots: '10',
    max_wal_senders: '10',
  });

  it('creates the plan’s instance, and once it is available points the migration’s target secret at it', async () => {
    sfn.on(StartExecutionCommand).resolves({ executionArn: 'arn:x' });
    sfn.on(SendTaskSuccessCommand).resolves({});
    await startFromPlan({ planName: 'shop-to-rds', requestedBy: 'U1', migrationId: 'shop6' }, deps());
    rds
      .on(DescribeDBInstancesCommand)
      .rejectsOnce(new DBInstanceNotFoundFault({ message: 'not found', $metadata: {} }))
      .resolves({ DBInstances: [availableInstance({ migrationId: 'shop6', DBInstanceIdentifier: 'pgferry-shop6' })] });
    rds.on(CreateDBParameterGroupCommand).resolves({});
    rds.on(ModifyDBParameterGroupCommand).resolves({});
    rds.on(DescribeDBParametersCommand).resolves({ Parameters: LOGICAL_ON });
    rds.on(CreateDBInstanceCommand).resolves({
      DBInstance: rdsInstance({ migrationId: 'shop6', DBInstanceIdentifier: 'pgferry-shop6' }),
    });
    const callbacks = new SfnTaskCallbacks(sfnClient);
    const provisioner = new RdsTargetProvisioner(rdsClient, store, callbacks);
    // The state's payload: the migration, the task and its token only (states.ts), no target.
    const out = await provisioner.run({ migrationId: 'shop6', task: 'provisionTarget', taskToken: 'token-6' });
    expect(out).toMatchObject({ instance: 'pgferry-shop6', created: true, waiting: true });
    expect(rds.commandCalls(CreateDBInstanceCommand).map((c) => c.args[0].input)).toEqual([
      expect.objectContaining({
        DBInstanceIdentifier: 'pgferry-shop6',
        DBInstanceClass: 'db.r6g.large',
        EngineVersion: '17',
        AllocatedStorage: 100,
        DBSubnetGroupName: 'shop-db',
        VpcSecurityGroupIds: ['sg-0123abcd'],
        DBName: 'shop',
        ManageMasterUserPassword: true,
      }),
    ]);
    expect((await store.get('shop6')).config.secrets?.target).toBeUndefined();

    const outcome = await handleRdsInstanceEvent(
      {
        source: 'aws.rds',
        'detail-type': 'RDS DB Instance Event',
        detail: { SourceIdentifier: 'pgferry-shop6', EventID: 'RDS-EVENT-0005', Message: 'DB instance created' },
      } as never,
      { rds: rdsClient, store, callbacks, log: () => {}, sleep: async () => {} },
    );
    expect(outcome).toMatchObject({ action: 'succeeded', migrationId: 'shop6' });
    const state = await store.get('shop6');
    expect(state.config.secrets?.target).toEqual({
      secretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-0a1b2c3d-AbCdEf',
      host: 'pgferry-shop.c1a2b3c4d5e6.eu-west-1.rds.amazonaws.com',
      port: 5432,
      dbname: 'shop',
      sslmode: 'verify-full',
    });
    expect(state.config.targetUrl).toBe(
      'postgres://rds!db-0a1b2c3d-AbCdEf@pgferry-shop.c1a2b3c4d5e6.eu-west-1.rds.amazonaws.com:5432/shop'.replace(
        'rds!db',
        encodeURIComponent('rds!db'),
      ),
    );
    expect(sfn.commandCalls(SendTaskSuccessCommand).map((c) => c.args[0].input.taskToken)).toEqual(['token-6']);
  });
});
