/**
 * The parts of a named plan a started migration keeps in its config: the target to provision or
 * adopt, and what its cutover switches. Apart from plan.ts so that the config (config.ts) can hold
 * them without a cycle between the two modules.
 */
import { z } from 'zod';

const SECRET_ARN = /^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$/;
export const secretArn = (field: string) =>
  z
    .string({ error: `${field} is required: the ARN of a Secrets Manager secret` })
    .regex(
      SECRET_ARN,
      `${field} must be a Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)`,
    );

/** A new RDS instance pgferry creates for the migration. */
const newTarget = z.strictObject({
  kind: z.literal('new'),
  instanceClass: z
    .string({ error: 'target.instanceClass is required, e.g. db.r6g.large' })
    .regex(/^db\.[a-z0-9-]+\.[a-z0-9]+$/, 'target.instanceClass must be an RDS instance class, e.g. db.r6g.large'),
  engineVersion: z
    .string({ error: 'target.engineVersion is required, e.g. 17 or 16.4' })
    .regex(/^\d{2}(\.\d+)?$/, 'target.engineVersion must be a PostgreSQL version such as 17 or 16.4')
    .refine((v) => Number.parseInt(v, 10) >= 11, 'target.engineVersion must be 11 or newer'),
  allocatedStorageGiB: z
    .number({ error: 'target.allocatedStorageGiB is required: the storage in GiB (20 to 65536)' })
    .int('target.allocatedStorageGiB must be a whole number of GiB')
    .min(20, 'target.allocatedStorageGiB must be at least 20 (RDS minimum)')
    .max(65536, 'target.allocatedStorageGiB must be at most 65536'),
  storageType: z.enum(['gp3', 'io1', 'io2'], { error: 'target.storageType must be gp3, io1 or io2' }).default('gp3'),
  multiAz: z.boolean({ error: 'target.multiAz must be true or false' }).default(true),
  dbSubnetGroupName: z
    .string({ error: 'target.dbSubnetGroupName is required: the DB subnet group the instance goes in' })
    .min(1, 'target.dbSubnetGroupName is empty'),
  vpcSecurityGroupIds: z
    .array(z.string().regex(/^sg-[0-9a-f]{8,17}$/, 'target.vpcSecurityGroupIds holds security group ids (sg-…)'), {
      error: 'target.vpcSecurityGroupIds must be a list of security group ids',
    })
    .min(1, 'target.vpcSecurityGroupIds needs at least one security group id'),
  parameterGroupName: z.string().min(1, 'target.parameterGroupName is empty').optional(),
  /** The database created with the instance, which the migration loads into (default: postgres). */
  dbName: z
    .string({ error: 'target.dbName must be a database name' })
    .regex(/^[A-Za-z][A-Za-z0-9_]{0,62}$/, 'target.dbName must be a letter, then letters, digits or _ (up to 63)')
    .optional(),
});

/** An RDS instance the user made, with the secret holding its credentials. */
const existingTarget = z.strictObject({
  kind: z.literal('existing'),
  instanceIdentifier: z
    .string({ error: 'target.instanceIdentifier is required: the RDS DB instance identifier' })
    .regex(
      /^[a-zA-Z][a-zA-Z0-9-]{0,62}$/,
      'target.instanceIdentifier must be an RDS DB instance identifier (a letter, then letters, digits and hyphens, up to 63)',
    ),
  secretArn: secretArn('target.secretArn'),
});

/** The plan's target: a new instance, or an existing one. */
export const planTargetSchema = z.discriminatedUnion('kind', [newTarget, existingTarget], {
  error: 'target.kind must be new (pgferry creates the RDS instance) or existing (an instance you made)',
});
export type PlanTarget = z.output<typeof planTargetSchema>;
