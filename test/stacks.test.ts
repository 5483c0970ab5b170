import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { MIGRATION_TABLE_KEYS, RDS_WAIT_EVENTS } from '@pgferry/aws';
import {
  deployedTableName,
  EVENT_TYPES,
  functionArnKey,
  LAMBDA_MAX_SECONDS,
  METRIC_DIMENSIONS,
  METRIC_NAMESPACE,
  METRICS,
  STATE,
  WORKER_SUBSTITUTIONS,
  WORKFLOW_TASKS,
  workflowDefinitionJson,
} from '@pgferry/core';
import { Aspects, type Stack } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { DockerImageAsset } from 'aws-cdk-lib/aws-ecr-assets';
import type { SynthesisMessage } from 'aws-cdk-lib/cx-api';
import { AwsSolutionsChecks } from 'cdk-nag';
import { App, getStack } from 'sst/constructs';
import { initProject } from 'sst/project.js';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../packages/cli/src/main';

import { pgferryApp } from '../stacks/app';
import { type DeployConfig, deployConfigFromEnv } from '../stacks/config';
import { DMS_TASK_ACTIONS } from '../stacks/permissions';
import { SLACK_REQUESTS_PER_SECOND, SLACK_ROUTES } from '../stacks/slack';
import { LAMBDA_TASKS } from '../stacks/tasks';

const CONFIG: DeployConfig = {
  vpcId: 'vpc-0a1b2c3d',
  subnetIds: ['subnet-0aaa', 'subnet-0bbb'],
  securityGroupIds: ['sg-0ccc'],
  secretNamePrefix: 'pgferry/',
  walRetainedAlarmBytes: 5 * 1024 ** 3,
  slackSigningSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgferry/slack-signing-AbCdEf',
  slackBotTokenArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgferry/slack-bot-GhIjKl',
  slackUsers: ['U024BE7LH'],
  slackChannels: ['C024BE91L'],
  slackChannel: 'C0MIGRATE',
  switchTarget: {
    kind: 'secret',
    secretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop/app-db-AbCdEf',
  },
};
const ACCOUNT = '123456789012';
const REGION = 'eu-west-1';

// biome-ignore lint/suspicious/noExplicitAny: a synthesized template is untyped JSON, read by the assertions below
type Json = any;
type Resource = { Type: string; Properties: Record<string, Json>; DeletionPolicy?: string; Metadata?: Json };
type Statement = { Effect: string; Action: string | string[]; Resource: unknown; Condition?: unknown };

let template: Template;
let resources: Record<string, Resource>;
let messages: SynthesisMessage[];
let stack: Stack;

/** The one resource of a type whose logical id starts with the construct id given. */
function logicalId(type: string, prefix: string): string {
  const ids = Object.keys(template.findResources(type)).filter((id) => id.startsWith(prefix));
  expect(ids, `${type} ${prefix}*`).toHaveLength(1);
  return ids[0]!;
}

function statementsOf(predicate: (policyId: string, roleRefs: string[]) => boolean): Statement[] {
  return Object.entries(template.findResources('AWS::IAM::Policy')).flatMap(([id, policy]) => {
    const roles = (policy.Properties.Roles ?? []).map((r: { Ref: string }) => r.Ref);
    return predicate(id, roles) ? policy.Properties.PolicyDocument.Statement : [];
  });
}

const list = (x: unknown) => (Array.isArray(x) ? x : [x]);

/**
 * The stack of `config`, with cdk-nag's checks. Inactive: SST does not bundle the functions
 * (test/functions.test.ts bundles every handler once, with esbuild), which keeps this file to seconds;
 * everything else is synthesized as `sst deploy` would. One synthesis for the template and cdk-nag's
 * findings alike (a second one re-runs SST's aspects).
 */
async function synthesize(config: DeployConfig) {
  const app = new App({
    mode: 'deploy',
    stage: 'test',
    name: 'pgferry',
    region: REGION,
    account: ACCOUNT,
    isActiveStack: () => false,
  });
  const stackFn = pgferryApp(app, config);
  Aspects.of(app).add(new AwsSolutionsChecks());
  await app.finish();
  const synthesized = getStack(stackFn);
  return { stack: synthesized, artifact: app.synth().getStackArtifact(synthesized.artifactId) };
}

/** What `pgferry workflow print` writes, through the CLI's own entry point. */
let printed = '';

beforeAll(async () => {
  const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => {
    printed += String(chunk);
    return true;
  });
  try {
    expect(await main(['workflow', 'print'])).toBe(0);
  } finally {
    write.mockRestore();
  }
  await initProject({ stage: 'test' });
  const synthesized = await synthesize(CONFIG);
  stack = synthesized.stack;
  const artifact = synthesized.artifact;
  template = Template.fromJSON(artifact.template);
  resources = artifact.template.Resources;
  messages = artifact.messages;
});

