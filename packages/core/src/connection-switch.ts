/**
 * Moving the application's connection: the one place the application reads which server to use (a
 * Secrets Manager secret, an SSM parameter, a DNS name) is pointed at the target, and a rollback puts
 * back exactly what was there before.
 *
 * Every implementation keeps the previous value where a crash cannot lose it (a staging label on the
 * secret's version, a label on the parameter's version, a TXT record next to the CNAME) before it
 * writes the new one: a switch retried after a crash between the write and the saving of its record
 * finds what it replaced there, instead of taking its own write for the previous value.
 */
import { z } from 'zod';
import { InvalidInputError, PgferryError, type PgferryErrorOptions } from './errors';

/**
 * Where the application reads its connection in AWS: what a plan's and a migration config's `switch`
 * name (one schema for both). The cutover points it at the target; a rollback puts back what it held.
 */
export const switchTargetSchema = z.discriminatedUnion(
  'kind',
  [
    /** The application reads its database URL / credentials from this secret. */
    z.strictObject({
      kind: z.literal('secret'),
      secretArn: z
        .string({ error: 'switch.secretArn is required: the ARN of a Secrets Manager secret' })
        .regex(
          /^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$/,
          'switch.secretArn must be a Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)',
        ),
    }),
    z.strictObject({
      kind: z.literal('ssm-parameter'),
      name: z
        .string({ error: 'switch.name is required: the SSM parameter name, e.g. /shop/database-url' })
        .regex(/^\/?[a-zA-Z0-9_.\-/]{1,2047}$/, 'switch.name must be an SSM parameter name such as /shop/database-url'),
      /**
       * The customer-managed KMS key of a SecureString parameter: the cutover and rollback may use exactly
       * this key (kms:Decrypt to read, kms:Encrypt/GenerateDataKey to write), and every value they write
       * is encrypted under it. Without it a SecureString must use the AWS managed key aws/ssm.
       */
      kmsKeyArn: z
        .string({ error: 'switch.kmsKeyArn must be a string: the ARN of the KMS key the parameter is encrypted with' })
        .regex(
          /^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key\/[A-Za-z0-9-]+$/,
          'switch.kmsKeyArn must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>), not an alias or a bare key id: the grant names the key itself',
        )
        .optional(),
    }),
    /** A CNAME the application connects through, pointed at the new endpoint. */
    z.strictObject({
      kind: z.literal('route53'),
      hostedZoneId: z
        .string({ error: 'switch.hostedZoneId is required, e.g. Z0123456789ABCDEFGHIJ' })
        .regex(/^Z[A-Z0-9]{1,31}$/, 'switch.hostedZoneId must be a Route 53 hosted zone id (Z…)'),
      recordName: z
        .string({ error: 'switch.recordName is required, e.g. db.shop.internal' })
        .regex(/^[a-zA-Z0-9_.-]+\.?$/, 'switch.recordName must be a DNS name such as db.shop.internal'),
      ttlSeconds: z
        .number({ error: 'switch.ttlSeconds must be a number' })
        .int('switch.ttlSeconds must be a whole number')
        .min(0, 'switch.ttlSeconds must be at least 0')
        .max(300, 'switch.ttlSeconds must be at most 300: clients would keep the old address longer than a cutover')
        .default(30),
    }),
  ],
  { error: 'switch.kind must be secret, ssm-parameter or route53' },
);

export type SwitchTarget = z.output<typeof switchTargetSchema>;

/** Where the application should connect from now on. */
export interface SwitchEndpoint {
  /** postgres:// URL of the server, with the credentials the application should use when the resource holds them. */
  url: string;
}

/** A postgres URL taken apart the way RDS's connection secrets and DNS names hold it. */
export interface EndpointParts {
  host: string;
  port: number;
  dbname: string;
  username?: string;
  password?: string;
}

