import type { Stack } from 'aws-cdk-lib';
import { NagSuppressions } from 'cdk-nag';
import type { IConstruct } from 'constructs';

type Finding = { id: string; reason: string; appliesTo?: (string | { regex: string })[] };

const LAMBDA_RUNTIME: Finding = {
  id: 'AwsSolutions-L1',
  reason:
    'nodejs22.x is the runtime pgferry is built and tested for (engines, esbuild target); a newer one is adopted on purpose, not by a linter',
};

const LAMBDA_MANAGED_POLICIES: Finding = {
  id: 'AwsSolutions-IAM4',
  reason:
    "AWSLambdaBasicExecutionRole (its own log streams) and AWSLambdaVPCAccessExecutionRole (the ENIs of a function in the customer's subnets) are AWS's own minimal policies for any Lambda function",
  appliesTo: [
    'Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole',
    'Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole',
  ],
};

/** `Resource::*` only where the service has no resource type for the action. */
const NO_RESOURCE_TYPE: Finding = {
  id: 'AwsSolutions-IAM5',
  reason:
    'X-Ray PutTraceSegments/PutTelemetryRecords, CloudWatch PutMetricData, GetMetricData and ListMetrics, SSM DescribeParameters (read-only metadata, for an SSM connection switch) and the DMS Describe… calls (list calls filtered by a name or an ARN DMS gives at run time; they change nothing) have no resource to name; PutMetricData is held to the pgferry namespace by a condition',
  appliesTo: ['Resource::*'],
};

const SECRETS_BY_PREFIX: Finding = {
  id: 'AwsSolutions-IAM5',
  reason:
    "Credentials are given by ARN at run time: the tasks may read the operator's secrets under the configured name prefix, and the master secret RDS manages for an instance named pgferry-* (held by a tag condition)",
  appliesTo: [{ regex: '/^Resource::arn:<AWS::Partition>:secretsmanager:.*:secret:(.+\\*|rds!db-\\*)$/' }],
};

const DESCRIBE_INSTANCES: Finding = {
  id: 'AwsSolutions-IAM5',
  reason:
    'DescribeDBInstances reads the status and tags of the instance an event or a plan names, whatever its name; it changes nothing',
  appliesTo: [{ regex: '/^Resource::arn:<AWS::Partition>:rds:.*:db:\\*$/' }],
};

const DMS_RESOURCES: Finding = {
  id: 'AwsSolutions-IAM5',
  reason:
    'DMS names its tasks, endpoints, instances and replication configs by random ids, not by the names pgferry gives them (pgferry-<migration id>-…), so the resource types are named; iam:PassRole is held to DMS by iam:PassedToService, for the role the plan names to read its secrets',
  appliesTo: [
    { regex: '/^Resource::arn:<AWS::Partition>:dms:.*:(task|endpoint|rep|replication-config):\\*$/' },
    { regex: '/^Resource::arn:<AWS::Partition>:iam::.*:role/\\*$/' },
  ],
};

/** A Route 53 connection switch follows the change it submitted to INSYNC: Route 53 makes the change's id. */
const ROUTE53_CHANGES: Finding = {
  id: 'AwsSolutions-IAM5',
  reason:
    'route53:GetChange reads the status of the change the Route 53 connection switch submitted (to see it INSYNC); Route 53 gives the change its id only when it is submitted, and GetChange changes nothing',
  appliesTo: [{ regex: '/^Resource::arn:<AWS::Partition>:route53:::change/\\*$/' }],
};

const TASK_LEVEL: Finding[] = [
  LAMBDA_RUNTIME,
  LAMBDA_MANAGED_POLICIES,
  NO_RESOURCE_TYPE,
  SECRETS_BY_PREFIX,
  ROUTE53_CHANGES,
];

const DEAD_LETTER_QUEUE: Finding = {
  id: 'AwsSolutions-SQS3',
  reason: 'This queue is itself the dead-letter queue of an EventBridge target and of the Lambda function behind it',
};

/**
 * cdk-nag AwsSolutions findings this stack accepts, each with the reason it is right here. Everything
 * else cdk-nag reports is an error the stack test fails on.
 */