describe('the deployed stack', () => {
  it('keeps migrations in one table: pk/sk strings, TTL on expiresAt, point-in-time recovery, encrypted, retained', () => {
    const id = logicalId('AWS::DynamoDB::Table', 'Migrations');
    const table = resources[id]!;
    expect(table.DeletionPolicy).toBe('Retain');
    // The name the CLI's --stage reads.
    expect(table.Properties.TableName).toBe(deployedTableName('test'));
    expect(table.Properties).toMatchObject({
      KeySchema: [
        { AttributeName: MIGRATION_TABLE_KEYS.partitionKey, KeyType: 'HASH' },
        { AttributeName: MIGRATION_TABLE_KEYS.sortKey, KeyType: 'RANGE' },
      ],
      AttributeDefinitions: [
        { AttributeName: 'pk', AttributeType: 'S' },
        { AttributeName: 'sk', AttributeType: 'S' },
      ],
      TimeToLiveSpecification: { AttributeName: MIGRATION_TABLE_KEYS.timeToLive, Enabled: true },
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true },
      BillingMode: 'PAY_PER_REQUEST',
    });
  });

  it('keeps artifacts in an encrypted, private, TLS-only bucket that tells EventBridge and expires dumps', () => {
    const id = logicalId('AWS::S3::Bucket', 'Artifacts8');
    const bucket = resources[id]!;
    expect(bucket.DeletionPolicy).toBe('Retain');
    expect(bucket.Properties.BucketEncryption).toEqual({
      ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }],
    });
    expect(bucket.Properties.PublicAccessBlockConfiguration).toEqual({
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    });
    expect(bucket.Properties.LifecycleConfiguration.Rules).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 }, Status: 'Enabled' }),
        expect.objectContaining({ Prefix: 'dumps/', ExpirationInDays: 14, Status: 'Enabled' }),
      ]),
    );
    expect(bucket.Properties.LoggingConfiguration).toBeDefined();
    template.hasResourceProperties('Custom::S3BucketNotifications', {
      BucketName: { Ref: id },
      NotificationConfiguration: { EventBridgeConfiguration: {} },
    });
    const policy = Object.values(template.findResources('AWS::S3::BucketPolicy')).find(
      (p) => p.Properties.Bucket.Ref === id,
    );
    expect(policy?.Properties.PolicyDocument.Statement).toContainEqual(
      expect.objectContaining({
        Effect: 'Deny',
        Action: 's3:*',
        Condition: { Bool: { 'aws:SecureTransport': 'false' } },
      }),
    );
  });

  it('deploys exactly the definition `pgferry workflow print` prints, every substitution filled, with logging and X-Ray on', () => {
    const machines = Object.values(template.findResources('AWS::StepFunctions::StateMachine'));
    expect(machines).toHaveLength(1);
    const machine = machines[0]!.Properties;
    expect(machine.DefinitionString).toBe(printed.trimEnd());
    expect(machine.DefinitionString).toBe(workflowDefinitionJson());
    expect(machine.StateMachineName).toBe('test-pgferry-migration');
    expect(machine.TracingConfiguration).toEqual({ Enabled: true });
    expect(machine.LoggingConfiguration).toMatchObject({ Level: 'ALL', IncludeExecutionData: false });

    const named = new Set([...workflowDefinitionJson().matchAll(/\$\{(\w+)\}/g)].map((m) => m[1]));
    expect(new Set(Object.keys(machine.DefinitionSubstitutions))).toEqual(named);
    for (const task of LAMBDA_TASKS) {
      const fnId = logicalId('AWS::Lambda::Function', `${task[0]!.toUpperCase()}${task.slice(1)}`);
      expect(machine.DefinitionSubstitutions[functionArnKey(task)]).toEqual({ 'Fn::GetAtt': [fnId, 'Arn'] });
    }
    expect(machine.DefinitionSubstitutions).toMatchObject({
      WorkerClusterArn: { 'Fn::GetAtt': [logicalId('AWS::ECS::Cluster', 'WorkerCluster'), 'Arn'] },
      WorkerTaskDefinitionArn: { Ref: logicalId('AWS::ECS::TaskDefinition', 'WorkerTask') },
      WorkerContainerName: 'worker',
      WorkerSubnets: 'subnet-0aaa,subnet-0bbb',
      WorkerSecurityGroups: 'sg-0ccc',
    });
    for (const key of WORKER_SUBSTITUTIONS) expect(machine.DefinitionSubstitutions).toHaveProperty(key);
  });

  it('lets the state machine start only itself again ("Continue in a new execution"), by the ARN of its fixed name', () => {
    const role = logicalId('AWS::IAM::Role', 'WorkflowRole');
    const starts = statementsOf((_, roles) => roles.includes(role)).filter((s) =>
      list(s.Action).includes('states:StartExecution'),
    );
    expect(starts).toEqual([
      {
        Effect: 'Allow',
        Action: 'states:StartExecution',
        Resource: {
          'Fn::Join': [
            '',
            ['arn:', { Ref: 'AWS::Partition' }, `:states:${REGION}:${ACCOUNT}:stateMachine:test-pgferry-migration`],
          ],
        },
      },
    ]);
    // The definition names no ARN of its own: the task reads it from the context object.
    const task = (JSON.parse(workflowDefinitionJson()) as { States: Record<string, { Parameters?: object }> }).States[
      STATE.continueAsNew
    ];
    expect(task?.Parameters).toMatchObject({ 'StateMachineArn.$': '$$.StateMachine.Id' });
  });

  it('runs each Lambda task as its own function: Node 22 on arm64 in the configured subnets, named for a person', () => {
    const lambdaTasks = Object.entries(WORKFLOW_TASKS).filter(([, spec]) => spec.runtime === 'lambda');
    expect(LAMBDA_TASKS).toEqual(lambdaTasks.map(([task]) => task));
    for (const [task, spec] of lambdaTasks) {
      const id = logicalId('AWS::Lambda::Function', `${task[0]!.toUpperCase()}${task.slice(1)}`);
      const fn = resources[id]!.Properties;
      expect(fn).toMatchObject({
        Runtime: 'nodejs22.x',
        Architectures: ['arm64'],
        Description: `pgferry: ${spec.state}`,
        TracingConfig: { Mode: 'Active' },
        VpcConfig: { SubnetIds: CONFIG.subnetIds, SecurityGroupIds: CONFIG.securityGroupIds },
      });
      // A task the state machine stopped waiting for holds the lease no longer than this (busyRetry waits longer).
      expect(fn.Timeout, task).toBeLessThanOrEqual(LAMBDA_MAX_SECONDS);
      expect(fn.Environment.Variables).toMatchObject({
        PGFERRY_TABLE_NAME: { Ref: logicalId('AWS::DynamoDB::Table', 'Migrations') },
        PGFERRY_BUS_NAME: { Ref: logicalId('AWS::Events::EventBus', 'Bus') },
        PGFERRY_BUCKET_NAME: { Ref: logicalId('AWS::S3::Bucket', 'Artifacts8') },
        PGFERRY_STAGE: 'test',
      });
      // The handler SST bundles at deploy (the template holds a placeholder in this inactive test stack).
      const construct = stack.node.findChild(id.replace(/[0-9A-F]{8}$/, '')) as unknown as {
        props: { handler: string; runtime: string; architecture: string };
      };
      expect(construct.props).toMatchObject({
        handler: `functions/tasks/${task}.handler`,
        runtime: 'nodejs22.x',
        architecture: 'arm_64',
      });
      expect(existsSync(`functions/tasks/${task}.ts`), `functions/tasks/${task}.ts`).toBe(true);
    }
  });

  it('runs the long tasks on a Fargate worker whose image is built from the Dockerfile without node_modules', () => {
    template.hasResourceProperties('AWS::ECS::Cluster', {
      ClusterSettings: [{ Name: 'containerInsights', Value: 'enabled' }],
    });
    const task = resources[logicalId('AWS::ECS::TaskDefinition', 'WorkerTask')]!.Properties;
    expect(task).toMatchObject({
      RequiresCompatibilities: ['FARGATE'],
      NetworkMode: 'awsvpc',
      RuntimePlatform: { CpuArchitecture: 'X86_64', OperatingSystemFamily: 'LINUX' },
    });
    const [container] = task.ContainerDefinitions;
    expect(container.Name).toBe('worker');
    expect(container.LogConfiguration.LogDriver).toBe('awslogs');
    expect(container.Environment.map((e: { Name: string }) => e.Name).sort()).toEqual(
      ['PGFERRY_BUCKET_NAME', 'PGFERRY_BUS_NAME', 'PGFERRY_STAGE', 'PGFERRY_TABLE_NAME'].sort(),
    );
    // The staged build context: what `docker build` gets at deploy, copied at every synth.
    const assets = stack.node.findAll().filter((c): c is DockerImageAsset => c instanceof DockerImageAsset);
    expect(assets).toHaveLength(1);
    // Both are private in CDK's types, public at run time.
    const asset = assets[0] as unknown as { dockerfilePath: string; assetPath: string };
    expect(asset.dockerfilePath).toBe('Dockerfile');
    const staged = join((stack.node.root as App).outdir, asset.assetPath);
    const entries = readdirSync(staged);
    expect(entries).toContain('Dockerfile');
    expect(entries).not.toContain('node_modules');
    expect(entries).not.toContain('.git');
  });

  it('routes RDS, S3 and DMS events with exact patterns to their handlers, each with a dead-letter queue', () => {
    const bucketId = logicalId('AWS::S3::Bucket', 'Artifacts8');
    const expected = {
      RdsInstanceRule: {
        pattern: {
          source: ['aws.rds'],
          'detail-type': ['RDS DB Instance Event'],
          detail: { EventID: Object.keys(RDS_WAIT_EVENTS) },
        },
        handler: 'RdsInstanceEvent',
      },
      DumpCreatedRule: {
        pattern: {
          source: ['aws.s3'],
          'detail-type': ['Object Created'],
          detail: { bucket: { name: [{ Ref: bucketId }] }, object: { key: [{ prefix: 'dumps/' }] } },
        },
        handler: 'DumpCreated',
      },
      DmsTaskStateRule: {
        pattern: {
          source: ['aws.dms'],
          'detail-type': ['DMS Replication Task State Change'],
          resources: [
            {
              prefix: {
                'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, `:dms:${REGION}:${ACCOUNT}:task:`]],
              },
            },
          ],
        },
        handler: 'DmsTaskState',
      },
      // DMS Serverless: no resources filter (whether AWS events carry them is the service's choice, and
      // DMS documents no sample of this one); the same handler looks for a config of pgferry's.
      DmsReplicationStateRule: {
        pattern: { source: ['aws.dms'], 'detail-type': ['DMS Replication State Change'] },
        handler: 'DmsReplicationState',
      },
    };
    // The fifth is Slack's, on pgferry's own bus (its own test below).
    expect(Object.keys(template.findResources('AWS::Events::Rule'))).toHaveLength(5);
    for (const [ruleId, { pattern, handler }] of Object.entries(expected)) {
      const rule = resources[logicalId('AWS::Events::Rule', ruleId)]!.Properties;
      expect(rule.EventPattern, ruleId).toEqual(pattern);
      const queueId = logicalId('AWS::SQS::Queue', `${ruleId}DeadLetters`);
      const handlerId = logicalId('AWS::Lambda::Function', handler);
      expect(rule.Targets).toEqual([
        expect.objectContaining({
          Arn: { 'Fn::GetAtt': [handlerId, 'Arn'] },
          DeadLetterConfig: { Arn: { 'Fn::GetAtt': [queueId, 'Arn'] } },
        }),
      ]);
      expect(resources[queueId]!.Properties.SqsManagedSseEnabled).toBe(true);
      // A handler that throws: Lambda's own retries end in the same queue.
      template.hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
        FunctionName: { Ref: handlerId },
        DestinationConfig: { OnFailure: { Destination: { 'Fn::GetAtt': [queueId, 'Arn'] } } },
      });
    }
  });

  it('has its own event bus for the events pgferry publishes', () => {
    template.hasResourceProperties('AWS::Events::EventBus', { Name: 'test-pgferry-events' });
  });

  it('alarms on failed executions, on WAL the slot retains and on undelivered events, to an encrypted topic', () => {
    const topicId = logicalId('AWS::SNS::Topic', 'Alarms');
    expect(resources[topicId]!.Properties.KmsMasterKeyId).toBeDefined();
    const machineId = logicalId('AWS::StepFunctions::StateMachine', 'Workflow');
    const failed = resources[logicalId('AWS::CloudWatch::Alarm', 'FailedExecutions')]!.Properties;
    const failedMetrics = failed.Metrics.filter((m: Json) => m.MetricStat).map((m: Json) => m.MetricStat.Metric);
    expect(failedMetrics.map((m: Json) => m.MetricName).sort()).toEqual(
      ['ExecutionsAborted', 'ExecutionsFailed', 'ExecutionsTimedOut'].sort(),
    );
    for (const metric of failedMetrics)
      expect(metric.Dimensions).toEqual([{ Name: 'StateMachineArn', Value: { Ref: machineId } }]);
    expect(failed).toMatchObject({ Threshold: 1, AlarmActions: [{ Ref: topicId }] });

    const wal = resources[logicalId('AWS::CloudWatch::Alarm', 'WalRetained')]!.Properties;
    expect(wal).toMatchObject({
      Namespace: METRIC_NAMESPACE,
      MetricName: METRICS.walRetainedBytes,
      Dimensions: [{ Name: METRIC_DIMENSIONS.stage, Value: 'test' }],
      Threshold: CONFIG.walRetainedAlarmBytes,
      ComparisonOperator: 'GreaterThanThreshold',
      AlarmActions: [{ Ref: topicId }],
    });
    for (const rule of ['RdsInstanceRule', 'DumpCreatedRule', 'DmsTaskStateRule']) {
      const alarm = resources[logicalId('AWS::CloudWatch::Alarm', `${rule}DeadLettersAlarm`)]!.Properties;
      expect(alarm).toMatchObject({
        MetricName: 'ApproximateNumberOfMessagesVisible',
        AlarmActions: [{ Ref: topicId }],
      });
    }
  });

  it("shows the stage's lag in bytes and seconds, WAL retained, write gap and executions by status", () => {
    const dashboard = resources[logicalId('AWS::CloudWatch::Dashboard', 'Dashboard')]!.Properties;
    expect(dashboard.DashboardName).toBe('pgferry-test');
    const body = JSON.stringify(dashboard.DashboardBody);
    for (const metric of Object.values(METRICS)) {
      expect(body).toContain(`\\"${METRIC_NAMESPACE}\\",\\"${metric}\\",\\"${METRIC_DIMENSIONS.stage}\\",\\"test\\"`);
    }
    for (const status of ['Started', 'Succeeded', 'Failed', 'TimedOut', 'Aborted']) {
      expect(body).toContain(`\\"AWS/States\\",\\"Executions${status}\\"`);
    }
  });
});

