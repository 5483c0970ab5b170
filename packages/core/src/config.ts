import { z } from 'zod';
import { switchTargetSchema } from './connection-switch';
import { cutoverWindowSchema } from './cutover-window';
import { dmsSettingsSchema } from './dms';
import { InvalidInputError } from './errors';
import { MARKER_SCHEMA } from './model';
import { planTargetSchema } from './plan-target';
import { redactText } from './redact';
import { configSecretRefsSchema, SSL_MODES, secretRefUrl, unprovisionedTargetUrl } from './secret-refs';

/** Thresholds and retry policies, named in one place. */
export const DEFAULTS = {
  jobs: 4,
  /** Cutover gate: the subscriber's time lag (age of the oldest WAL it has not confirmed) under this... */
  maxLagMs: 1000,
  /** ...and its unconfirmed WAL under this, both not growing over the streak. */
  maxLagBytes: 16 * 1024 ** 2,
  /**
   * The drain's budget inside the write gap: the cutover does not freeze when the drain predicted from
   * the measured apply rate is over it, and gives up a drain that passes it (unfreeze, catch up, again).
   */
  maxDrainMs: 1000,
  /** Consecutive lag samples under maxLagMs before the cutover gate opens. */
  lagSamples: 5,
  lagSampleIntervalMs: 500,
  /** A source transaction open longer than this keeps the cutover gate closed. */
  longTransactionMs: 60_000,
  /**
   * A prepared transaction (two-phase commit) older than this is an orphan its transaction manager
   * forgot: it blocks the assessment and keeps the cutover gate closed. Younger ones are in flight
   * (JTA/XA, TransactionScope) and the cutover waits for them after its freeze.
   */
  preparedOrphanMs: 5 * 60_000,
  /** How long the cutover waits, frozen, for the prepared transactions in flight to be committed or rolled back. */
  maxPreparedWaitMs: 2000,
  /** Retained WAL behind our slot: warn past this... */
  walWarnBytes: 8 * 1024 ** 3,
  /** ...and drop the slot (abort) past this, before the source's disk fills. */
  walAbortBytes: 64 * 1024 ** 3,
  /** How long the catch-up just before the freeze (outside the write gap) may wait for the subscriber. */
  drainTimeoutMs: 15_000,
  /**
   * How long catch-up waits, reconnecting with backoff, for a server that stopped answering (a restart,
   * a Multi-AZ failover takes 1-2 minutes) before it stops, keeping everything, with the truth.
   */
  reconnectTimeoutMs: 5 * 60_000,
  /** A plan's bake before its automatic clean-up, when it names none: the application runs on the target a day first. */
  bakeSeconds: 24 * 3600,
  /** The longest bake a plan may ask for: 30 days (a Step Functions standard execution lasts a year at most). */
  maxBakeSeconds: 30 * 24 * 3600,
  /** How long catch-up waits for the gate before giving up (0 = forever). */
  catchUpTimeoutMs: 30 * 60_000,
  /**
   * Tables larger than this are split into ranges for parallel COPY. A table copied whole is loaded
   * with COPY FREEZE (the target neither sets its hint bits on first read, after the cutover, nor
   * freeze-vacuums it later) and without several streams contending for one table. One stream moves
   * ~200 MiB/s, so a table under 8 GiB is copied in under a minute anyway: splitting it buys
   * seconds at best (nothing on a target with few cores: 1.3 s lost at pgbench scale 100 on 2).
   */
  splitTableBytes: 8 * 1024 ** 3,
  /** Tables at least this big get their own indexes built as soon as their rows are in, during the copy. */
  earlyIndexBytes: 32 * 1024 ** 2,
  verifyChunkRows: 50_000,
  /**
   * Verify reads a table holding at least twice this much by several readers at once (up to `jobs` a
   * side), each a range of its heap, all in one snapshot (PostgreSQL 14+ on that side: a ctid range is
   * a scan of that range only there).
   */
  verifyPartBytes: 32 * 1024 ** 2,
  /**
   * How long verify waits for the replica (the target before the switch, the source after it) to apply
   * past the point the live side was read at; not there by then, the table is "not verified", never a mismatch.
   */
  verifyWaitMs: 30_000,
  /**
   * Index builds on the target share `jobs` × this much maintenance_work_mem: post-data runs `jobs`
   * builds at once with this much each, and a big table's lone primary key gets the whole budget
   * (up to indexBuildMemoryMaxMB) so that it sorts in memory instead of spilling to disk. On RDS the
   * budget is at most shared_buffers (a quarter of the instance's memory), and no build gets less
   * than indexBuildMemoryMinMB (PostgreSQL's default). 384: the three indexes of a 5.7 M-row table,
   * built at once with --jobs 4, sort in memory (about 75 bytes a row each); at 256 they spilled.
   */
  indexBuildMemoryMB: 384,
  indexBuildMemoryMaxMB: 1024,
  indexBuildMemoryMinMB: 64,
  verifyRechecks: 5,
  /**
   * Rows differing between the sides that verify follows one by one at once, at most (the rest wait
   * for a later round): bounds the engine's memory when a table took many rows between the reads.
   */
  verifyOpenRows: 100_000,
  statementTimeoutMs: 0,
  lockTimeoutMs: 10_000,
  /** How long slot creation may wait for transactions already open on the source. */
  slotWaitTimeoutMs: 10 * 60_000,
  /** Cutover attempts when the drain times out (each returns to catch-up first). */
  cutoverAttempts: 3,
  /** Time allowed for the --on-switch command. */
  onSwitchTimeoutMs: 30_000,
  /** Time allowed for the AWS connection switch (config `switch`), and after the gap for its propagation (a CNAME waits up to 120 s for INSYNC). */
  connectionSwitchTimeoutMs: 180_000,
} as const;

