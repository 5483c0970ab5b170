/**
 * What a task needs in AWS, built once per Lambda container from the environment the stack sets:
 * the DynamoDB store (credentials read from Secrets Manager by ARN when a task connects), Step
 * Functions callbacks, the pgferry bus, the RDS provisioner, CloudWatch for the metrics, and the
 * connection switch the migration's config names.
 */
import { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { DatabaseMigrationServiceClient } from '@aws-sdk/client-database-migration-service';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { EventBridgeClient } from '@aws-sdk/client-eventbridge';
import { RDSClient } from '@aws-sdk/client-rds';
import { S3Client } from '@aws-sdk/client-s3';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { SFNClient } from '@aws-sdk/client-sfn';
import {
  AwsDmsReplication,
  awaitDumpUploadTask,
  connectionSwitchFor,
  deployedStore,
  EventBridgePublisher,
  RdsTargetProvisioner,
  SfnTaskCallbacks,
} from '@pgferry/aws';
import { type DeploymentEnv, deploymentEnv, type TaskCallbacks } from '@pgferry/core';
import type { TaskDeps } from '@pgferry/postgres';

export interface AwsClients {
  dynamo: DynamoDBClient;
  sfn: SFNClient;
  events: EventBridgeClient;
  rds: RDSClient;
  secrets: SecretsManagerClient;
  cloudwatch: CloudWatchClient;
  dms: DatabaseMigrationServiceClient;
  s3: S3Client;
}

export function awsClients(): AwsClients {
  return {
    dynamo: new DynamoDBClient({}),
    sfn: new SFNClient({}),
    events: new EventBridgeClient({}),
    rds: new RDSClient({}),
    secrets: new SecretsManagerClient({}),
    cloudwatch: new CloudWatchClient({}),
    dms: new DatabaseMigrationServiceClient({}),
    s3: new S3Client({}),
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
  const store = deployedStore(clients, env.tableName);
  const callbacks = new SfnTaskCallbacks(clients.sfn);
  const provisioner = new RdsTargetProvisioner(clients.rds, store, callbacks, log);
  const switchClients = { secrets: clients.secrets };
  return {
    env,
    clients,
    store,
    callbacks,
    events: new EventBridgePublisher(clients.events, { busName: env.busName }),
    log,
    // The target comes from the migration's record (its plan), not the state's payload.
    provisionTarget: (input) => provisioner.run(input),
    // The migration's `switch` (a secret, SSM parameter or CNAME), switched by the cutover, put back by the rollback.
    connectionSwitch: (config) => connectionSwitchFor(config.switch, switchClients),
    dms: new AwsDmsReplication(clients.dms, clients.cloudwatch, store, callbacks),
    // The dump's S3 event completes the token; a dump already there completes it here.
    awaitDumpUpload: (input) =>
      awaitDumpUploadTask({ s3: clients.s3, bucket: env.bucketName, callbacks, store, log }, input),
  };
}
