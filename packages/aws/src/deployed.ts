/**
 * The migration store as a deployment uses it (the Lambda functions and the Fargate worker alike): the
 * DynamoDB table the stack names in the environment, with credentials read from Secrets Manager by the
 * ARNs the migration's config names, when a task connects. Nothing secret is kept in the table.
 */
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { InvalidInputError, type MigrationState } from '@pgferry/core';
import { DynamoMigrationStore, type SecretsVault } from './dynamo-store';
import { SecretsManagerResolver } from './secrets';
import { rdsCaBundleFile } from './tls';

/**
 * The migration's connection secrets, read from Secrets Manager by the ARNs its config names
 * (`config.secrets.source` / `.target`, the shape SecretsManagerResolver validates). Nothing is
 * kept: the store holds ARNs only, and the URLs live in the task's memory.
 */
export function secretsManagerVault(resolver: SecretsManagerResolver): SecretsVault {
  return {
    resolve(migration: MigrationState) {
      const refs = migration.config.secrets;
      if (!refs)
        throw new InvalidInputError(`migration ${migration.config.id} names no secrets`, {
          field: 'secrets',
          migrationId: migration.config.id,
          hint: 'its config needs secrets.source.secretArn and secrets.target.secretArn (Secrets Manager ARNs)',
        });
      if (!refs.target)
        throw new InvalidInputError(
          `migration ${migration.config.id} has no target credentials yet: secrets.target is recorded when "Provision target" finds its instance available`,
          {
            field: 'secrets.target',
            migrationId: migration.config.id,
            hint: 'start it from a plan (`pgferry start PLAN`) so that its first execution provisions or adopts the target',
          },
        );
      return resolver.resolve({ source: refs.source, target: refs.target });
    },
  };
}

/** The deployment's store: the table `tableName`, credentials from Secrets Manager over verify-full TLS. */
export function deployedStore(
  clients: { dynamo: DynamoDBClient; secrets: SecretsManagerClient },
  tableName: string,
): DynamoMigrationStore {
  return new DynamoMigrationStore({
    client: DynamoDBDocumentClient.from(clients.dynamo),
    tableName,
    vault: secretsManagerVault(new SecretsManagerResolver(clients.secrets, { caBundleFile: () => rdsCaBundleFile() })),
    // A task whose renewals failed for a whole lease (DynamoDB away) and whose lease another holder took:
    // withTaskLease's store refuses its every write from then on (its steps record themselves before acting).
    onLeaseLost: (_id, message) => console.log(`warning: ${message}`),
  });
}
