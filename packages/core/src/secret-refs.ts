/**
 * Where an AWS migration's credentials live: Secrets Manager secrets named by ARN, one per side. The
 * migration's config holds these references only; the URLs with passwords are built from the secrets
 * when a task connects (packages/aws SecretsManagerResolver) and are never stored.
 */
import { z } from 'zod';

/** libpq's sslmode values. */
export const SSL_MODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'] as const;

/** A secret's ARN; the name may hold `!`, as RDS-managed master secrets' do (`rds!db-<id>`). */
export const SECRET_REF_ARN = /^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@!-]+$/;

/** Where one side's credentials live, and what the secret itself may not say. */
export const databaseSecretRefSchema = z
  .object({
    secretArn: z
      .string({ error: 'secretArn is required: the ARN of the Secrets Manager secret holding username and password' })
      .regex(
        SECRET_REF_ARN,
        'secretArn must be a Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)',
      ),
    /** The endpoint, when the secret has none (an RDS-managed master secret). Wins over the secret's. */
    host: z.string().min(1).optional(),
    port: z.number().int().min(1).max(65535).optional(),
    dbname: z.string().min(1).optional(),
    /** verify-full (default) checks the server's certificate against `sslrootcert` and its name against host. */
    sslmode: z.enum(SSL_MODES).default('verify-full'),
    /** The CA file for verify-full; RDS's CA bundle when not given. */
    sslrootcert: z.string().min(1).optional(),
  })
  .strict();
export type DatabaseSecretRef = z.input<typeof databaseSecretRefSchema>;

export const migrationSecretRefsSchema = z
  .object({ source: databaseSecretRefSchema, target: databaseSecretRefSchema })
  .strict();
export type MigrationSecretRefs = z.input<typeof migrationSecretRefsSchema>;

/**
 * The references a migration's config holds. The target's may be missing until "Provision target"
 * has made the instance (its RDS-managed secret and endpoint are known only then).
 */
export const configSecretRefsSchema = z
  .object({ source: databaseSecretRefSchema, target: databaseSecretRefSchema.optional() })
  .strict();
export type ConfigSecretRefs = z.input<typeof configSecretRefsSchema>;

/** The target URL an AWS migration shows until its instance is provisioned (no password, a host that never resolves). */
export function unprovisionedTargetUrl(dbname = 'postgres'): string {
  return `postgres://pgferry@not-provisioned-yet.invalid/${encodeURIComponent(dbname)}`;
}

/**
 * The URL an AWS migration's config shows for one side: the secret's name as the user, the host and
 * database where the reference names them, and no password. Its placeholder host is under `.invalid`
 * (RFC 2606), which never resolves: were anything to connect with this URL instead of the secret's,
 * it would fail at once instead of reaching another server.
 */
export function secretRefUrl(ref: DatabaseSecretRef): string {
  const name = ref.secretArn.slice(ref.secretArn.indexOf(':secret:') + ':secret:'.length);
  const host = ref.host ? (ref.host.includes(':') && !ref.host.startsWith('[') ? `[${ref.host}]` : ref.host) : null;
  const where = host ?? 'from-secret.invalid';
  const port = ref.port ? `:${ref.port}` : '';
  const db = encodeURIComponent(ref.dbname ?? 'from-secret');
  return `postgres://${encodeURIComponent(name)}@${where}${port}/${db}`;
}