describe('permissions', () => {
  const DATA_SERVICES = ['dynamodb', 's3', 'secretsmanager', 'states'];

  it('grant no `*` action and no `*` resource on DynamoDB, S3, Secrets Manager or Step Functions tasks', () => {
    const all = statementsOf(() => true);
    expect(all.length).toBeGreaterThan(20);
    const offending = all.filter((s) => {
      const actions = list(s.Action);
      const onData = actions.filter((a) => a === '*' || DATA_SERVICES.includes(a.split(':')[0]!));
      if (!onData.length) return false;
      return onData.some((a) => a.includes('*')) || list(s.Resource).some((r) => r === '*');
    });
    expect(offending).toEqual([]);
    // Roles carry no inline policy or managed policy that grants more than the statements above.
    for (const role of Object.values(template.findResources('AWS::IAM::Role'))) {
      expect(role.Properties.Policies).toBeUndefined();
      for (const arn of role.Properties.ManagedPolicyArns ?? []) {
        expect(JSON.stringify(arn)).toMatch(/AWSLambda(Basic|VPCAccess)ExecutionRole/);
      }
    }
  });

  it('let only the worker, the event handlers, Provision target, the DMS full-load and dump-upload waits and the Slack worker complete task tokens, of this state machine only', () => {
    const roleOf = (prefix: string) => logicalId('AWS::IAM::Role', prefix);
    const allowed = new Set([
      roleOf('WorkerTaskTaskRole'),
      roleOf('RdsInstanceEventServiceRole'),
      roleOf('DumpCreatedServiceRole'),
      roleOf('DmsTaskStateServiceRole'),
      roleOf('DmsReplicationStateServiceRole'),
      roleOf('ProvisionTargetServiceRole'),
      // A full load that ended before its token was kept sends no event the handler could use.
      roleOf('AwaitDmsFullLoadServiceRole'),
      // Likewise a dump uploaded before "Wait for the dump upload" kept its token.
      roleOf('AwaitDumpUploadServiceRole'),
      roleOf('SlackWorkerServiceRole'),
    ]);
    const machineArn = {
      'Fn::Join': [
        '',
        ['arn:', { Ref: 'AWS::Partition' }, `:states:${REGION}:${ACCOUNT}:stateMachine:test-pgferry-migration`],
      ],
    };
    const holders = new Set<string>();
    for (const [, policy] of Object.entries(template.findResources('AWS::IAM::Policy'))) {
      for (const s of policy.Properties.PolicyDocument.Statement as Statement[]) {
        const tokenActions = list(s.Action).filter((a) => /^states:SendTask/.test(a));
        if (!tokenActions.length) continue;
        expect(s.Resource).toEqual(machineArn);
        for (const role of policy.Properties.Roles) holders.add(role.Ref);
      }
    }
    expect(holders).toEqual(allowed);
  });

  it("let Provision target make every RDS call it makes: read any parameter group (an adopted instance's, a plan's own), create the instance with it, create and change only its own", () => {
    const role = logicalId('AWS::IAM::Role', 'ProvisionTargetServiceRole');
    const statements = statementsOf((_, roles) => roles.includes(role));
    const refs: Record<string, string> = { 'AWS::Partition': 'aws', 'AWS::Region': REGION, 'AWS::AccountId': ACCOUNT };
    const text = (r: unknown): string =>
      typeof r === 'string'
        ? r
        : (r as { 'Fn::Join': [string, unknown[]] })['Fn::Join'][1]
            .map((p) => (typeof p === 'string' ? p : (refs[(p as { Ref: string }).Ref] ?? '?')))
            .join('');
    const matches = (pattern: string, value: string) =>
      new RegExp(
        `^${pattern
          .split('*')
          .map((x) => x.replace(/[.?+^$()[\]{}|\\]/g, '\\$&'))
          .join('.*')}$`,
      ).test(value);
    const allows = (action: string, resource: string) =>
      statements.some(
        (st) =>
          st.Effect === 'Allow' &&
          list(st.Action).includes(action) &&
          list(st.Resource).some((r) => matches(text(r), `arn:aws:rds:${REGION}:${ACCOUNT}:${resource}`)),
      );
    // Every RDS call the task's code makes is granted to it at all (none forgotten).
    const source = readFileSync(join(__dirname, '../packages/aws/src/rds.ts'), 'utf8');
    const calls = [...new Set([...source.matchAll(/new (\w+)Command\(/g)].map((m) => `rds:${m[1]}`))];
    expect(calls.length).toBeGreaterThan(4);
    for (const action of calls)
      expect(
        statements.some((st) => list(st.Action).includes(action)),
        action,
      ).toBe(true);
    // On the resources it needs: an adopted instance's own group, a plan's own group.
    expect(allows('rds:DescribeDBInstances', 'db:orders-prod')).toBe(true);
    expect(allows('rds:DescribeDBParameters', 'pg:orders-prod-pg16')).toBe(true);
    expect(allows('rds:DescribeDBParameterGroups', 'pg:orders-prod-pg16')).toBe(true);
    expect(allows('rds:CreateDBInstance', 'pg:orders-prod-pg16')).toBe(true);
    expect(allows('rds:CreateDBParameterGroup', 'pg:pgferry-m1')).toBe(true);
    expect(allows('rds:ModifyDBParameterGroup', 'pg:pgferry-m1')).toBe(true);
    // And no more: nobody else's group is changed.
    expect(allows('rds:ModifyDBParameterGroup', 'pg:orders-prod-pg16')).toBe(false);
    expect(allows('rds:AddTagsToResource', 'pg:orders-prod-pg16')).toBe(false);
  });

  it('let only Cut over and Roll back change the connection switch, on exactly the configured secret', () => {
    const roleOf = (prefix: string) => logicalId('AWS::IAM::Role', prefix);
    const writes = ['secretsmanager:PutSecretValue', 'secretsmanager:UpdateSecretVersionStage'];
    const holders = new Set<string>();
    for (const [, policy] of Object.entries(template.findResources('AWS::IAM::Policy'))) {
      for (const s of policy.Properties.PolicyDocument.Statement as Statement[]) {
        if (!list(s.Action).some((a) => writes.includes(a))) continue;
        expect(s.Resource).toEqual(CONFIG.switchTarget?.kind === 'secret' && CONFIG.switchTarget.secretArn);
        expect(list(s.Action).sort()).toEqual([
          'secretsmanager:DescribeSecret',
          'secretsmanager:GetSecretValue',
          'secretsmanager:PutSecretValue',
          'secretsmanager:UpdateSecretVersionStage',
        ]);
        for (const role of policy.Properties.Roles) holders.add(role.Ref);
      }
    }
    expect(holders).toEqual(new Set([roleOf('CutoverServiceRole'), roleOf('RollbackServiceRole')]));
  });

  it('let the state machine invoke exactly the task functions and run exactly the worker task definition', () => {
    const machineRole = logicalId('AWS::IAM::Role', 'WorkflowRole');
    const statements = statementsOf((_, roles) => roles.includes(machineRole));
    const invoked = statements
      .filter((s) => list(s.Action).includes('lambda:InvokeFunction'))
      .map((s) => (list(s.Resource)[0] as { 'Fn::GetAtt': string[] })['Fn::GetAtt'][0]);
    expect(invoked.sort()).toEqual(
      LAMBDA_TASKS.map((t) => logicalId('AWS::Lambda::Function', `${t[0]!.toUpperCase()}${t.slice(1)}`)).sort(),
    );
    const run = statements.find((s) => list(s.Action).includes('ecs:RunTask'));
    expect(JSON.stringify(run?.Resource)).toContain(logicalId('AWS::ECS::TaskDefinition', 'WorkerTask'));
  });

  it('give each task that calls DMS exactly the DMS and CloudWatch actions its part of the DMS path makes, and no other task any', () => {
    const dmsActions = (role: string) =>
      statementsOf((_, roles) => roles.includes(role))
        .flatMap((s) => list(s.Action))
        .filter((a) => /^dms:|^cloudwatch:(GetMetricData|ListMetrics)$|^iam:PassRole$/.test(a))
        .sort();
    for (const task of LAMBDA_TASKS) {
      const role = logicalId('AWS::IAM::Role', `${task[0]!.toUpperCase()}${task.slice(1)}ServiceRole`);
      const expected = [...((DMS_TASK_ACTIONS as Record<string, readonly string[]>)[task] ?? [])].sort();
      expect(dmsActions(role), task).toEqual(expected);
    }
    expect(dmsActions(logicalId('AWS::IAM::Role', 'WorkerTaskTaskRole'))).toEqual([]);
    // The DMS Serverless events' handler reads the replication an event prompts it to look at, and nothing else.
    expect(dmsActions(logicalId('AWS::IAM::Role', 'DmsReplicationStateServiceRole'))).toEqual([
      'dms:DescribeReplications',
    ]);
    // So does the task events' handler: the task's state now decides, not a late event.
    expect(dmsActions(logicalId('AWS::IAM::Role', 'DmsTaskStateServiceRole'))).toEqual([
      'dms:DescribeReplicationTasks',
    ]);
    for (const other of ['RdsInstanceEventServiceRole', 'DumpCreatedServiceRole'])
      expect(dmsActions(logicalId('AWS::IAM::Role', other)), other).toEqual([]);
    // The role DMS reads the secrets with may be passed to DMS only.
    const startDms = logicalId('AWS::IAM::Role', 'StartDmsServiceRole');
    const passRole = statementsOf((_, roles) => roles.includes(startDms)).filter((s) =>
      list(s.Action).includes('iam:PassRole'),
    );
    expect(passRole).toHaveLength(1);
    expect(passRole[0]!.Condition).toEqual({ StringEquals: { 'iam:PassedToService': 'dms.amazonaws.com' } });
    // Deleting is for the rollback and the clean-up only.
    const deleters = LAMBDA_TASKS.filter((t) =>
      ((DMS_TASK_ACTIONS as Record<string, readonly string[]>)[t] ?? []).includes('dms:DeleteReplicationTask'),
    );
    expect(deleters.sort()).toEqual(['cleanup', 'rollback']);
  });

  it('pass cdk-nag AwsSolutions: every finding is fixed or suppressed with a reason in the stack', () => {
    const nag = messages.filter((m) => String(m.entry.data).startsWith('AwsSolutions-'));
    const errors = nag.filter((m) => m.level === 'error').map((m) => `${m.id}: ${String(m.entry.data).slice(0, 160)}`);
    expect(errors).toEqual([]);
    // The checks did run: the suppressions they honoured are in the template's metadata.
    const suppressed = Object.values(resources).filter((r) => r.Metadata?.cdk_nag?.rules_to_suppress?.length);
    expect(suppressed.length).toBeGreaterThan(0);
    for (const r of suppressed)
      for (const rule of r.Metadata.cdk_nag.rules_to_suppress) expect(rule.reason.length).toBeGreaterThan(30);
  });
});

describe('the connection switch of an SSM parameter or a Route 53 record', () => {
  /** The stack synthesized (with cdk-nag) for another switch: its policies and nag's errors. */
  async function synthWith(switchTarget: DeployConfig['switchTarget']) {
    const { artifact } = await synthesize({ ...CONFIG, switchTarget });
    const t = Template.fromJSON(artifact.template);
    const roleId = (prefix: string) =>
      Object.keys(t.findResources('AWS::IAM::Role')).find((id) => id.startsWith(prefix));
    /** Every statement granting an action of `service`, with the roles holding it. */
    const granting = (service: string) =>
      Object.values(t.findResources('AWS::IAM::Policy')).flatMap((policy) =>
        (policy.Properties.PolicyDocument.Statement as Statement[])
          .filter((st) => list(st.Action).some((a: string) => a.startsWith(`${service}:`)))
          .map((st) => ({
            actions: list(st.Action).sort(),
            resource: st.Resource,
            roles: (policy.Properties.Roles as { Ref: string }[]).map((r) => r.Ref).sort(),
            condition: st.Condition,
          })),
      );
    const nagErrors = artifact.messages
      .filter((m) => m.level === 'error' && String(m.entry.data).startsWith('AwsSolutions-'))
      .map((m) => `${m.id}: ${String(m.entry.data).slice(0, 160)}`);
    return { granting, roles: [roleId('CutoverServiceRole'), roleId('RollbackServiceRole')].sort(), nagErrors };
  }
  /** A resource ARN as the template holds it (the partition a reference). */
  const arnOf = (rest: string) => ({ 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, rest]] });
  /** Exactly `expected` in each of `roles`, and no other role granted any action of the service. */
  function grantedExactly(
    granted: { actions: string[]; resource: unknown; roles: string[] }[],
    roles: string[],
    expected: { actions: string[]; resource: unknown }[],
  ) {
    expect(roles).toHaveLength(2);
    expect([...new Set(granted.flatMap((g) => g.roles))].sort()).toEqual(roles);
    for (const role of roles)
      expect(
        granted.filter((g) => g.roles.includes(role)).map(({ actions, resource }) => ({ actions, resource })),
        role,
      ).toEqual(expected);
  }

  it('let only Cut over and Roll back read, write and label exactly the configured SSM parameter; cdk-nag stays clean', async () => {
    const { granting, roles, nagErrors } = await synthWith({ kind: 'ssm-parameter', name: '/shop/database-url' });
    grantedExactly(granting('ssm'), roles as string[], [
      {
        actions: [
          'ssm:GetParameter',
          'ssm:GetParameterHistory',
          'ssm:LabelParameterVersion',
          'ssm:PutParameter',
          'ssm:UnlabelParameterVersion',
        ],
        resource: arnOf(`:ssm:${REGION}:${ACCOUNT}:parameter/shop/database-url`),
      },
      // The parameter's type and KMS key: DescribeParameters has no resource type.
      { actions: ['ssm:DescribeParameters'], resource: '*' },
    ]);
    expect(granting('route53')).toEqual([]);
    expect(nagErrors).toEqual([]);
  });

  it('let only Cut over and Roll back use exactly the SSM parameter’s configured KMS key (decrypt, encrypt, data keys), and no other key; cdk-nag stays clean', async () => {
    const key = `arn:aws:kms:${REGION}:${ACCOUNT}:key/0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0`;
    const { granting, roles, nagErrors } = await synthWith({
      kind: 'ssm-parameter',
      name: '/shop/database-url',
      kmsKeyArn: key,
    });
    grantedExactly(granting('kms'), roles as string[], [
      { actions: ['kms:Decrypt', 'kms:Encrypt', 'kms:GenerateDataKey'], resource: key },
    ]);
    // Only through Parameter Store of the stack's region, never directly or through another service.
    // (the partition's URL suffix: amazonaws.com, amazonaws.com.cn in China)
    for (const grant of granting('kms'))
      expect(grant.condition).toEqual({
        StringEquals: { 'kms:ViaService': { 'Fn::Join': ['', [`ssm.${REGION}.`, { Ref: 'AWS::URLSuffix' }]] } },
      });
    // The parameter's own grant is unchanged.
    expect(granting('ssm').flatMap((g) => g.actions)).not.toContain('kms:Decrypt');
    expect(nagErrors).toEqual([]);
    // Without a key named, no role may use any KMS key for the switch.
    const plain = await synthWith({ kind: 'ssm-parameter', name: '/shop/database-url' });
    expect(plain.granting('kms').filter((g) => g.roles.some((r) => roles.includes(r)))).toEqual([]);
  });

  it('let only Cut over and Roll back change records of exactly the configured hosted zone and follow their changes; cdk-nag stays clean', async () => {
    const { granting, roles, nagErrors } = await synthWith({
      kind: 'route53',
      hostedZoneId: 'Z0123456789ABCDEFGHIJ',
      recordName: 'db.shop.internal',
      ttlSeconds: 30,
    });
    grantedExactly(granting('route53'), roles as string[], [
      {
        actions: ['route53:ChangeResourceRecordSets', 'route53:ListResourceRecordSets'],
        resource: arnOf(':route53:::hostedzone/Z0123456789ABCDEFGHIJ'),
      },
      { actions: ['route53:GetChange'], resource: arnOf(':route53:::change/*') },
    ]);
    expect(granting('ssm')).toEqual([]);
    expect(nagErrors).toEqual([]);
  });
});

