import { InvalidInputError } from './errors';

/**
 * The environment the stack gives every Lambda function and the worker container: the names of the
 * resources they act on. Names only: credentials are read from Secrets Manager by ARN at run time.
 */
export const DEPLOYMENT_ENV = {
  /** The DynamoDB table of migrations, task tokens and correlations. */
  tableName: 'PGFERRY_TABLE_NAME',
  /** The event bus pgferry publishes its own events on (source `pgferry`). */
  busName: 'PGFERRY_BUS_NAME',
  /** The artifacts bucket (dumps, large per-migration records). */
  bucketName: 'PGFERRY_BUCKET_NAME',
  /** The deployment's stage, the `Stage` dimension of every metric. */
  stage: 'PGFERRY_STAGE',
} as const;

export type DeploymentEnv = Record<keyof typeof DEPLOYMENT_ENV, string>;

/** Reads the deployment's environment; a missing variable is named, since nothing works without it. */
export function deploymentEnv(env: NodeJS.ProcessEnv = process.env): DeploymentEnv {
  const missing = Object.values(DEPLOYMENT_ENV).filter((name) => !env[name]);
  if (missing.length) {
    throw new InvalidInputError(`${missing.join(', ')} not set`, {
      field: missing[0],
      hint: 'the stack sets these on every pgferry function and on the worker container: deploy with `npx sst deploy`',
    });
  }
  return Object.fromEntries(Object.entries(DEPLOYMENT_ENV).map(([key, name]) => [key, env[name]!])) as DeploymentEnv;
}

/** The SST app's name (sst.config.ts): the prefix of every resource name the stack leaves to SST. */
export const SST_APP_NAME = 'pgferry';

/** SST's stage names: what `npx sst deploy --stage` takes. */
const STAGE = /^[a-zA-Z][a-zA-Z0-9-]{0,62}$/;

/**
 * The migration table a stage's deploy makes: the stack names it so (stacks/storage.ts), and the CLI's
 * `--stage` reads it (status, plan, start, report).
 */
export function deployedTableName(stage: string, field = '--stage'): string {
  if (!STAGE.test(stage))
    throw new InvalidInputError(
      `${field} "${stage.slice(0, 70)}" is not an SST stage name: a letter, then letters, digits and -`,
      {
        field,
        hint: 'the stage given to `npx sst deploy --stage`',
      },
    );
  return `${stage}-${SST_APP_NAME}-Migrations`;
}