/** Split a postgres URL (the password is %-decoded; nothing here is logged). */
export function endpointParts(url: string, field = 'url'): EndpointParts {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new InvalidInputError(`${field} is not a postgres URL`, {
      field,
      hint: 'give postgres://user:password@host:port/database',
    });
  }
  if (!/^postgres(ql)?:$/.test(u.protocol) || !u.hostname) {
    throw new InvalidInputError(`${field} is not a postgres URL with a host`, {
      field,
      hint: 'give postgres://user:password@host:port/database',
    });
  }
  const dbname = decodeURIComponent(u.pathname.replace(/^\//, ''));
  return {
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port: u.port ? Number(u.port) : 5432,
    dbname: dbname || 'postgres',
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
  };
}

/**
 * What a switch did, kept in the migration's state so that a rollback restores the previous value
 * exactly. It never holds a password: a secret's previous value is named by its version id, a
 * parameter's by its version number and label (its value is read back from the parameter at restore).
 */
export type SwitchRecord = SecretSwitchRecord | ParameterSwitchRecord | CnameSwitchRecord;

interface SwitchRecordBase {
  /** The resource, named for a person: the secret's ARN, the parameter's name, `record in zone`. */
  resource: string;
  migrationId: string;
  at: string;
  /** False when it already pointed there (a retried switch, or a switch to where it points): nothing was written. */
  changed: boolean;
  /** What the person running the migration should know (a TTL that keeps clients on the old server for a while). */
  warnings: string[];
}

export interface SecretSwitchRecord extends SwitchRecordBase {
  kind: 'secrets-manager';
  /** The version that was AWSCURRENT before the first switch of this migration (it carries `label`). */
  previousVersionId: string;
  /** The version the switch made AWSCURRENT. */
  currentVersionId: string;
  /** Staging label pgferry put on the previous version, so that Secrets Manager keeps it and a retry finds it. */
  label: string;
}

export interface ParameterSwitchRecord extends SwitchRecordBase {
  kind: 'ssm-parameter';
  previousVersion: number;
  currentVersion: number;
  /** Parameter label pgferry put on the previous version. */
  label: string;
  type: 'String' | 'StringList' | 'SecureString';
  /** The KMS key of a SecureString, kept on every version pgferry writes. */
  keyId?: string;
}

export interface CnameSwitchRecord extends SwitchRecordBase {
  kind: 'route53-cname';
  hostedZoneId: string;
  recordName: string;
  previous: { value: string; ttl: number };
  current: { value: string; ttl: number };
  /** TXT record that keeps `previous` in the zone until the restore. */
  breadcrumb: string;
  /**
   * The change Route 53 accepted (ChangeResourceRecordSets' ChangeInfo.Id), which `settle` follows to
   * INSYNC after the write gap; absent when this call wrote nothing (it already pointed there).
   */
  changeId?: string;
}

export interface SwitchRestore {
  changed: boolean;
  summary: string;
  /**
   * The change the restore made, which `settle` follows after the rollback's write gap (Route 53's
   * ChangeInfo.Id); absent when there is nothing to propagate.
   */
  changeId?: string;
}

/** A problem found before anything is frozen, naming the resource and what to do. */
export interface SwitchCheckProblem {
  resource: string;
  message: string;
  hint: string;
}

export interface ConnectionSwitch {
  /** The resource this switch writes, for messages. */
  readonly resource: string;
  /**
   * Before the cutover: the resource exists, pgferry can read it, and it can take the switch (a DNS
   * TTL short enough). Write permission is only proven by the switch itself.
   */
  check(): Promise<SwitchCheckProblem[]>;
  /** Point the application at `to`. Idempotent: retried, or already there, it changes nothing and succeeds. */
  switchTo(to: SwitchEndpoint, migrationId: string): Promise<SwitchRecord>;
  /**
   * Put back what `record` replaced. Idempotent; refuses (naming what changed) when someone else
   * changed the resource after the switch, rather than undoing their change.
   */
  restore(record: SwitchRecord): Promise<SwitchRestore>;
  /**
   * Optional, after the write gap: wait (bounded) until the change `switchTo` made (or, given `restore`,
   * the change that restore of `record` made: the rollback's) has reached every server that answers for
   * the resource (Route 53: INSYNC on its name servers). True when it did within the wait. `switchTo`
   * and `restore` return once the change is accepted, without this wait.
   */
  settle?(record: SwitchRecord, restore?: SwitchRestore): Promise<boolean>;
}

/** The connection switch failed; `resource` names the secret, parameter or DNS record. */
export class ConnectionSwitchError extends PgferryError {
  override name = 'ConnectionSwitchError';
  constructor(
    message: string,
    readonly resource: string,
    options: PgferryErrorOptions = {},
  ) {
    super(message, { field: resource, ...options });
  }
}

/** The label pgferry puts on the value it replaced: derived from the migration id, so a retry finds it. */
export function switchLabel(migrationId: string): string {
  return `pgferry-before-${migrationId}`;
}

/** The longest DNS TTL a CNAME switch accepts: clients may keep the old answer this long after the switch. */
export const MAX_SWITCH_TTL_SECONDS = 60;