describe('Slack', () => {
  const fnId = (prefix: string) => logicalId('AWS::Lambda::Function', prefix);
  const roleOf = (prefix: string) => logicalId('AWS::IAM::Role', `${prefix}ServiceRole`);
  const statementsOfRole = (prefix: string) => statementsOf((_, roles) => roles.includes(roleOf(prefix)));
  // X-Ray tracing, which every function has, aside.
  const actionsOf = (prefix: string) =>
    statementsOfRole(prefix)
      .flatMap((s) => list(s.Action) as string[])
      .filter((a) => !a.startsWith('xray:'));

  it('routes POST /slack/commands and POST /slack/interactions to their own functions, with access logs', () => {
    const routes = Object.values(template.findResources('AWS::ApiGatewayV2::Route')) as Resource[];
    expect(routes.map((r) => r.Properties.RouteKey).sort()).toEqual([SLACK_ROUTES.commands, SLACK_ROUTES.interactions]);
    const integrations = template.findResources('AWS::ApiGatewayV2::Integration');
    for (const [key, fn] of [
      [SLACK_ROUTES.commands, 'SlackCommands'],
      [SLACK_ROUTES.interactions, 'SlackInteractions'],
    ] as const) {
      const route = routes.find((r) => r.Properties.RouteKey === key)!;
      const target = JSON.stringify(route.Properties.Target);
      const [integrationId] = Object.keys(integrations).filter((id) => target.includes(id));
      expect(integrations[integrationId!]!.Properties).toMatchObject({
        IntegrationType: 'AWS_PROXY',
        PayloadFormatVersion: '2.0',
        IntegrationUri: { 'Fn::GetAtt': [fnId(fn), 'Arn'] },
      });
      // No authorizer: Slack cannot send one; the handler checks the signature.
      expect(route.Properties.AuthorizationType ?? 'NONE').toBe('NONE');
    }
    template.hasResourceProperties('AWS::ApiGatewayV2::Stage', {
      AccessLogSettings: { DestinationArn: Match.anyValue() },
      DefaultRouteSettings: {
        ThrottlingRateLimit: SLACK_REQUESTS_PER_SECOND,
        ThrottlingBurstLimit: SLACK_REQUESTS_PER_SECOND * 2,
      },
    });
    expect(
      Object.values(template.findResources('AWS::ApiGatewayV2::Api'))[0]!.Properties.CorsConfiguration,
    ).toBeUndefined();
  });

  it('gives each function only what it uses: the endpoints the signing secret, replay items and the worker; the worker the table and the state machine; the message function the bot token', () => {
    const signing = CONFIG.slackSigningSecretArn!;
    const bot = CONFIG.slackBotTokenArn!;
    for (const endpoint of ['SlackCommands', 'SlackInteractions']) {
      const st = statementsOfRole(endpoint);
      expect(actionsOf(endpoint).sort()).toEqual([
        'dynamodb:PutItem',
        'lambda:InvokeFunction',
        'secretsmanager:GetSecretValue',
      ]);
      expect(st.find((s) => list(s.Action).includes('secretsmanager:GetSecretValue'))!.Resource).toBe(signing);
      const put = st.find((s) => list(s.Action).includes('dynamodb:PutItem'))!;
      expect(put.Condition).toEqual({ 'ForAllValues:StringLike': { 'dynamodb:LeadingKeys': ['SLACK#SIGNATURE#*'] } });
      const invoke = st.find((s) => list(s.Action).includes('lambda:InvokeFunction'))!;
      expect(JSON.stringify(invoke.Resource)).toContain(fnId('SlackWorker'));
      expect(JSON.stringify(invoke.Resource)).not.toMatch(/SlackCommands|SlackInteractions|SlackMessages/);
    }
    const worker = actionsOf('SlackWorker');
    expect(worker).toEqual(
      expect.arrayContaining([
        'states:SendTaskSuccess',
        'states:SendTaskFailure',
        'states:StartExecution',
        'states:StopExecution',
        'states:DescribeExecution',
      ]),
    );
    expect(worker.filter((a) => a.startsWith('secretsmanager:'))).toEqual([]);
    const stop = statementsOfRole('SlackWorker').find((s) => list(s.Action).includes('states:StopExecution'))!;
    expect(JSON.stringify(stop.Resource)).toContain(':execution:test-pgferry-migration:*');
    const messageSecrets = statementsOfRole('SlackMessages').filter((s) =>
      list(s.Action).some((a) => a.startsWith('secretsmanager:')),
    );
    expect(messageSecrets.map((s) => s.Resource)).toEqual([bot]);
    // The secrets themselves never reach a function's environment: their ARNs do.
    const text = JSON.stringify(template.toJSON());
    expect(text).not.toMatch(/xoxb-/);
    const envOf = (prefix: string) => resources[fnId(prefix)]!.Properties.Environment.Variables;
    expect(envOf('SlackCommands').PGFERRY_SLACK_SIGNING_SECRET_ARN).toBe(signing);
    expect(envOf('SlackCommands').PGFERRY_SLACK_BOT_TOKEN_ARN).toBeUndefined();
    expect(envOf('SlackMessages').PGFERRY_SLACK_BOT_TOKEN_ARN).toBe(bot);
    expect(envOf('SlackWorker').PGFERRY_SLACK_SIGNING_SECRET_ARN).toBeUndefined();
    expect(envOf('SlackWorker').PGFERRY_SLACK_USERS).toBe('U024BE7LH');
  });

  it("keeps each migration's message current from every pgferry detail-type on its own bus, one event at a time", () => {
    const rule = resources[logicalId('AWS::Events::Rule', 'SlackMessagesRule')]!.Properties;
    expect(rule.EventPattern).toEqual({ source: ['pgferry'], 'detail-type': EVENT_TYPES });
    expect(rule.EventBusName).toEqual({ Ref: logicalId('AWS::Events::EventBus', 'Bus') });
    expect(rule.Targets).toEqual([
      expect.objectContaining({
        Arn: { 'Fn::GetAtt': [fnId('SlackMessages'), 'Arn'] },
        DeadLetterConfig: {
          Arn: { 'Fn::GetAtt': [logicalId('AWS::SQS::Queue', 'SlackMessagesRuleDeadLetters'), 'Arn'] },
        },
      }),
    ]);
    expect(resources[fnId('SlackMessages')]!.Properties.ReservedConcurrentExecutions).toBe(1);
  });

  it('runs its functions outside the subnets: they reach AWS APIs and slack.com, never a database', () => {
    for (const prefix of ['SlackCommands', 'SlackInteractions', 'SlackWorker', 'SlackMessages']) {
      const fn = resources[fnId(prefix)]!.Properties;
      expect(fn.VpcConfig, prefix).toBeUndefined();
      expect(fn).toMatchObject({ Runtime: 'nodejs22.x', Architectures: ['arm64'], TracingConfig: { Mode: 'Active' } });
    }
  });
});

