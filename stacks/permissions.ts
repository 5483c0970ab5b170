import { MIGRATION_TAG } from '@pgferry/aws';
import { METRIC_NAMESPACE, type SwitchTarget, type TaskName } from '@pgferry/core';
import { Stack } from 'aws-cdk-lib';
import { type IGrantable, PolicyStatement } from 'aws-cdk-lib/aws-iam';
import type { Construct } from 'constructs';
import { RDS_INSTANCE_PREFIX } from './events';

/**
 * Policy statements written out action by action: no `*` action on a data service, and every resource
 * named (a table, a bucket's objects, a state machine, a name prefix), never `*` alone.
 */
export function statements(scope: Construct) {
  const stack = Stack.of(scope);
  const arn = (service: string, resource: string) =>
    `arn:${stack.partition}:${service}:${stack.region}:${stack.account}:${resource}`;
  return {
    /** Connection credentials, by ARN at run time: the operator's secrets under the prefix, and the master password RDS manages for a target pgferry created. */
    readSecrets: (prefix: string) => [
      new PolicyStatement({
        actions: ['secretsmanager:GetSecretValue', 'secretsmanager:DescribeSecret'],
        resources: [arn('secretsmanager', `secret:${prefix}*`)],
      }),
      new PolicyStatement({
        actions: ['secretsmanager:GetSecretValue', 'secretsmanager:DescribeSecret'],
        resources: [arn('secretsmanager', 'secret:rds!db-*')],
        conditions: {
          StringLike: {
            'secretsmanager:ResourceTag/aws:rds:primaryDBInstanceArn': arn('rds', `db:${RDS_INSTANCE_PREFIX}*`),
          },
        },
      }),
    ],
    /** Only the tasks that complete a step's token (the worker, the event handlers, a target already available). */
    completeTaskTokens: (stateMachineArn: string) =>
      new PolicyStatement({
        actions: ['states:SendTaskSuccess', 'states:SendTaskFailure', 'states:SendTaskHeartbeat'],
        resources: [stateMachineArn],
      }),
    /** The artifacts bucket's objects (dumps, large per-migration records), read and written, never the bucket's settings. */
    artifacts: (bucketArn: string) => [
      new PolicyStatement({
        actions: [
          's3:GetObject',
          's3:PutObject',
          's3:DeleteObject',
          's3:AbortMultipartUpload',
          's3:ListMultipartUploadParts',
        ],
        resources: [`${bucketArn}/*`],
      }),
      new PolicyStatement({ actions: ['s3:ListBucket'], resources: [bucketArn] }),
    ],
    /** The dumps' metadata (HeadObject), read back by the S3 event handler before it completes an upload step. */
    readDumps: (bucketArn: string) =>
      new PolicyStatement({ actions: ['s3:GetObject'], resources: [`${bucketArn}/dumps/*`] }),
    /** PutMetricData has no resource type; the namespace condition keeps it to pgferry's metrics. */
    publishMetrics: () =>
      new PolicyStatement({
        actions: ['cloudwatch:PutMetricData'],
        resources: ['*'],
        conditions: { StringEquals: { 'cloudwatch:namespace': METRIC_NAMESPACE } },
      }),
    /**
     * The target pgferry creates: a parameter group named pgferry-<id> with logical replication on, and
     * an instance (named pgferry-<id> or as the plan says) that must carry the migration's tag. Only
     * pgferry's own groups are created or changed; any group may be read (an adopted instance's, a
     * plan's own, checked for logical replication) and a plan's own group given to the new instance.
     */
    provisionTarget: () => [
      new PolicyStatement({
        actions: ['rds:CreateDBParameterGroup', 'rds:ModifyDBParameterGroup'],
        resources: [arn('rds', `pg:${RDS_INSTANCE_PREFIX}*`)],
      }),
      new PolicyStatement({
        actions: ['rds:DescribeDBParameters', 'rds:DescribeDBParameterGroups'],
        resources: [arn('rds', 'pg:*')],
      }),
      new PolicyStatement({
        actions: ['rds:CreateDBInstance'],
        resources: [arn('rds', 'db:*'), arn('rds', 'pg:*'), arn('rds', 'subgrp:*'), arn('rds', 'og:*')],
        conditions: { Null: { [`aws:RequestTag/${MIGRATION_TAG}`]: 'false' } },
      }),
      // Tags given on creation (the instance's, pgferry's own group's).
      new PolicyStatement({
        actions: ['rds:AddTagsToResource'],
        resources: [arn('rds', 'db:*'), arn('rds', `pg:${RDS_INSTANCE_PREFIX}*`)],
        conditions: { Null: { [`aws:RequestTag/${MIGRATION_TAG}`]: 'false' } },
      }),
      // ManageMasterUserPassword: RDS creates the master secret with the caller's permissions.
      new PolicyStatement({
        actions: ['secretsmanager:CreateSecret', 'secretsmanager:TagResource'],
        resources: [arn('secretsmanager', 'secret:rds!*')],
      }),
    ],
    /**
     * The one resource the connection switch changes (the deployment's `switchTarget`), with the calls
     * its adapter makes (packages/aws/src/switch/) and no other.
     */
    connectionSwitch: (target: SwitchTarget) => {
      switch (target.kind) {
        case 'secret':
          return [
            new PolicyStatement({
              actions: [
                'secretsmanager:DescribeSecret',
                'secretsmanager:GetSecretValue',
                'secretsmanager:PutSecretValue',
                'secretsmanager:UpdateSecretVersionStage',
              ],
              resources: [target.secretArn],
            }),
          ];
        case 'ssm-parameter':
          return [
            new PolicyStatement({
              actions: [
                'ssm:GetParameter',
                'ssm:GetParameterHistory',
                'ssm:PutParameter',
                'ssm:LabelParameterVersion',
                'ssm:UnlabelParameterVersion',
              ],
              resources: [arn('ssm', `parameter/${target.name.replace(/^\//, '')}`)],
            }),
            // The parameter's type and KMS key: DescribeParameters has no resource type.
            new PolicyStatement({ actions: ['ssm:DescribeParameters'], resources: ['*'] }),
            // A SecureString under a customer-managed key: read (Decrypt) and write (Encrypt for a
            // standard parameter, GenerateDataKey for an advanced one) with exactly that key, and only
            // through Parameter Store of the stack's region (kms:ViaService): the roles cannot use the
            // key directly, nor through another service.
            ...(target.kmsKeyArn
              ? [
                  new PolicyStatement({
                    actions: ['kms:Decrypt', 'kms:Encrypt', 'kms:GenerateDataKey'],
                    resources: [target.kmsKeyArn],
                    // ssm.<region>.amazonaws.com, or .amazonaws.com.cn in the China partition.
                    conditions: { StringEquals: { 'kms:ViaService': `ssm.${stack.region}.${stack.urlSuffix}` } },
                  }),
                ]
              : []),
          ];
        case 'route53':
          return [
            new PolicyStatement({
              actions: ['route53:ChangeResourceRecordSets', 'route53:ListResourceRecordSets'],
              resources: [`arn:${stack.partition}:route53:::hostedzone/${target.hostedZoneId}`],
            }),
            new PolicyStatement({
              actions: ['route53:GetChange'],
              resources: [`arn:${stack.partition}:route53:::change/*`],
            }),
          ];
      }
    },
    /**
     * The DMS path, per task: exactly the calls that task's part of packages/aws's AwsDmsReplication
     * makes (DMS_TASK_ACTIONS). DMS names its ARNs by random ids, not by the names pgferry gives, so the
     * resources are the resource types; Describe… calls are list calls filtered by name or ARN, and
     * GetMetricData has no resource type.
     */
    dms: (actions: readonly string[]) => {
      const out: PolicyStatement[] = [];
      const listed = actions.filter((a) => a.startsWith('dms:Describe') || a.startsWith('cloudwatch:'));
      const acting = actions.filter((a) => a.startsWith('dms:') && !a.startsWith('dms:Describe'));
      if (listed.length) out.push(new PolicyStatement({ actions: listed, resources: ['*'] }));
      if (acting.length)
        out.push(
          new PolicyStatement({
            actions: acting,
            resources: ['task', 'endpoint', 'rep', 'replication-config'].map((t) => arn('dms', `${t}:*`)),
          }),
        );
      // The endpoints name the role DMS reads the connection secrets with.
      if (actions.includes('iam:PassRole'))
        out.push(
          new PolicyStatement({
            actions: ['iam:PassRole'],
            resources: [`arn:${stack.partition}:iam::${stack.account}:role/*`],
            conditions: { StringEquals: { 'iam:PassedToService': 'dms.amazonaws.com' } },
          }),
        );
      return out;
    },
    /** An instance's status and tags: to adopt one the plan names, and to check an event against the instance now. */
    describeInstances: () =>
      new PolicyStatement({ actions: ['rds:DescribeDBInstances'], resources: [arn('rds', 'db:*')] }),
  };
}

