/**
 * What the Slack functions need in AWS, built once per container from the environment the stack sets:
 * the secrets (read on first use and cached), the replay cache and message records in the migration
 * table, the store, Step Functions, and the hand-off to the worker function.
 */
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import {
  cachedSecretString,
  DynamoReplayCache,
  DynamoSlackMessages,
  respondToSlack,
  SlackWebApi,
  type SlackWork,
  type SlackWorkDeps,
  type StartFromPlan,
  startFromPlan,
} from '@pgferry/aws';
import {
  type DeploymentEnv,
  deploymentEnv,
  InvalidInputError,
  type MigrationStore,
  requiredSlackEnv,
  type SlackEnv,
  slackEnv,
} from '@pgferry/core';
import { type AwsClients, awsClients, awsTaskDeps } from './aws-deps';
import { createSlackEndpoint, type SlackEndpoint, type SlackEndpointDeps } from './slack-endpoint';

/** `/pgferry start <plan>`: the migration recorded from the plan and its execution started (packages/aws start.ts). */
export const startMigrationFromPlan: StartFromPlan = startFromPlan;

/** The plans `start` and the approver checks read: the migration table's `PLAN#<name>` items. */
export function storePlans(store: MigrationStore): SlackWorkDeps['plans'] {
  return {
    getPlan: async (name) => {
      if (!store.getPlan) throw new InvalidInputError('this store keeps no plans', { field: 'plan' });
      return store.getPlan(name);
    },
  };
}

/** Where Slack's HTTP calls go: Slack itself, unless a test points them at a local server. */
export interface SlackHttp {
  fetch?: typeof fetch;
  /** Response URLs followed (default https://hooks.slack.com/). */
  responseUrlPrefix?: string;
  /** The Web API (default https://slack.com/api/). */
  apiBaseUrl?: string;
}

interface Setting {
  env?: SlackEnv;
  deployment?: DeploymentEnv;
  log?: (message: string) => void;
  http?: SlackHttp;
}

const respondWith =
  (http: SlackHttp = {}) =>
  (url: string, response: Parameters<typeof respondToSlack>[1]) =>
    respondToSlack(url, response, { fetch: http.fetch, allowedPrefix: http.responseUrlPrefix });

export function slackEndpointDeps(
  clients: AwsClients & { lambda: LambdaClient },
  { env = slackEnv(), deployment = deploymentEnv(), log = (m) => console.log(m), http }: Setting = {},
): SlackEndpointDeps {
  const worker = requiredSlackEnv(env, 'workerFunction');
  return {
    signingSecret: cachedSecretString(clients.secrets, requiredSlackEnv(env, 'signingSecretArn')),
    replayCache: new DynamoReplayCache(DynamoDBDocumentClient.from(clients.dynamo), deployment.tableName),
    access: env.access,
    // An asynchronous invocation: Lambda queues it and answers 202 at once, so the endpoint answers
    // Slack within its 3 s whatever the work takes. Simpler than a queue (no extra resource, the
    // worker's failures are answered to the person through response_url) and as robust: Lambda keeps
    // the event until the worker takes it.
    handOff: async (work: SlackWork) => {
      const out = await clients.lambda.send(
        new InvokeCommand({ FunctionName: worker, InvocationType: 'Event', Payload: JSON.stringify(work) }),
      );
      if (out.StatusCode !== 202) throw new Error(`the Slack worker was not invoked (HTTP ${out.StatusCode})`);
    },
    respond: respondWith(http),
    log,
  };
}

export function slackWorkDeps(
  clients: AwsClients,
  { env = slackEnv(), deployment = deploymentEnv(), log = (m) => console.log(m), http }: Setting = {},
): SlackWorkDeps & { respond: ReturnType<typeof respondWith> } {
  const task = awsTaskDeps(clients, deployment, log);
  return {
    store: task.store,
    plans: storePlans(task.store),
    sfn: clients.sfn,
    callbacks: task.callbacks,
    stateMachineArn: requiredSlackEnv(env, 'stateMachineArn'),
    start: startMigrationFromPlan,
    messages: new DynamoSlackMessages(DynamoDBDocumentClient.from(clients.dynamo), task.env.tableName),
    respond: respondWith(http),
    log,
  };
}

export function slackMessageDeps(
  clients: AwsClients,
  { env = slackEnv(), deployment = deploymentEnv(), log = (m) => console.log(m), http = {} }: Setting = {},
) {
  const task = awsTaskDeps(clients, deployment, log);
  return {
    store: task.store,
    messages: new DynamoSlackMessages(DynamoDBDocumentClient.from(clients.dynamo), task.env.tableName),
    api: new SlackWebApi(cachedSecretString(clients.secrets, requiredSlackEnv(env, 'botTokenArn')), {
      fetch: http.fetch,
      baseUrl: http.apiBaseUrl,
    }),
    defaultChannel: env.channel,
    log,
  };
}

export function lambdaClient(): LambdaClient {
  return new LambdaClient({});
}

let endpointDeps: SlackEndpointDeps | undefined;

/** A deployed endpoint: its clients and secrets made once per container, on the first request. */
export function slackEndpointHandler(endpoint: SlackEndpoint) {
  return createSlackEndpoint(
    endpoint,
    () => (endpointDeps ??= slackEndpointDeps({ ...awsClients(), lambda: lambdaClient() })),
  );
}
