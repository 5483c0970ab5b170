/**
 * Connection credentials read from Secrets Manager by ARN when a task runs. The migration's config
 * holds only the ARNs (and where the secret does not say it, the host): the URLs with passwords exist
 * in memory for the task that uses them, never in state, events, execution input/output or logs.
 *
 * Two shapes of secret are read: an RDS-managed master secret (ManageMasterUserPassword) holds
 * `{username, password}` only, its host comes from the instance; a user's secret may hold RDS's
 * documented shape `{engine, host, port, username, password, dbname}`.
 */
import { GetSecretValueCommand, type SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import {
  type databaseSecretRefSchema,
  InvalidInputError,
  type MigrationSecretRefs,
  type MigrationSecrets,
  type MigrationState,
  migrationSecretRefsSchema,
  PgferryError,
} from '@pgferry/core';
import type { z } from 'zod';
import { withVerifyFull } from './tls';

// The reference schemas belong to the migration's config (core); re-exported here for the adapters' callers.
export {
  type DatabaseSecretRef,
  databaseSecretRefSchema,
  type MigrationSecretRefs,
  migrationSecretRefsSchema,
} from '@pgferry/core';

/** The secret could not be read, or lacks what a connection needs; names the ARN and the key, never a value. */
export class SecretUnusableError extends PgferryError {
  override name = 'SecretUnusableError';
}

/** What a secret may hold; other keys (engine, dbInstanceIdentifier...) are ignored. */
interface SecretFields {
  username?: unknown;
  password?: unknown;
  host?: unknown;
  port?: unknown;
  dbname?: unknown;
  engine?: unknown;
}

export interface SecretsResolverOptions {
  /** The CA file verify-full checks RDS's certificates against (tls.ts: rdsCaBundleFile). */
  caBundleFile: () => Promise<string>;
}

export class SecretsManagerResolver {
  constructor(
    private readonly client: SecretsManagerClient,
    private readonly options: SecretsResolverOptions,
  ) {}

  /** Both sides' URLs, read now. `refs` is the migration's config (validated here; its fields are named in errors). */
  async resolve(refs: MigrationSecretRefs): Promise<MigrationSecrets> {
    const parsed = migrationSecretRefsSchema.safeParse(refs);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      const field = `secrets.${issue.path.join('.')}`;
      throw new InvalidInputError(`${field}: ${issue.message}`, { field });
    }
    const [sourceUrl, targetUrl] = await Promise.all([
      this.url(parsed.data.source, 'secrets.source'),
      this.url(parsed.data.target, 'secrets.target'),
    ]);
    return { sourceUrl, targetUrl };
  }

  /** One side's postgres URL from its secret. */
  async url(ref: z.output<typeof databaseSecretRefSchema>, field: string): Promise<string> {
    const fields = await this.read(ref.secretArn);
    const missing = (key: string, hint: string) =>
      new SecretUnusableError(`secret ${ref.secretArn} (${field}) has no "${key}"`, { field, hint });
    const text = (key: keyof SecretFields) => {
      const v = fields[key];
      return typeof v === 'string' && v.length > 0 ? v : undefined;
    };
    if (fields.engine !== undefined && !/^postgres/i.test(String(fields.engine)))
      throw new SecretUnusableError(
        `secret ${ref.secretArn} (${field}) is for engine "${String(fields.engine)}", not postgres`,
        {
          field,
        },
      );
    const username = text('username');
    if (!username) throw missing('username', 'store the secret as JSON with "username" and "password"');
    const password = text('password');
    if (password === undefined) throw missing('password', 'store the secret as JSON with "username" and "password"');
    const host = ref.host ?? text('host');
    if (!host)
      throw missing('host', `an RDS-managed secret holds no host: give the instance endpoint as ${field}.host`);
    const port = ref.port ?? secretPort(fields.port, ref.secretArn, field);
    const dbname = ref.dbname ?? text('dbname');
    if (!dbname) throw missing('dbname', `add "dbname" to the secret, or give the database as ${field}.dbname`);
    const url = `postgres://${encodeURIComponent(username)}:${encodeURIComponent(password)}@${hostPart(host)}:${port}/${encodeURIComponent(dbname)}`;
    if (ref.sslmode !== 'verify-full' && ref.sslmode !== 'verify-ca') return `${url}?sslmode=${ref.sslmode}`;
    const ca = ref.sslrootcert ?? (await this.options.caBundleFile());
    return withVerifyFull(url, ca, ref.sslmode);
  }

  private async read(arn: string): Promise<SecretFields> {
    let secretString: string | undefined;
    try {
      secretString = (await this.client.send(new GetSecretValueCommand({ SecretId: arn }))).SecretString;
    } catch (err) {
      // The SDK's message names the ARN and the reason (AccessDenied, ResourceNotFound), never the value.
      throw new SecretUnusableError(`secret ${arn} could not be read: ${(err as Error).name}`, {
        cause: err,
        hint: 'check the ARN, and that the task role may call secretsmanager:GetSecretValue on it (and kms:Decrypt on its key)',
      });
    }
    if (secretString === undefined)
      throw new SecretUnusableError(`secret ${arn} holds binary data, not a JSON string`, {
        hint: 'store it as JSON text: {"username": "...", "password": "..."}',
      });
    let parsed: unknown;
    try {
      parsed = JSON.parse(secretString);
    } catch {
      // The parser's message would quote the text, which is the secret: not repeated.
      throw new SecretUnusableError(`secret ${arn} is not JSON`, {
        hint: 'store it as JSON text: {"username": "...", "password": "..."}',
      });
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
      throw new SecretUnusableError(`secret ${arn} is not a JSON object`, {
        hint: 'store it as JSON text: {"username": "...", "password": "..."}',
      });
    return parsed as SecretFields;
  }
}

/** The secret's port (RDS writes it as a number; people write strings), else PostgreSQL's default. */
function secretPort(value: unknown, arn: string, field: string): number {
  if (value === undefined || value === null || value === '') return 5432;
  const port = Number(value);
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new SecretUnusableError(`secret ${arn} (${field}) has "port" that is not a port number (1-65535)`, { field });
  return port;
}

/** An IPv6 address goes in brackets in a URL. */
function hostPart(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/**
 * The DynamoDB store's vault in AWS: a migration's secrets are read from Secrets Manager when asked
 * for, by the ARNs `refsOf` finds for it; nothing is kept. `store`/`remove` are absent on purpose:
 * the secrets exist before the migration does, and outlive it.
 */
export class SecretsManagerVault {
  constructor(
    private readonly resolver: SecretsManagerResolver,
    private readonly refsOf: (migration: MigrationState) => MigrationSecretRefs | undefined,
  ) {}

  async resolve(migration: MigrationState): Promise<MigrationSecrets> {
    const refs = this.refsOf(migration);
    if (!refs)
      throw new InvalidInputError(`migration ${migration.id} names no Secrets Manager secrets for its servers`, {
        field: 'secrets',
        migrationId: migration.id,
        hint: 'give secrets: {source: {secretArn}, target: {secretArn}} when starting it',
      });
    return this.resolver.resolve(refs);
  }
}
