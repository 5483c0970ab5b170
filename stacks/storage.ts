import { MIGRATION_TABLE_KEYS as KEYS } from '@pgferry/aws';
import { deployedTableName } from '@pgferry/core';
import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import { AttributeType, BillingMode, Table, TableEncryption } from 'aws-cdk-lib/aws-dynamodb';
import { BlockPublicAccess, Bucket, BucketEncryption, ObjectOwnership } from 'aws-cdk-lib/aws-s3';
import type { Construct } from 'constructs';

/** Where the `dump` strategy writes (`dumps/<migrationId>/…`); its `Object Created` events advance the workflow. */
export const DUMPS_PREFIX = 'dumps/';

/** Dumps are only needed until the target is restored and verified; a failed multipart upload holds no value at all. */
const DUMP_EXPIRY = Duration.days(14);

export function migrationTable(scope: Construct, stage: string): Table {
  return new Table(scope, 'Migrations', {
    // A name known from the stage alone: what the CLI's `--stage S` reads (status, plan, start, report).
    tableName: deployedTableName(stage),
    // The store's layout (packages/aws DynamoMigrationStore): `pk = MIGRATION#<id>`, items sorted by
    // `sk`, and leases that lapse through the TTL attribute.
    partitionKey: { name: KEYS.partitionKey, type: AttributeType.STRING },
    sortKey: { name: KEYS.sortKey, type: AttributeType.STRING },
    timeToLiveAttribute: KEYS.timeToLive,
    billingMode: BillingMode.PAY_PER_REQUEST,
    encryption: TableEncryption.AWS_MANAGED,
    pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
    // A migration's state is the record of what was done to two production databases: a stack
    // removal must not take it along.
    removalPolicy: RemovalPolicy.RETAIN,
  });
}

export function artifactsBucket(scope: Construct): Bucket {
  const accessLogs = new Bucket(scope, 'ArtifactsAccessLogs', {
    encryption: BucketEncryption.S3_MANAGED,
    blockPublicAccess: BlockPublicAccess.BLOCK_ALL,
    enforceSSL: true,
    objectOwnership: ObjectOwnership.BUCKET_OWNER_PREFERRED,
    lifecycleRules: [{ id: 'expire-access-logs', expiration: Duration.days(90) }],
    removalPolicy: RemovalPolicy.RETAIN,
  });
  return new Bucket(scope, 'Artifacts', {
    encryption: BucketEncryption.S3_MANAGED,
    blockPublicAccess: BlockPublicAccess.BLOCK_ALL,
    enforceSSL: true,
    eventBridgeEnabled: true,
    serverAccessLogsBucket: accessLogs,
    serverAccessLogsPrefix: 'artifacts/',
    lifecycleRules: [
      { id: 'abort-incomplete-uploads', abortIncompleteMultipartUploadAfter: Duration.days(1) },
      { id: 'expire-dumps', prefix: DUMPS_PREFIX, expiration: DUMP_EXPIRY },
    ],
    removalPolicy: RemovalPolicy.RETAIN,
  });
}
