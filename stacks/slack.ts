import { SLACK_SIGNATURE_PK_PREFIX } from '@pgferry/aws';
import { EVENT_SOURCE, EVENT_TYPES, SLACK_ENV } from '@pgferry/core';
import { Stack } from 'aws-cdk-lib';
import type { Table } from 'aws-cdk-lib/aws-dynamodb';
import type { EventBus } from 'aws-cdk-lib/aws-events';
import { PolicyStatement } from 'aws-cdk-lib/aws-iam';
import type { Construct } from 'constructs';
import { Api, type FunctionProps } from 'sst/constructs';
import type { DeployConfig } from './config';
import { ruleToHandler } from './events';
import { attach, statements } from './permissions';
import { pgferryFunction } from './tasks';

/** The two request URLs the Slack app is configured with. */
export const SLACK_ROUTES = {
  commands: 'POST /slack/commands',
  interactions: 'POST /slack/interactions',
} as const;

/** The endpoints' throttle: far above what a team types or clicks, far below what would flood the functions. */
export const SLACK_REQUESTS_PER_SECOND = 20;

/**
 * Slack, when the deployment configures it: two endpoints on an HTTP API (they verify Slack's signature
 * and answer at once), a worker they invoke asynchronously for the work, and a function that keeps one
 * message per migration current from the pgferry bus. Each is granted only what it uses.
 */
export function slackResources(
  scope: Construct,
  config: DeployConfig,
  parts: {
    environment: Record<string, string>;
    table: Table;
    bus: EventBus;
    machineName: string;
    machineArn: string;
  },
) {
  const { slackSigningSecretArn, slackBotTokenArn } = config;
  if (!slackSigningSecretArn || !slackBotTokenArn) return undefined;
  const stack = Stack.of(scope);
  const allow = statements(scope);
  const environment = {
    ...parts.environment,
    [SLACK_ENV.users]: (config.slackUsers ?? []).join(','),
    [SLACK_ENV.channels]: (config.slackChannels ?? []).join(','),
  };
  const fn = (
    id: string,
    file: string,
    description: string,
    timeout: number,
    env: Record<string, string>,
    more: FunctionProps = {},
  ) =>
    pgferryFunction(scope, id, {
      handler: `functions/slack/${file}.handler`,
      description,
      timeout,
      environment: env,
      // Outside the customer's subnets: they talk to AWS APIs and slack.com only, never to a database,
      // and a VPC would make the 3 s answer depend on a cold ENI and the message on a NAT to slack.com.
      vpc: undefined,
      vpcSubnets: undefined,
      securityGroups: undefined,
      ...more,
    });

  // The work: a `start`, an approval or a rollback is a few API calls; a minute leaves room for retries.
  const worker = fn('SlackWorker', 'worker', 'pgferry: the work of a Slack command or button', 60, {
    ...environment,
    [SLACK_ENV.stateMachineArn]: parts.machineArn,
  });
  const endpointEnv = {
    ...environment,
    [SLACK_ENV.signingSecretArn]: slackSigningSecretArn,
    [SLACK_ENV.workerFunction]: worker.functionName,
  };
  // Slack waits 3 s for an answer: the endpoints only verify, decide and hand on.
  const commands = fn('SlackCommands', 'commands', 'pgferry: the /pgferry slash command', 10, endpointEnv);
  const interactions = fn('SlackInteractions', 'interactions', 'pgferry: Slack gate buttons', 10, endpointEnv);
  const messages = fn(
    'SlackMessages',
    'events',
    "pgferry: each migration's Slack message, from bus events",
    30,
    {
      ...environment,
      [SLACK_ENV.botTokenArn]: slackBotTokenArn,
      ...(config.slackChannel ? { [SLACK_ENV.channel]: config.slackChannel } : {}),
    },
    // One event at a time: two first events of a migration must not both post a message (the rest
    // wait in Lambda's asynchronous queue), and chat.update is rate-limited per channel anyway.
    { reservedConcurrentExecutions: 1 },
  );

  for (const endpoint of [commands, interactions]) {
    attach(
      endpoint,
      new PolicyStatement({ actions: ['secretsmanager:GetSecretValue'], resources: [slackSigningSecretArn] }),
      // The replay cache: one conditional put per request, of its own items only.
      new PolicyStatement({
        actions: ['dynamodb:PutItem'],
        resources: [parts.table.tableArn],
        conditions: { 'ForAllValues:StringLike': { 'dynamodb:LeadingKeys': [`${SLACK_SIGNATURE_PK_PREFIX}*`] } },
      }),
    );
    worker.grantInvoke(endpoint);
  }
  parts.table.grantReadWriteData(worker);
  attach(
    worker,
    allow.completeTaskTokens(parts.machineArn),
    new PolicyStatement({ actions: ['states:StartExecution'], resources: [parts.machineArn] }),
    // abort and rollback stop the migration's own execution (named after it) of this state machine only.
    new PolicyStatement({
      actions: ['states:DescribeExecution', 'states:StopExecution'],
      resources: [`arn:${stack.partition}:states:${stack.region}:${stack.account}:execution:${parts.machineName}:*`],
    }),
  );
  parts.table.grantReadWriteData(messages);
  attach(messages, new PolicyStatement({ actions: ['secretsmanager:GetSecretValue'], resources: [slackBotTokenArn] }));

  const api = new Api(scope, 'SlackApi', {
    accessLog: { retention: 'three_months' },
    // Slack calls from its servers: no browser reads these, and people type a few commands a minute.
    cors: false,
    defaults: { throttle: { rate: SLACK_REQUESTS_PER_SECOND, burst: SLACK_REQUESTS_PER_SECOND * 2 } },
    routes: {
      [SLACK_ROUTES.commands]: { function: commands },
      [SLACK_ROUTES.interactions]: { function: interactions },
    },
  });

  const rule = ruleToHandler(
    scope,
    'SlackMessagesRule',
    "pgferry's own events, for each migration's Slack message",
    { source: [EVENT_SOURCE], detailType: EVENT_TYPES },
    messages,
    parts.bus,
  );
  return { api, commands, interactions, worker, messages, rule };
}
