import { z } from 'zod';
import { InvalidInputError } from './errors';

/** Thresholds and retry policies, named in one place. */
export const DEFAULTS = {
  jobs: 4,
  maxLagMs: 1000,
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
  /** How long the drain may take with writes frozen before the source is unfrozen again. */
  drainTimeoutMs: 15_000,
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
   * Index builds on the target share `jobs` × this much maintenance_work_mem: post-data runs `jobs`
   * builds at once with this much each, and a big table's lone primary key gets the whole budget
   * (up to indexBuildMemoryMaxMB) so that it sorts in memory instead of spilling to disk. On RDS the
   * budget is at most shared_buffers (a quarter of the instance's memory), and no build gets less
   * than indexBuildMemoryMinMB (PostgreSQL's default).
   */
  indexBuildMemoryMB: 256,
  indexBuildMemoryMaxMB: 1024,
  indexBuildMemoryMinMB: 64,
  verifyRechecks: 5,
  statementTimeoutMs: 0,
  lockTimeoutMs: 10_000,
  /** How long slot creation may wait for transactions already open on the source. */
  slotWaitTimeoutMs: 10 * 60_000,
  /** Cutover attempts when the drain times out (each returns to catch-up first). */
  cutoverAttempts: 3,
  /** Time allowed for the --on-switch command. */
  onSwitchTimeoutMs: 30_000,
} as const;

export const STRATEGIES = ['snapshot', 'native', 'dump'] as const;
export type Strategy = (typeof STRATEGIES)[number];

export const MIGRATION_ID = /^[a-z][a-z0-9_]{0,23}$/;

function postgresUrl(field: string) {
  return z
    .string({ error: `${field} is required: a postgres://user:password@host:port/database URL` })
    .superRefine((value, ctx) => {
      let url: URL;
      try {
        url = new URL(value);
      } catch {
        ctx.addIssue({
          code: 'custom',
          message: `${field} is not a valid URL; expected postgres://user:password@host:port/database`,
        });
        return;
      }
      if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') {
        ctx.addIssue({ code: 'custom', message: `${field} must start with postgres:// (got ${url.protocol}//)` });
      }
      if (!url.hostname)
        ctx.addIssue({
          code: 'custom',
          message: `${field} has no host; expected postgres://user:password@host:port/database`,
        });
      if (!url.pathname || url.pathname === '/') {
        ctx.addIssue({ code: 'custom', message: `${field} names no database; add /<database> to the URL` });
      }
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
    sourceUrl: postgresUrl('--source'),
    targetUrl: postgresUrl('--target'),
    strategy: z.enum(STRATEGIES, { error: `--strategy must be one of ${STRATEGIES.join(', ')}` }).default('snapshot'),
    jobs: z
      .number({ error: '--jobs must be a number' })
      .int('--jobs must be a whole number')
      .min(1, '--jobs must be at least 1')
      .max(64, '--jobs must be at most 64')
      .default(DEFAULTS.jobs),
    cutover: z.enum(['auto', 'manual'], { error: '--cutover must be auto or manual' }).default('manual'),
    maxLagMs: z
      .number({ error: '--max-lag-ms must be a number' })
      .int()
      .min(1, '--max-lag-ms must be at least 1')
      .default(DEFAULTS.maxLagMs),
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
    splitTableBytes: z.number().int().min(1).default(DEFAULTS.splitTableBytes),
    earlyIndexBytes: z.number().int().min(0).default(DEFAULTS.earlyIndexBytes),
    slotWaitTimeoutMs: z.number().int().min(1).default(DEFAULTS.slotWaitTimeoutMs),
    switchFile: z.string().min(1, '--switch-file must be a path').optional(),
    onSwitch: z.string().min(1, '--on-switch must be a command').optional(),
    reportPath: z.string().min(1).optional(),
    artifactDir: z.string().min(1).optional(),
  })
  .superRefine((c, ctx) => {
    if (c.sourceUrl === c.targetUrl) {
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
  });

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
    /** Schema on the target holding pgferry's marker table. */
    markerSchema: 'pgferry',
    applicationName: `pgferry:${id}`,
  };
}

export function newMigrationId(now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:T]/g, '').slice(2, 12);
  const rand = Math.random().toString(36).slice(2, 6);
  return `m${stamp}_${rand}`;
}