/** `dms` runs in AWS only: the bulk load and change capture by an AWS DMS task (see dms.ts). */
export const STRATEGIES = ['snapshot', 'native', 'dump', 'dms'] as const;
export type Strategy = (typeof STRATEGIES)[number];

export const MIGRATION_ID = /^[a-z][a-z0-9_]{0,23}$/;

/** URL parameters libpq reads as a whole number (it refuses anything else, only when it connects). */
const WHOLE_NUMBER_PARAMETERS = [
  'connect_timeout',
  'keepalives',
  'keepalives_idle',
  'keepalives_interval',
  'keepalives_count',
  'tcp_user_timeout',
] as const;

/**
 * libpq's connection keywords (PostgreSQL 17), which a URL may carry as parameters, and node-postgres's
 * own `ssl` / `uselibpqcompat`. pg_dump, pg_restore and the subscriptions refuse any other parameter:
 * a typo (`sslmod=require`) is caught here, before anything is created, not half way by pg_dump.
 */
export const URL_PARAMETERS = [
  'host',
  'hostaddr',
  'port',
  'dbname',
  'user',
  'password',
  'passfile',
  'require_auth',
  'channel_binding',
  'connect_timeout',
  'client_encoding',
  'options',
  'application_name',
  'fallback_application_name',
  'keepalives',
  'keepalives_idle',
  'keepalives_interval',
  'keepalives_count',
  'tcp_user_timeout',
  'replication',
  'gssencmode',
  'sslmode',
  'sslnegotiation',
  'sslcompression',
  'sslcert',
  'sslkey',
  'sslpassword',
  'sslcertmode',
  'sslrootcert',
  'sslcrl',
  'sslcrldir',
  'sslsni',
  'requirepeer',
  'ssl_min_protocol_version',
  'ssl_max_protocol_version',
  'krbsrvname',
  'gsslib',
  'gssdelegation',
  'service',
  'target_session_attrs',
  'load_balance_hosts',
  'ssl',
  'uselibpqcompat',
] as const;

const URL_SHAPE = 'expected postgres://user:password@host:port/database';

/** A libpq key=value connection string (`host=… dbname=…`), which pgferry takes only as a URL. */
const KEY_VALUE = /^\s*\w+\s*=/;

