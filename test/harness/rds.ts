import type { DBInstance, Parameter } from '@aws-sdk/client-rds';

/** An RDS for PostgreSQL instance as DescribeDBInstances returns it (the fields pgferry reads). */
export function rdsInstance(overrides: Partial<DBInstance> & { migrationId?: string } = {}): DBInstance {
  const { migrationId, ...rest } = overrides;
  return {
    DBInstanceIdentifier: 'pgferry-shop',
    DBInstanceStatus: 'creating',
    Engine: 'postgres',
    EngineVersion: '17.4',
    MultiAZ: true,
    StorageEncrypted: true,
    DBParameterGroups: [{ DBParameterGroupName: 'pgferry-shop', ParameterApplyStatus: 'in-sync' }],
    TagList: migrationId === undefined ? [] : [{ Key: 'pgferry:migration-id', Value: migrationId }],
    ...rest,
  };
}

/** The same instance once available: its endpoint and the ARN of the master secret RDS manages. */
export function availableInstance(overrides: Partial<DBInstance> & { migrationId?: string } = {}): DBInstance {
  return rdsInstance({
    DBInstanceStatus: 'available',
    Endpoint: { Address: 'pgferry-shop.c1a2b3c4d5e6.eu-west-1.rds.amazonaws.com', Port: 5432 },
    MasterUserSecret: {
      SecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-0a1b2c3d-AbCdEf',
      SecretStatus: 'active',
    },
    ...overrides,
  });
}

/** A DB parameter group's parameters as DescribeDBParameters lists them. */
export function groupParameters(values: Record<string, string>): Parameter[] {
  return Object.entries(values).map(([ParameterName, ParameterValue]) => ({ ParameterName, ParameterValue }));
}