describe('deployment configuration', () => {
  it('names each missing or malformed variable', () => {
    expect(() => deployConfigFromEnv({})).toThrow(/PGFERRY_VPC_ID: not set.*PGFERRY_SUBNET_IDS: not set/);
    expect(() =>
      deployConfigFromEnv({
        PGFERRY_VPC_ID: 'vpc-0abc',
        PGFERRY_SUBNET_IDS: 'subnet-0a, nonsense',
        PGFERRY_SECURITY_GROUP_IDS: 'sg-0a',
      }),
    ).toThrow(/PGFERRY_SUBNET_IDS: expected subnet-… ids/);
  });

  it('reads the connection switch as JSON and names PGFERRY_SWITCH when it is not one', () => {
    const env = { PGFERRY_VPC_ID: 'vpc-0abc', PGFERRY_SUBNET_IDS: 'subnet-0a', PGFERRY_SECURITY_GROUP_IDS: 'sg-0a' };
    expect(
      deployConfigFromEnv({ ...env, PGFERRY_SWITCH: '{"kind":"ssm-parameter","name":"/shop/database-url"}' })
        .switchTarget,
    ).toEqual({ kind: 'ssm-parameter', name: '/shop/database-url' });
    expect(() => deployConfigFromEnv({ ...env, PGFERRY_SWITCH: 'secret' })).toThrow(/PGFERRY_SWITCH: expected JSON/);
    expect(() => deployConfigFromEnv({ ...env, PGFERRY_SWITCH: '{"kind":"ssm-parameter"}' })).toThrow(
      /PGFERRY_SWITCH: switch.name is required/,
    );
    // A SecureString's customer-managed key, by its key ARN: the grant names the key itself.
    const key = 'arn:aws:kms:eu-west-1:123456789012:key/0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0';
    expect(
      deployConfigFromEnv({
        ...env,
        PGFERRY_SWITCH: JSON.stringify({ kind: 'ssm-parameter', name: '/shop/database-url', kmsKeyArn: key }),
      }).switchTarget,
    ).toEqual({ kind: 'ssm-parameter', name: '/shop/database-url', kmsKeyArn: key });
    for (const kmsKeyArn of [
      'arn:aws:kms:eu-west-1:123456789012:alias/shop-db',
      '0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0',
      7,
    ])
      expect(() =>
        deployConfigFromEnv({
          ...env,
          PGFERRY_SWITCH: JSON.stringify({ kind: 'ssm-parameter', name: '/shop/database-url', kmsKeyArn }),
        }),
      ).toThrow(/PGFERRY_SWITCH: switch\.kmsKeyArn must be /);
  });

  it('reads comma-separated ids and defaults the secret prefix and the WAL alarm', () => {
    expect(
      deployConfigFromEnv({
        PGFERRY_VPC_ID: 'vpc-0abc',
        PGFERRY_SUBNET_IDS: 'subnet-0a, subnet-0b',
        PGFERRY_SECURITY_GROUP_IDS: 'sg-0a',
      }),
    ).toEqual({
      vpcId: 'vpc-0abc',
      subnetIds: ['subnet-0a', 'subnet-0b'],
      securityGroupIds: ['sg-0a'],
      secretNamePrefix: 'pgferry/',
      walRetainedAlarmBytes: 20 * 1024 ** 3,
    });
  });

  it('takes Slack with both secrets by full ARN and someone allowed, and names what is missing', () => {
    const base = { PGFERRY_VPC_ID: 'vpc-0abc', PGFERRY_SUBNET_IDS: 'subnet-0a', PGFERRY_SECURITY_GROUP_IDS: 'sg-0a' };
    const signing = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgferry/slack-signing-AbCdEf';
    const bot = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgferry/slack-bot-GhIjKl';
    expect(() => deployConfigFromEnv({ ...base, PGFERRY_SLACK_SIGNING_SECRET_ARN: signing })).toThrow(
      /PGFERRY_SLACK_BOT_TOKEN_ARN: not set \(Slack needs both secrets/,
    );
    expect(() =>
      deployConfigFromEnv({ ...base, PGFERRY_SLACK_SIGNING_SECRET_ARN: signing, PGFERRY_SLACK_BOT_TOKEN_ARN: bot }),
    ).toThrow(/PGFERRY_SLACK_USERS: not set \(nobody could use \/pgferry/);
    expect(() =>
      deployConfigFromEnv({
        ...base,
        PGFERRY_SLACK_SIGNING_SECRET_ARN: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgferry/slack-signing',
        PGFERRY_SLACK_BOT_TOKEN_ARN: bot,
        PGFERRY_SLACK_USERS: 'U024BE7LH',
      }),
    ).toThrow(/PGFERRY_SLACK_SIGNING_SECRET_ARN: expected the full secret ARN/);
    expect(() =>
      deployConfigFromEnv({
        ...base,
        PGFERRY_SLACK_SIGNING_SECRET_ARN: signing,
        PGFERRY_SLACK_BOT_TOKEN_ARN: bot,
        PGFERRY_SLACK_USERS: '@alice',
      }),
    ).toThrow(/PGFERRY_SLACK_USERS: expected Slack ids such as U024BE7LH/);
    expect(
      deployConfigFromEnv({
        ...base,
        PGFERRY_SLACK_SIGNING_SECRET_ARN: signing,
        PGFERRY_SLACK_BOT_TOKEN_ARN: bot,
        PGFERRY_SLACK_USERS: 'U024BE7LH, W0ENTERPR',
        PGFERRY_SLACK_CHANNEL: 'C0MIGRATE',
      }),
    ).toMatchObject({
      slackSigningSecretArn: signing,
      slackBotTokenArn: bot,
      slackUsers: ['U024BE7LH', 'W0ENTERPR'],
      slackChannel: 'C0MIGRATE',
    });
  });
});