/** What is wrong with `value` as the postgres URL of `field` (none: it is one). */
export function urlProblems(value: string, field: string): string[] {
  // A password with white space in it would not be hidden where the URL is shown (a URL ends at
  // white space in a message), and new URL would take it as it is.
  if (/\s/.test(value) && !KEY_VALUE.test(value))
    return [
      `${field} holds white space (a space, a tab, a line end): %-encode it wherever it is (a space is %20: in the password, a path, application_name), and leave none around the URL (a .env file with Windows line ends leaves a \\r at its end)`,
    ];
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    // new URL also refuses a port above 65535; key=value conninfo is not a URL either.
    return [
      KEY_VALUE.test(value)
        ? `${field} is a key=value connection string; give it as a URL, ${URL_SHAPE}`
        : `${field} is not a valid URL; ${URL_SHAPE} (a port from 1 to 65535; %-encode @ : / ? # in the password)`,
    ];
  }
  const problems: string[] = [];
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:')
    return [`${field} must start with postgres:// (got ${url.protocol}//)`];
  // libpq ends the user and password at the first @, a URL parser at the last: pgferry's own sessions
  // would connect and pg_dump would not (its host would be the password's end).
  const authority = value.slice(value.indexOf('//') + 2).split(/[/?#]/)[0] ?? '';
  if ((authority.match(/@/g) ?? []).length > 1)
    problems.push(`${field} has an unencoded @ in its user or password: %-encode it as %40`);
  // (A Unix socket's directory may come as ?host=/path, with nothing between // and the path.)
  if (!url.hostname && !url.searchParams.get('host')) problems.push(`${field} has no host; ${URL_SHAPE}`);
  if (url.port === '0') problems.push(`${field} has port 0; give a port from 1 to 65535`);
  if (!url.pathname || url.pathname === '/') problems.push(`${field} names no database; add /<database> to the URL`);
  for (const [key, v] of url.searchParams) {
    if (!(URL_PARAMETERS as readonly string[]).includes(key))
      problems.push(`${field} has an unknown parameter "${key}" (libpq would refuse it); check its spelling`);
    else if (key === 'sslmode' && !(SSL_MODES as readonly string[]).includes(v))
      problems.push(`${field} has sslmode=${v}; sslmode must be one of ${SSL_MODES.join(', ')}`);
    // (As libpq reads them: strtol, a sign and white space around allowed.)
    else if ((WHOLE_NUMBER_PARAMETERS as readonly string[]).includes(key) && !/^\s*[+-]?\d+\s*$/.test(v))
      problems.push(
        `${field} has ${key}=${v}; ${key} must be a whole number (of seconds, or milliseconds for tcp_user_timeout)`,
      );
  }
  return problems;
}

/** Throw InvalidInputError naming `field` unless `value` is a postgres URL pgferry and libpq can use. */
export function checkPostgresUrl(value: string, field: string): string {
  const problems = urlProblems(value, field);
  if (problems.length) throw new InvalidInputError(problems.join('; '), { field });
  return value;
}

function postgresUrl(field: string) {
  return z
    .string({ error: `${field} is required: a postgres://user:password@host:port/database URL` })
    .superRefine((value, ctx) => {
      for (const message of urlProblems(value, field)) ctx.addIssue({ code: 'custom', message });
    });
}

export const migrationConfigSchema = z
  .object({
    id: z
      .string()
      .regex(
        MIGRATION_ID,
        '--id must be 1-24 characters of a-z, 0-9 and _, starting with a letter (object names derive from it)',
      ),
    // Locally both are required (with their passwords). An AWS migration names its credentials by
    // secret ARN (`secrets`) instead: its URLs then carry no password and default to secretRefUrl.
    sourceUrl: postgresUrl('--source').optional(),
    targetUrl: postgresUrl('--target').optional(),
    /** Where an AWS migration's credentials are: Secrets Manager ARNs, read when a task connects. */
    secrets: configSecretRefsSchema.optional(),
    /** The RDS target to create or adopt in "Provision target" (from the migration's plan). */
    target: planTargetSchema.optional(),
    strategy: z.enum(STRATEGIES, { error: `--strategy must be one of ${STRATEGIES.join(', ')}` }).default('snapshot'),
    jobs: z
      .number({ error: '--jobs must be a number' })
      .int('--jobs must be a whole number')
      .min(1, '--jobs must be at least 1')
      .max(64, '--jobs must be at most 64')
      .default(DEFAULTS.jobs),
    // Workers the snapshot copy is split over in AWS (a Map of Fargate tasks, each with --jobs streams,
    // inside the coordinator's snapshot). 1: the coordinator copies everything itself.
    copyWorkers: z
      .number({ error: '--copy-workers must be a number' })
      .int('--copy-workers must be a whole number')
      .min(1, '--copy-workers must be at least 1')
      .max(32, '--copy-workers must be at most 32')
      .default(1),
    cutover: z.enum(['auto', 'manual'], { error: '--cutover must be auto or manual' }).default('manual'),
    /** A plan's cutover window: with cutover auto, the gate opens only inside it (gateStep). */
    cutoverWindow: cutoverWindowSchema.optional(),
    maxLagMs: z
      .number({ error: '--max-lag-ms must be a number' })
      .int()
      .min(1, '--max-lag-ms must be at least 1')
      .default(DEFAULTS.maxLagMs),
    maxLagBytes: z
      .number({ error: '--max-lag-mb must be a number' })
      .int()
      .min(1, '--max-lag-mb must be more than 0')
      .default(DEFAULTS.maxLagBytes),
    maxDrainMs: z
      .number({ error: '--max-drain-ms must be a number' })
      .int('--max-drain-ms must be a whole number')
      .min(10, '--max-drain-ms must be at least 10')
      .default(DEFAULTS.maxDrainMs),
    verifyWaitMs: z
      .number({ error: '--verify-wait-ms must be a number' })
      .int('--verify-wait-ms must be a whole number')
      .min(1, '--verify-wait-ms must be at least 1')
      .default(DEFAULTS.verifyWaitMs),
    lagSamples: z.number().int().min(1).default(DEFAULTS.lagSamples),
    lagSampleIntervalMs: z.number().int().min(10).default(DEFAULTS.lagSampleIntervalMs),
    longTransactionMs: z.number().int().min(1).default(DEFAULTS.longTransactionMs),
    preparedOrphanMs: z
      .number({ error: '--prepared-orphan-ms must be a number' })
      .int()
      .min(1, '--prepared-orphan-ms must be at least 1')
      .default(DEFAULTS.preparedOrphanMs),
    maxPreparedWaitMs: z
      .number({ error: '--max-prepared-wait-ms must be a number' })
      .int()
      .min(0, '--max-prepared-wait-ms must be at least 0')
      .default(DEFAULTS.maxPreparedWaitMs),
    walWarnBytes: z.number().int().min(0).default(DEFAULTS.walWarnBytes),
    walAbortBytes: z.number().int().min(1).default(DEFAULTS.walAbortBytes),
    drainTimeoutMs: z.number().int().min(1).default(DEFAULTS.drainTimeoutMs),
    catchUpTimeoutMs: z.number().int().min(0).default(DEFAULTS.catchUpTimeoutMs),
    reconnectTimeoutMs: z.number().int().min(0).default(DEFAULTS.reconnectTimeoutMs),
    splitTableBytes: z.number().int().min(1).default(DEFAULTS.splitTableBytes),
    /**
     * At most this many MiB of maintenance_work_mem for the target's index builds running at once
     * (`--index-memory-mb`); unset: `jobs` × indexBuildMemoryMB, and on RDS no more than shared_buffers.
     */
    indexMemoryMB: z.number().int().min(DEFAULTS.indexBuildMemoryMinMB).optional(),
    verifyPartBytes: z.number().int().min(8192).default(DEFAULTS.verifyPartBytes),
    verifyOpenRows: z.number().int().min(1).default(DEFAULTS.verifyOpenRows),
    earlyIndexBytes: z.number().int().min(0).default(DEFAULTS.earlyIndexBytes),
    slotWaitTimeoutMs: z.number().int().min(1).default(DEFAULTS.slotWaitTimeoutMs),
    switchFile: z.string({ error: '--switch-file must be a path' }).min(1, '--switch-file must be a path').optional(),
    onSwitch: z.string().min(1, '--on-switch must be a command').optional(),
    /** In AWS: the secret, SSM parameter or CNAME the application reads, switched in the write gap (from the migration's plan). */
    switch: switchTargetSchema.optional(),
    /**
     * In AWS, from the migration's plan: clean up automatically, after "Bake" has waited `bakeSeconds`
     * with the application on the target. Absent: nobody cleans up but a person (`pgferry cleanup`).
     */
    autoCleanup: z
      .strictObject({
        bakeSeconds: z
          .number({ error: 'autoCleanup.bakeSeconds must be a number of seconds' })
          .int('autoCleanup.bakeSeconds must be a whole number of seconds')
          .min(0, 'autoCleanup.bakeSeconds must be at least 0')
          .max(DEFAULTS.maxBakeSeconds, `autoCleanup.bakeSeconds must be at most ${DEFAULTS.maxBakeSeconds} (30 days)`),
      })
      .optional(),
    reportPath: z.string({ error: '--report must be a path' }).min(1, '--report must be a path').optional(),
    artifactDir: z.string().min(1).optional(),
    /** With --strategy dms: where DMS reads the credentials from and what it runs on (see DmsSettings). */
    dms: dmsSettingsSchema.optional(),
  })
  .superRefine((c, ctx) => {
    if (c.strategy === 'dms' && !c.dms)
      ctx.addIssue({
        code: 'custom',
        path: ['dms'],
        message:
          'dms is required with strategy dms: { sourceSecretArn, targetSecretArn, secretsAccessRoleArn, compute }',
      });
    if (c.dms && c.strategy !== 'dms')
      ctx.addIssue({
        code: 'custom',
        path: ['dms'],
        message: `dms is only for strategy dms (strategy is ${c.strategy})`,
      });
    for (const [side, flag] of [
      ['source', '--source'],
      ['target', '--target'],
    ] as const) {
      const key = side === 'source' ? 'sourceUrl' : 'targetUrl';
      const url = c[key];
      if (!c.secrets && url === undefined)
        ctx.addIssue({
          code: 'custom',
          path: [key],
          message: `${flag} is required: a postgres://user:password@host:port/database URL`,
        });
      // The secret holds the password: a URL beside it that holds one too would be stored as it is.
      else if (c.secrets && url !== undefined && redactText(url) !== url)
        ctx.addIssue({
          code: 'custom',
          path: [key],
          message: `${key} holds a password, but this migration reads its credentials from secrets.${side}.secretArn; give the URL without one, or leave it out`,
        });
    }
    if (c.sourceUrl !== undefined && c.sourceUrl === c.targetUrl) {
      ctx.addIssue({
        code: 'custom',
        path: ['targetUrl'],
        message: '--target is the same URL as --source; point it at the new server',
      });
    }
    if (c.walWarnBytes >= c.walAbortBytes) {
      ctx.addIssue({
        code: 'custom',
        path: ['walWarnBytes'],
        message: 'the WAL warning threshold must be below the abort limit',
      });
    }
  })
  // Both URLs are there after parsing: given, or (with secrets) the password-free secretRefUrl.
  .transform(({ sourceUrl, targetUrl, ...c }) => ({
    ...c,
    sourceUrl: sourceUrl ?? secretRefUrl(c.secrets!.source),
    targetUrl: targetUrl ?? (c.secrets!.target ? secretRefUrl(c.secrets!.target) : unprovisionedTargetUrl()),
  }));

export type MigrationConfigInput = z.input<typeof migrationConfigSchema>;
export type MigrationConfig = z.output<typeof migrationConfigSchema>;

/** Parse and validate; throws InvalidInputError naming every bad field at once. */
export function parseMigrationConfig(input: unknown): MigrationConfig {
  const result = migrationConfigSchema.safeParse(input);
  if (result.success) return result.data;
  const problems = result.error.issues.map((i) => i.message);
  const field = result.error.issues[0]?.path.join('.') || undefined;
  throw new InvalidInputError(problems.join('; '), { field, hint: 'run `pgferry migrate --help` for the options' });
}

/** Object names derive from the migration id so every step can find (and re-find) its own objects. */
export function objectNames(id: string) {
  const base = `pgferry_${id}`;
  return {
    publication: base,
    slot: base,
    subscription: base,
    reversePublication: `${base}_rev`,
    reverseSlot: `${base}_rev`,
    reverseSubscription: `${base}_rev`,
    /** The DMS cutover's late-write watch on the source: a temporary slot and a publication. */
    watch: `${base}_watch`,
    /** Schema on the target holding pgferry's marker table. */
    markerSchema: MARKER_SCHEMA,
    applicationName: `pgferry:${id}`,
  };
}

export function newMigrationId(now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:T]/g, '').slice(2, 12);
  const rand = Math.random().toString(36).slice(2, 6);
  return `m${stamp}_${rand}`;
}
