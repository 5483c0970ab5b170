/**
 * What a task needs in AWS, built once per Lambda container from the environment the stack sets:
 * the DynamoDB store (credentials read from Secrets Manager by ARN when a task connects), Step
 * Functions callbacks, the pgferry bus, the RDS provisioner and CloudWatch for the metrics.
 */
import { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { EventBridgeClient } from '@aws-sdk/client-eventbridge';
import { RDSClient } from '@aws-sdk/client-rds';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { SFNClient } from '@aws-sdk/client-sfn';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import {
  DynamoMigrationStore,
  EventBridgePublisher,
  type MigrationSecretRefs,
  type ProvisionTargetInput,
  RdsTargetProvisioner,
  rdsCaBundleFile,
  SecretsManagerResolver,
  type SecretsVault,
  SfnTaskCallbacks,
} from '@pgferry/aws';
import {
  type DeploymentEnv,
  deploymentEnv,
  InvalidInputError,
  type MigrationState,
  type TaskCallbacks,
} from '@pgferry/core';
import type { TaskDeps } from '@pgferry/postgres';

export interface AwsClients {
  dynamo: DynamoDBClient;
  sfn: SFNClient;
  events: EventBridgeClient;
  rds: RDSClient;
  secrets: SecretsManagerClient;
  cloudwatch: CloudWatchClient;
}

export function awsClients(): AwsClients {
  return {
    dynamo: new DynamoDBClient({}),
    sfn: new SFNClient({}),
    events: new EventBridgeClient({}),
    rds: new RDSClient({}),
    secrets: new SecretsManagerClient({}),
    cloudwatch: new CloudWatchClient({}),
  };
}

/**
 * The migration's connection secrets, read from Secrets Manager by the ARNs its config names
 * (`config.secrets.source` / `.target`, the shape SecretsManagerResolver validates). Nothing is
 * kept: the store holds ARNs only, and the URLs live in the task's memory.
 */
export function secretsManagerVault(resolver: SecretsManagerResolver): SecretsVault {
  return {
    resolve(migration: MigrationState) {
      const refs = (migration.config as { secrets?: MigrationSecretRefs }).secrets;
      if (!refs)
        throw new InvalidInputError(`migration ${migration.config.id} names no secrets`, {
          field: 'secrets',
          migrationId: migration.config.id,
          hint: 'its config needs secrets.source.secretArn and secrets.target.secretArn (Secrets Manager ARNs)',
        });
      return resolver.resolve(refs);
    },
  };
}

export interface AwsTaskDeps extends TaskDeps {
  callbacks: TaskCallbacks;
  env: DeploymentEnv;
  clients: AwsClients;
}

export function awsTaskDeps(
  clients: AwsClients = awsClients(),
  env: DeploymentEnv = deploymentEnv(),
  log: (message: string) => void = (m) => console.log(m),
): AwsTaskDeps {
  const store = new DynamoMigrationStore({
    client: DynamoDBDocumentClient.from(clients.dynamo),
    tableName: env.tableName,
    vault: secretsManagerVault(new SecretsManagerResolver(clients.secrets, { caBundleFile: () => rdsCaBundleFile() })),
  });
  const callbacks = new SfnTaskCallbacks(clients.sfn);
  const provisioner = new RdsTargetProvisioner(clients.rds, store, callbacks, log);
  return {
    env,
    clients,
    store,
    callbacks,
    events: new EventBridgePublisher(clients.events, { busName: env.busName }),
    log,
    provisionTarget: (input) => provisioner.provision(input as unknown as ProvisionTargetInput),
  };
}