export function attach(grantee: IGrantable, ...list: (PolicyStatement | PolicyStatement[])[]) {
  for (const statement of list.flat()) grantee.grantPrincipal.addToPrincipalPolicy(statement);
}

/**
 * What each Lambda task calls on the DMS path (strategy dms); see AwsDmsReplication in packages/aws.
 * A replication instance's task: …ReplicationTask(s), DescribeReplicationInstances and GetMetricData.
 * DMS Serverless: …ReplicationConfig(s), Start/StopReplication, DescribeReplications (every step reads
 * the replication's state first), and ListMetrics to find the series its CDC latency is filed under.
 */
export const DMS_TASK_ACTIONS = {
  startDms: [
    'dms:DescribeEndpoints',
    'dms:CreateEndpoint',
    'dms:DescribeReplicationTasks',
    'dms:CreateReplicationTask',
    'dms:StartReplicationTask',
    'dms:DescribeReplicationConfigs',
    'dms:CreateReplicationConfig',
    'dms:DescribeReplications',
    'dms:StartReplication',
    'dms:AddTagsToResource',
    'iam:PassRole',
  ],
  awaitDmsFullLoad: ['dms:DescribeReplicationTasks', 'dms:DescribeReplications'],
  startReplication: [
    'dms:DescribeReplicationTasks',
    'dms:StartReplicationTask',
    'dms:DescribeReplications',
    'dms:StartReplication',
  ],
  checkLag: ['dms:DescribeReplicationInstances', 'cloudwatch:GetMetricData', 'cloudwatch:ListMetrics'],
  // Each approval window takes one sample, as "Check lag" does (the CDC latency on this path).
  awaitApproval: ['dms:DescribeReplicationInstances', 'cloudwatch:GetMetricData', 'cloudwatch:ListMetrics'],
  cutover: [
    'dms:DescribeReplicationInstances',
    'cloudwatch:GetMetricData',
    'cloudwatch:ListMetrics',
    'dms:DescribeReplicationTasks',
    'dms:StopReplicationTask',
    'dms:StartReplicationTask',
    'dms:DescribeReplications',
    'dms:StopReplication',
    'dms:StartReplication',
  ],
  ...Object.fromEntries(
    (['rollback', 'cleanup'] as const).map((t) => [
      t,
      [
        'dms:DescribeReplicationTasks',
        'dms:DescribeEndpoints',
        'dms:DescribeReplicationConfigs',
        'dms:StopReplicationTask',
        'dms:DeleteReplicationTask',
        'dms:DeleteEndpoint',
        'dms:DescribeReplications',
        'dms:StopReplication',
        'dms:DeleteReplicationConfig',
      ],
    ]),
  ),
} as const satisfies Partial<Record<TaskName, readonly string[]>>;

/** The DMS events' handler: a DMS Serverless event is a prompt to read the replication (handleDmsReplicationStateChange). */
export const DMS_EVENT_HANDLER_ACTIONS = ['dms:DescribeReplications'] as const;
/** A replication instance's task event is a prompt too: the task's state now decides (handleDmsTaskStateChange). */
export const DMS_TASK_EVENT_HANDLER_ACTIONS = ['dms:DescribeReplicationTasks'] as const;