export function suppressNagFindings(
  stack: Stack,
  parts: {
    taskFunctions: IConstruct[];
    eventHandlers: IConstruct[];
    provisionTarget: IConstruct;
    dumpUploadTask: IConstruct;
    rdsInstanceHandler: IConstruct;
    dmsTasks: IConstruct[];
    workerTask: IConstruct;
    stateMachine: IConstruct;
    deadLetterQueues: IConstruct[];
    slack?: {
      api: IConstruct;
      commands: IConstruct;
      interactions: IConstruct;
      worker: IConstruct;
      messages: IConstruct;
    };
  },
) {
  const suppress = (construct: IConstruct, findings: Finding[]) =>
    NagSuppressions.addResourceSuppressions(construct, findings, true);

  for (const fn of parts.taskFunctions) suppress(fn, TASK_LEVEL);
  for (const fn of parts.eventHandlers)
    suppress(fn, [
      LAMBDA_RUNTIME,
      LAMBDA_MANAGED_POLICIES,
      NO_RESOURCE_TYPE,
      {
        id: 'AwsSolutions-IAM5',
        reason:
          'The S3 event handler reads back the metadata (sha256, size) of the dump an event names, dumps/<migration id>/data.dump: object keys are not known in advance, and it may only read under dumps/',
        appliesTo: [{ regex: '/^Resource::<Artifacts[0-9A-F]+\\.Arn>\\/dumps\\/\\*$/' }],
      },
    ]);
  suppress(parts.dumpUploadTask, [
    {
      id: 'AwsSolutions-IAM5',
      reason:
        '"Wait for the dump upload" reads back the metadata (sha256, size) of a dump uploaded before its token was stored, dumps/<migration id>/data.dump: object keys are not known in advance, and it may only read under dumps/',
      appliesTo: [{ regex: '/^Resource::<Artifacts[0-9A-F]+\\.Arn>\\/dumps\\/\\*$/' }],
    },
  ]);
  suppress(parts.rdsInstanceHandler, [DESCRIBE_INSTANCES]);
  for (const fn of parts.dmsTasks) suppress(fn, [DMS_RESOURCES]);
  suppress(parts.provisionTarget, [
    {
      id: 'AwsSolutions-IAM5',
      reason:
        "The target, its parameter group and its master secret do not exist before the task creates them: the group is pgferry-<migration id> (only pgferry's own groups are created, changed or tagged), the instance is named by the plan and may only be created carrying the migration tag (a request-tag condition), its secret is named by RDS (rds!…); CreateDBInstance also needs the subnet group, option group and parameter group the plan names; describing instances and reading any parameter group (DescribeDBParameters/DescribeDBParameterGroups, which change nothing) lets the task adopt an instance the plan names and check a plan's own group for logical replication",
      appliesTo: [
        { regex: '/^Resource::arn:<AWS::Partition>:rds:.*:pg:pgferry-\\*$/' },
        { regex: '/^Resource::arn:<AWS::Partition>:rds:.*:(db|subgrp|og|pg):\\*$/' },
        { regex: '/^Resource::arn:<AWS::Partition>:secretsmanager:.*:secret:rds!\\*$/' },
      ],
    },
  ]);
  suppress(parts.workerTask, [
    SECRETS_BY_PREFIX,
    {
      id: 'AwsSolutions-IAM5',
      reason:
        "The worker writes and reads the artifacts bucket's objects (dumps/<migration id>/…): object keys are not known in advance",
      appliesTo: [{ regex: '/^Resource::<Artifacts[0-9A-F]+\\.Arn>\\/\\*$/' }],
    },
    {
      id: 'AwsSolutions-IAM5',
      reason: 'ecr:GetAuthorizationToken, which the execution role needs to pull the image, has no resource type',
      appliesTo: ['Resource::*'],
    },
    {
      id: 'AwsSolutions-ECS2',
      reason:
        "The container's environment holds resource names only (table, bus, bucket, stage); credentials come from Secrets Manager by ARN at run time",
    },
  ]);
  suppress(parts.stateMachine, [
    {
      id: 'AwsSolutions-IAM5',
      reason:
        'Log delivery to CloudWatch Logs and X-Ray tracing have no resource type; lambda:InvokeFunction on <function ARN>:* covers the versions and aliases of exactly the task functions',
      appliesTo: ['Resource::*', { regex: '/^Resource::<[A-Za-z0-9]+\\.Arn>:\\*$/' }],
    },
  ]);
  for (const queue of parts.deadLetterQueues) suppress(queue, [DEAD_LETTER_QUEUE]);
  if (parts.slack) suppressSlackFindings(parts.slack, suppress);

  // Handlers CDK and SST add to every stack of this kind (S3 bucket notifications, SST's custom resources).
  const frameworkHandlers = stack.node
    .findAll()
    .filter((c) => c.node.id === 'CustomResourceHandler' || c.node.id.startsWith('BucketNotificationsHandler'));
  for (const handler of frameworkHandlers) {
    suppress(handler, [
      { ...LAMBDA_RUNTIME, reason: 'A framework-provided custom resource handler (CDK, SST): its runtime is theirs' },
      {
        id: 'AwsSolutions-IAM4',
        reason: 'A framework-provided custom resource handler (CDK, SST) logs through AWSLambdaBasicExecutionRole',
        appliesTo: ['Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole'],
      },
    ]);
  }
}

/** The Slack endpoints are public by design: Slack calls them, and each request proves itself by its signature. */
function suppressSlackFindings(
  slack: { api: IConstruct; commands: IConstruct; interactions: IConstruct; worker: IConstruct; messages: IConstruct },
  suppress: (construct: IConstruct, findings: Finding[]) => void,
) {
  const base = [LAMBDA_RUNTIME, LAMBDA_MANAGED_POLICIES, NO_RESOURCE_TYPE];
  suppress(slack.api, [
    {
      id: 'AwsSolutions-APIG4',
      reason:
        "Slack cannot send IAM, JWT or Lambda-authorizer credentials: every request is authenticated in the handler by Slack's v0 signature (HMAC-SHA256 of the raw body with the app's signing secret, 5-minute window, replay cache) before anything in it is read",
    },
  ]);
  const invokeWorker: Finding = {
    id: 'AwsSolutions-IAM5',
    reason:
      "lambda:InvokeFunction on <worker ARN>:* covers the versions and aliases of exactly the Slack worker function, which the endpoints hand a command's work to",
    appliesTo: [{ regex: '/^Resource::<SlackWorker[0-9A-F]+\\.Arn>:\\*$/' }],
  };
  for (const endpoint of [slack.commands, slack.interactions]) suppress(endpoint, [...base, invokeWorker]);
  suppress(slack.worker, [
    ...base,
    {
      id: 'AwsSolutions-IAM5',
      reason:
        "abort and rollback describe and stop the migration's own execution, whose name (the migration id) is known only when the command arrives: the resource is every execution of this stack's state machine, no other",
      appliesTo: [{ regex: '/^Resource::arn:<AWS::Partition>:states:.*:execution:.+:\\*$/' }],
    },
  ]);
  suppress(slack.messages, base);
}
