/**
 * The DMS strategy's pure parts: names, the replication task's table mappings and settings, what
 * DMS does not carry (per AWS's documentation, each finding cites it), and what a `DMS Replication
 * Task State Change` event means for the workflow. The SDK calls live in packages/aws/src/dms.ts.
 */
import { z } from 'zod';
import { InvalidInputError } from './errors';
import { MARKER_SCHEMA, type TableRef } from './model';

/** AWS DMS's PostgreSQL-source documentation: limitations, and the data types it migrates. */
export const DMS_DOCS = {
  limitations:
    'https://docs.aws.amazon.com/dms/latest/userguide/CHAP_Source.PostgreSQL.html#CHAP_Source.PostgreSQL.Limitations',
  dataTypes:
    'https://docs.aws.amazon.com/dms/latest/userguide/CHAP_Source.PostgreSQL.html#CHAP_Source.PostgreSQL.Homogeneous.DMS',
  cdc: 'https://docs.aws.amazon.com/dms/latest/userguide/CHAP_Source.PostgreSQL.html#CHAP_Source.PostgreSQL.Security',
  pgToPg: 'https://repost.aws/knowledge-center/dms-migrate-postgresql-to-postgresql',
  events: 'https://docs.aws.amazon.com/dms/latest/userguide/CHAP_EventBridge.html',
  /** DMS Serverless: its replication states, what StopTaskCachedChangesApplied does there, its metrics. */
  serverless: 'https://docs.aws.amazon.com/dms/latest/userguide/CHAP_Serverless.Components.html',
  /** ComputeConfig: the DCU sizes MinCapacityUnits and MaxCapacityUnits take. */
  computeConfig: 'https://docs.aws.amazon.com/dms/latest/APIReference/API_ComputeConfig.html',
  /** Replication (DescribeReplications): Status, StopReason and its values, FailureMessages, ReplicationStats. */
  replication: 'https://docs.aws.amazon.com/dms/latest/APIReference/API_Replication.html',
  /** EventBridge's list of DMS detail-types ("DMS Replication State Change"), best-effort delivery. */
  eventBridgeDms: 'https://docs.aws.amazon.com/eventbridge/latest/ref/events-ref-dms.html',
  /** EventBridge's event structure: `resources` holds ARNs "at the discretion of the service". */
  eventStructure: 'https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-events-structure.html',
  /** DescribeReplications: filters replication-config-arn | replication-config-id. */
  describeReplications: 'https://docs.aws.amazon.com/dms/latest/APIReference/API_DescribeReplications.html',
  /** ListMetrics: 500 a page; a new series appears within 15 minutes; none without data in two weeks. */
  listMetrics: 'https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_ListMetrics.html',
  unlogged: 'https://www.postgresql.org/docs/current/sql-createtable.html#SQL-CREATETABLE-UNLOGGED',
} as const;

/** What the assessment knows of a table (packages/postgres's TableInfo fits). */
export interface DmsTableInput {
  schema: string;
  name: string;
  kind: 'table' | 'partitioned' | 'partition';
  unlogged: boolean;
  primaryKey: string[];
  replicaIdentity: 'default' | 'full' | 'index' | 'nothing';
  /** `type` as format_type() writes it: `integer`, `numeric(10,2)`, `text[]`, `public.mood`. */
  columns: { name: string; type: string }[];
}

export interface DmsFinding {
  /** blocker: DMS would lose or corrupt data; warning: it carries it with a caveat pgferry works around or cannot. */
  severity: 'blocker' | 'warning';
  code: string;
  /** `schema.table`, or the whole database (`*`). */
  object: string;
  columns?: string[];
  message: string;
  /** The documentation that says so. */
  source: string;
}

/** Per the data-type table of the DMS PostgreSQL source page: these do not migrate at all. */
const NOT_MIGRATED = new Set([
  'inet',
  'macaddr',
  'macaddr8',
  'tsvector',
  'tsquery',
  'line',
  'lseg',
  'box',
  'path',
  'circle',
  'int4range',
  'int8range',
  'numrange',
  'tsrange',
  'tstzrange',
  'daterange',
  'int4multirange',
  'int8multirange',
  'nummultirange',
  'tsmultirange',
  'tstzmultirange',
  'datemultirange',
]);

/** Per the same table: these migrate partially (json: jsonb goes the same way, as an NCLOB). */
const PARTIAL = new Set(['timestamp with time zone', 'time with time zone', 'interval', 'xml', 'json', 'jsonb']);

/** Partial without a length only: CHAR(n) and VARCHAR(n) migrate. */
const PARTIAL_WITHOUT_LENGTH = new Set(['character varying', 'character', 'bpchar']);

/** Built-in types the table lists as migrating (an unknown name is a user type: enum, composite, domain, range). */
const MIGRATED = new Set([
  'integer',
  'smallint',
  'bigint',
  'real',
  'double precision',
  'money',
  'text',
  'bytea',
  'timestamp without time zone',
  'date',
  'time without time zone',
  'boolean',
  'cidr',
  'uuid',
  'character varying',
  'character',
  'bpchar',
  'bit',
  'bit varying',
  'oid',
  'point',
  'polygon',
  'geometry',
  'geography',
  'hstore',
]);

/** DMS carries these as LOBs (text → NCLOB, bytea → BLOB, json/jsonb/arrays → NCLOB, xml → CLOB). */
const LOB = new Set(['text', 'bytea', 'json', 'jsonb', 'xml', 'hstore', 'tsvector', 'tsquery']);

/** `numeric(10,2)` → `numeric`, `character varying(20)` → `character varying`, `timestamp(3) with time zone` → `timestamp with time zone`. */
function baseType(type: string): string {
  return type
    .replace(/\[\]$/, '')
    .replace(/\(\s*[\d\s,]+\)/g, '')
    .replace(/\s+/g, ' ')
    .trim();
}

/**
 * What a full-load-and-CDC DMS task would not carry faithfully from these tables, each finding naming
 * its table and columns and citing the documentation. Sequences, DDL and TRUNCATE are findings about
 * the whole database (`*`): pgferry prepares the schema and syncs sequences itself on this path too.
 */
export function dmsFindings(tables: DmsTableInput[]): DmsFinding[] {
  const out: DmsFinding[] = [
    {
      severity: 'warning',
      code: 'dms-sequences',
      object: '*',
      message:
        'DMS does not migrate sequences (nor secondary indexes or foreign keys): pgferry prepares the schema itself and sets every sequence at the cutover',
      source: DMS_DOCS.pgToPg,
    },
    {
      severity: 'warning',
      code: 'dms-truncate',
      object: '*',
      message:
        'DMS does not replicate TRUNCATE: a table truncated on the source during replication keeps its rows on the target',
      source: DMS_DOCS.limitations,
    },
    {
      severity: 'warning',
      code: 'dms-ddl',
      object: '*',
      message:
        "pgferry's DMS endpoints do not capture DDL (DMS would not carry all of it anyway: not ALTER COLUMN SET/DROP DEFAULT, SET/DROP NOT NULL, nor DDL inside a function): keep the schema unchanged until the cutover",
      source: DMS_DOCS.limitations,
    },
  ];
  const byLowerName = new Map<string, string[]>();
  for (const t of tables) {
    const name = `${t.schema}.${t.name}`;
    const key = name.toLowerCase();
    byLowerName.set(key, [...(byLowerName.get(key) ?? []), name]);
    if (t.kind === 'partitioned') {
      out.push({
        severity: 'warning',
        code: 'dms-partitioned',
        object: name,
        message: `${name} is partitioned: DMS does not replicate partitioned tables as such, so the task maps its partitions one by one and leaves the parent out (pgferry creates it on the target)`,
        source: DMS_DOCS.limitations,
      });
      continue; // a parent holds no rows; its leaves are assessed on their own
    }
    if (t.unlogged) {
      out.push({
        severity: 'blocker',
        code: 'dms-unlogged',
        object: name,
        message: `${name} is UNLOGGED: its changes are not written to the WAL, so DMS's change capture never sees them`,
        source: DMS_DOCS.unlogged,
      });
    }
    const arrays = t.columns.filter((c) => c.type.endsWith('[]')).map((c) => c.name);
    if (t.primaryKey.length === 0) {
      out.push({
        severity: t.replicaIdentity === 'full' ? 'warning' : 'blocker',
        code: 'dms-no-primary-key',
        object: name,
        message:
          t.replicaIdentity === 'full'
            ? `${name} has no primary key (REPLICA IDENTITY FULL): DMS documents replica identity as a workaround to test carefully`
            : `${name} has no primary key: DMS ignores its UPDATEs and DELETEs during change capture`,
        source: DMS_DOCS.limitations,
      });
      if (arrays.length > 0) {
        out.push({
          severity: 'blocker',
          code: 'dms-array-without-primary-key',
          object: name,
          columns: arrays,
          message: `${name} has ARRAY columns and no primary key: DMS suspends such a table during the full load`,
          source: DMS_DOCS.limitations,
        });
      }
    }
    const lobKeys = t.columns.filter((c) => t.primaryKey.includes(c.name) && isLob(c.type)).map((c) => c.name);
    if (lobKeys.length > 0) {
      out.push({
        severity: 'blocker',
        code: 'dms-lob-primary-key',
        object: name,
        columns: lobKeys,
        message: `${name}'s primary key has a column DMS handles as a LOB (${lobKeys.join(', ')}): in LOB mode DMS may write its key as NULL and hit duplicates`,
        source: DMS_DOCS.pgToPg,
      });
    }
    const by = (pred: (type: string) => boolean) => t.columns.filter((c) => pred(c.type)).map((c) => c.name);
    const notMigrated = by((type) => NOT_MIGRATED.has(baseType(type)));
    if (notMigrated.length > 0) {
      out.push({
        severity: 'blocker',
        code: 'dms-type-not-migrated',
        object: name,
        columns: notMigrated,
        message: `${name}: DMS does not migrate the type of ${describe(t, notMigrated)}`,
        source: DMS_DOCS.dataTypes,
      });
    }
    const oids = by((type) => baseType(type) === 'oid');
    if (oids.length > 0) {
      out.push({
        severity: 'blocker',
        code: 'dms-oid-lob',
        object: name,
        columns: oids,
        message: `${name}: ${oids.join(', ')} ${oids.length === 1 ? 'is an oid column' : 'are oid columns'} (large objects?): DMS does not migrate the OID LOB type`,
        source: DMS_DOCS.limitations,
      });
    }
    const unboundedNumeric = by((type) => baseType(type) === 'numeric' && !/\(/.test(type));
    if (unboundedNumeric.length > 0) {
      out.push({
        severity: 'blocker',
        code: 'dms-numeric-without-precision',
        object: name,
        columns: unboundedNumeric,
        message: `${name}: ${describe(t, unboundedNumeric)} without precision and scale: DMS may carry them as NUMERIC(28,6), rounding their values`,
        source: DMS_DOCS.dataTypes,
      });
    }
    const partial = by(
      (type) =>
        PARTIAL.has(baseType(type)) ||
        (PARTIAL_WITHOUT_LENGTH.has(baseType(type)) && !type.includes('(')) ||
        partialNumeric(type),
    );
    if (partial.length > 0) {
      out.push({
        severity: 'warning',
        code: 'dms-type-partial',
        object: name,
        columns: partial,
        message: `${name}: DMS migrates the type of ${describe(t, partial)} only partially; verify compares every row after the load`,
        source: DMS_DOCS.dataTypes,
      });
    }
    const userTypes = by((type) => {
      const b = baseType(type);
      return !NOT_MIGRATED.has(b) && !PARTIAL.has(b) && !MIGRATED.has(b) && b !== 'numeric';
    });
    if (userTypes.length > 0) {
      out.push({
        severity: 'blocker',
        code: 'dms-user-type',
        object: name,
        columns: userTypes,
        message: `${name}: ${describe(t, userTypes)} ${userTypes.length === 1 ? 'has a type' : 'have types'} DMS does not list as migrating (enum, composite and range types do not migrate)`,
        source: DMS_DOCS.dataTypes,
      });
    }
    const timestamps = by((type) => baseType(type) === 'timestamp without time zone');
    if (timestamps.length > 0) {
      out.push({
        severity: 'warning',
        code: 'dms-timestamp-infinity',
        object: name,
        columns: timestamps,
        message: `${name}: DMS turns 'infinity' and '-infinity' in ${describe(t, timestamps)} into 9999-12-31 23:59:59 and 4713-01-01 BC`,
        source: DMS_DOCS.dataTypes,
      });
    }
  }
  for (const names of byLowerName.values()) {
    if (names.length > 1) {
      out.push({
        severity: 'blocker',
        code: 'dms-names-differ-in-case',
        object: names.join(', '),
        message: `${names.join(', ')} differ only in case: DMS does not support replicating such tables (unpredictable behaviour)`,
        source: DMS_DOCS.limitations,
      });
    }
  }
  return out;
}

function isLob(type: string): boolean {
  return type.endsWith('[]') || LOB.has(baseType(type));
}

/**
 * The data-type table has NUMERIC(p,s) with 0 < p < 39 and 0 < s, and p > 38, as migrating partially
 * (numeric(p) and numeric(p,0) migrate; numeric without precision is a finding of its own).
 */
function partialNumeric(type: string): boolean {
  const m = /^numeric\((\d+)(?:,\s*(\d+))?\)/.exec(type);
  return !!m && (Number(m[1]) > 38 || Number(m[2] ?? 0) > 0);
}

function describe(t: DmsTableInput, columns: string[]): string {
  const types = new Map(t.columns.map((c) => [c.name, c.type]));
  return columns.map((c) => `${c} (${types.get(c)})`).join(', ');
}

/** DMS identifiers: letters, digits and hyphens, a letter first, no `--`, no hyphen last, at most 255. */
export interface DmsNames {
  task: string;
  sourceEndpoint: string;
  targetEndpoint: string;
  replicationConfig: string;
}

/**
 * Names derived from the migration id (so a re-run finds what it created). An id's `_` is not allowed
 * in a DMS identifier: it becomes `-`, and a short hash of the id keeps `a_b` and `a-b`-like ids apart.
 */
export function dmsNames(migrationId: string): DmsNames {
  const slug = migrationId.replace(/_+/g, '-').replace(/-+$/, '');
  const id = `pgferry-${slug}-${fnv1a(migrationId)}`;
  return { task: id, sourceEndpoint: `${id}-source`, targetEndpoint: `${id}-target`, replicationConfig: id };
}

function fnv1a(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}

/** In DMS's object-locator, `%` and `_` are wildcards: a literal one is escaped as `[_]` / `[%]`. */
function locatorName(name: string): string {
  return name.replace(/[%_]/g, (c) => `[${c}]`);
}

export interface DmsMappingInput {
  /** The schemas the assessment migrates. */
  schemas: string[];
  /** The tables the assessment leaves out (scheduler extensions' tables, the user's exclusions). */
  excluded: TableRef[];
  /** Partitioned parents: left out, their partitions are mapped instead (DMS would copy their rows twice). */
  partitionedParents: TableRef[];
}

/** The task's table mappings (JSON as DMS takes it): every table of each schema, minus the excluded ones. */
export function dmsTableMappings(input: DmsMappingInput): { rules: Record<string, unknown>[] } {
  if (input.schemas.length === 0) {
    throw new InvalidInputError('the DMS task would map no schema', {
      field: 'schemas',
      hint: 'the assessment found no schema to migrate',
    });
  }
  const rules: Record<string, unknown>[] = [];
  const rule = (action: 'include' | 'exclude', schema: string, table: string, what: string) => {
    const id = rules.length + 1;
    rules.push({
      'rule-type': 'selection',
      'rule-id': String(id),
      'rule-name': `${id}-${what}`,
      'object-locator': { 'schema-name': locatorName(schema), 'table-name': table === '%' ? '%' : locatorName(table) },
      'rule-action': action,
    });
  };
  for (const s of input.schemas) rule('include', s, '%', 'include-schema');
  for (const t of input.excluded) rule('exclude', t.schema, t.name, 'exclude-table');
  for (const t of input.partitionedParents) rule('exclude', t.schema, t.name, 'exclude-partitioned-parent');
  return { rules };
}

/**
 * Task settings for pgferry's DMS path:
 * - the target's schema is pgferry's (prepared before the load): DMS must not drop or create tables;
 * - full LOB mode: limited LOB mode truncates values past its limit (text, bytea, json(b), arrays);
 * - DMS's control tables go in pgferry's schema on the target, not among the application's tables;
 * - the task stops once the full load and the changes cached during it are applied: that stop is the
 *   event that ends the "Bulk load" step, and "Start replication" resumes the task for change capture.
 */
export function dmsTaskSettings(): Record<string, unknown> {
  return {
    TargetMetadata: {
      SupportLobs: true,
      FullLobMode: true,
      LobChunkSize: 64,
      LimitedSizeLobMode: false,
      LobMaxSize: 0,
    },
    FullLoadSettings: {
      TargetTablePrepMode: 'DO_NOTHING',
      StopTaskCachedChangesApplied: true,
      StopTaskCachedChangesNotApplied: false,
    },
    Logging: { EnableLogging: true },
    // DMS always makes its Apply Exceptions table on a database target (docs: "Control table task
    // settings"), by default in the target's default schema (public on PostgreSQL). There it would be a
    // table of the application's: in the reverse publication (which the source cannot subscribe to, not
    // having it) and in verify. pgferry's own schema on the target keeps it out of both.
    ControlTablesSettings: { ControlSchema: MARKER_SCHEMA },
  };
}

/** What a `DMS Replication Task State Change` event's detail holds (see test/fixtures/events/dms-*.json). */
export interface DmsTaskEventDetail {
  type?: string;
  category?: string;
  eventType?: string;
  /** `DMS-EVENT-0079`; older documentation samples name it `eventName`. */
  eventId?: string;
  eventName?: string;
  resourceLink?: string;
  detailMessage?: string;
}

/** The full load and its cached changes are applied and the task stopped as asked (or a full-load-only task ended). */
const FULL_LOAD_DONE = ['STOPPED_AFTER_CACHED_EVENTS', 'STOPPED_AFTER_FULL_LOAD', 'FULL_LOAD_ONLY_FINISHED'];

export type DmsTaskOutcome =
  | { kind: 'full-load-finished'; stopReason: string }
  | { kind: 'failed'; message: string }
  | { kind: 'stopped'; stopReason: string; message: string }
  | { kind: 'ignored'; reason: string };

/**
 * What an event means for the workflow. DMS event ids (documentation): DMS-EVENT-0069 started,
 * DMS-EVENT-0079 stopped (with its `Stop Reason`), DMS-EVENT-0078 failed.
 */
export function classifyDmsTaskEvent(detail: DmsTaskEventDetail): DmsTaskOutcome {
  const id = detail.eventId ?? detail.eventName ?? '';
  const message = detail.detailMessage ?? '';
  const stopReason = /Stop Reason\s+([A-Z_]+)/.exec(message)?.[1] ?? '';
  if (detail.eventType === 'REPLICATION_TASK_FAILED' || id === 'DMS-EVENT-0078') {
    return { kind: 'failed', message: message || 'the DMS task failed' };
  }
  if (detail.eventType === 'REPLICATION_TASK_STOPPED' || id === 'DMS-EVENT-0079') {
    if (FULL_LOAD_DONE.includes(stopReason)) return { kind: 'full-load-finished', stopReason };
    return { kind: 'stopped', stopReason: stopReason || 'unknown', message: message || 'the DMS task stopped' };
  }
  return { kind: 'ignored', reason: `${detail.eventType ?? id ?? 'an event'} does not end a step` };
}

/** What DescribeReplications says of a DMS Serverless replication (packages/aws's dmsReplicationStatus). */
export interface DmsReplicationState {
  status: string;
  /** `Stop Reason STOPPED_AFTER_CACHED_EVENTS`, as Replication.StopReason writes it. */
  stopReason?: string;
  failureMessages?: string[];
}

/**
 * What a DMS Serverless replication's state means for "Wait for the DMS full load". The event that
 * prompts this look (`DMS Replication State Change`) has no documented detail, so only DescribeReplications
 * is read: Replication.Status `failed` fails the step with its FailureMessages; `stopped` with a
 * StopReason of a finished full load (the values are Replication.StopReason's, DMS_DOCS.replication)
 * completes it, any other stop fails it; every other status (the replication is still initializing,
 * provisioning or running: DMS_DOCS.serverless) ends nothing. The documentation writes the states both
 * `STOPPED` and `stopped`, so case is not compared. No replication yet (never started) ends nothing.
 */
export function classifyDmsReplication(r: DmsReplicationState | undefined): DmsTaskOutcome {
  if (!r) return { kind: 'ignored', reason: 'DMS has no replication for this config yet' };
  const status = r.status.toLowerCase();
  const message = (r.failureMessages ?? []).join('; ');
  if (status === 'failed') return { kind: 'failed', message: message || 'the DMS Serverless replication failed' };
  if (status === 'stopped') {
    const stopReason = /(?:Stop Reason\s+)?([A-Z_]{4,})\s*$/.exec(r.stopReason ?? '')?.[1] ?? '';
    if (FULL_LOAD_DONE.includes(stopReason)) return { kind: 'full-load-finished', stopReason };
    return {
      kind: 'stopped',
      stopReason: stopReason || 'unknown',
      message: message || 'the DMS Serverless replication stopped',
    };
  }
  return { kind: 'ignored', reason: `the replication is ${r.status}: nothing ends yet` };
}

/** Replication.Status values of a replication that is not running nor on its way (stop and delete need nothing more). */
export function dmsReplicationAtRest(r: DmsReplicationState | undefined): boolean {
  return !r || ['stopped', 'failed', 'created'].includes(r.status.toLowerCase());
}

/** Where the DMS task runs: a replication instance the plan names, or DMS Serverless. */
export type DmsCompute =
  | { kind: 'instance'; replicationInstanceArn: string }
  | {
      kind: 'serverless';
      /** DCUs (2 GB of RAM each) DMS may scale up to; one of DMS_CAPACITY_UNITS. */
      maxCapacityUnits: number;
      /** DCUs DMS keeps at least (DMS's default: 1). */
      minCapacityUnits?: number;
      /** The replication subnet group the replication runs in (the one that reaches both databases). */
      replicationSubnetGroupId: string;
      /** Security groups of the replication; none given, none is sent (DMS chooses). */
      vpcSecurityGroupIds?: string[];
      /** A standby in another AZ (DMS recommends it for change capture). */
      multiAz?: boolean;
    };

/** The DCU sizes ComputeConfig's MinCapacityUnits and MaxCapacityUnits take (DMS_DOCS.computeConfig). */
export const DMS_CAPACITY_UNITS = [1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 384] as const;

export interface DmsPlan {
  migrationId: string;
  /** Secrets Manager secrets DMS reads the source's and the target's host, port, user and password from. */
  sourceSecretArn: string;
  targetSecretArn: string;
  /** The IAM role DMS assumes to read those secrets. */
  secretsAccessRoleArn: string;
  sourceDatabase: string;
  targetDatabase: string;
  compute: DmsCompute;
  /** TLS to both servers; `verify-full` needs the CA imported into DMS, which pgferry does not do. */
  sslMode?: 'require' | 'verify-ca' | 'verify-full';
}

const ARN = (service: string) => new RegExp(`^arn:aws[a-z-]*:${service}:`);

/** Every problem of a DMS plan, each naming its field. */
export function dmsPlanProblems(plan: DmsPlan): { field: string; message: string }[] {
  const problems: { field: string; message: string }[] = [];
  const arn = (field: string, value: string, service: string, what: string) => {
    if (!ARN(service).test(value))
      problems.push({ field, message: `${field} must be the ARN of ${what} (arn:aws:${service}:…)` });
  };
  arn('sourceSecretArn', plan.sourceSecretArn, 'secretsmanager', "the source's Secrets Manager secret");
  arn('targetSecretArn', plan.targetSecretArn, 'secretsmanager', "the target's Secrets Manager secret");
  arn('secretsAccessRoleArn', plan.secretsAccessRoleArn, 'iam', 'the role DMS assumes to read the secrets');
  if (!plan.sourceDatabase) problems.push({ field: 'sourceDatabase', message: 'sourceDatabase is empty' });
  if (!plan.targetDatabase) problems.push({ field: 'targetDatabase', message: 'targetDatabase is empty' });
  if (plan.compute.kind === 'instance') {
    arn('compute.replicationInstanceArn', plan.compute.replicationInstanceArn, 'dms', 'a DMS replication instance');
  } else {
    const { maxCapacityUnits: max, minCapacityUnits: min, vpcSecurityGroupIds: groups } = plan.compute;
    const dcu: readonly number[] = DMS_CAPACITY_UNITS;
    if (!dcu.includes(max))
      problems.push({
        field: 'compute.maxCapacityUnits',
        message: `compute.maxCapacityUnits must be one of ${dcu.join(', ')} (DMS capacity units, 2 GB each; ${DMS_DOCS.computeConfig})`,
      });
    if (min !== undefined && (!dcu.includes(min) || min > max)) {
      problems.push({
        field: 'compute.minCapacityUnits',
        message: `compute.minCapacityUnits must be one of ${dcu.join(', ')}, no larger than compute.maxCapacityUnits`,
      });
    }
    if (!/^[A-Za-z][A-Za-z0-9-]{0,254}$/.test(plan.compute.replicationSubnetGroupId)) {
      problems.push({
        field: 'compute.replicationSubnetGroupId',
        message:
          'compute.replicationSubnetGroupId must name the DMS replication subnet group the Serverless replication runs in (one that reaches both databases)',
      });
    }
    const badGroups = (groups ?? []).filter((g) => !/^sg-[0-9a-f]{8,17}$/.test(g));
    if (badGroups.length > 0)
      problems.push({
        field: 'compute.vpcSecurityGroupIds',
        message: `compute.vpcSecurityGroupIds must be security group ids (sg-…): ${badGroups.map((g) => JSON.stringify(g)).join(', ')}`,
      });
  }
  return problems;
}

function assertPlan(plan: DmsPlan) {
  const problems = dmsPlanProblems(plan);
  if (problems.length > 0) {
    throw new InvalidInputError(`the DMS plan is not valid: ${problems.map((p) => p.message).join('; ')}`, {
      field: problems[0]!.field,
      migrationId: plan.migrationId,
    });
  }
}

/**
 * CreateEndpoint's input for one side. Credentials come from the secret (DMS reads it with the role);
 * the target runs as a replica session, so its triggers and foreign keys do not fire on rows DMS writes
 * (DMS loads tables in no particular order), as PostgreSQL's own logical replication apply does.
 */
export function dmsEndpointInput(plan: DmsPlan, side: 'source' | 'target') {
  assertPlan(plan);
  const names = dmsNames(plan.migrationId);
  return {
    EndpointIdentifier: side === 'source' ? names.sourceEndpoint : names.targetEndpoint,
    EndpointType: side,
    EngineName: 'postgres',
    SslMode: plan.sslMode ?? 'require',
    PostgreSQLSettings: {
      DatabaseName: side === 'source' ? plan.sourceDatabase : plan.targetDatabase,
      SecretsManagerSecretId: side === 'source' ? plan.sourceSecretArn : plan.targetSecretArn,
      SecretsManagerAccessRoleArn: plan.secretsAccessRoleArn,
      ...(side === 'source'
        ? // No DDL capture: DMS would install an event trigger on the source, and pgferry owns the
          // target's schema. No heartbeat: its writes on the source would meet the cutover's freeze.
          { CaptureDdls: false, HeartbeatEnable: false }
        : { AfterConnectScript: 'SET session_replication_role = replica' }),
    },
    Tags: [{ Key: 'pgferry:migration', Value: plan.migrationId }],
  } as const;
}

/** CreateReplicationTask's input (instance compute). */
export function dmsTaskInput(
  plan: DmsPlan,
  endpoints: { sourceArn: string; targetArn: string },
  mappings: DmsMappingInput,
) {
  assertPlan(plan);
  if (plan.compute.kind !== 'instance') {
    throw new InvalidInputError(
      'a replication task needs a replication instance; use a replication config for DMS Serverless',
      {
        field: 'compute.kind',
      },
    );
  }
  return {
    ReplicationTaskIdentifier: dmsNames(plan.migrationId).task,
    SourceEndpointArn: endpoints.sourceArn,
    TargetEndpointArn: endpoints.targetArn,
    ReplicationInstanceArn: plan.compute.replicationInstanceArn,
    MigrationType: 'full-load-and-cdc',
    TableMappings: JSON.stringify(dmsTableMappings(mappings)),
    ReplicationTaskSettings: JSON.stringify(dmsTaskSettings()),
    Tags: [{ Key: 'pgferry:migration', Value: plan.migrationId }],
  } as const;
}

/** CreateReplicationConfig's input (DMS Serverless). */
export function dmsReplicationConfigInput(
  plan: DmsPlan,
  endpoints: { sourceArn: string; targetArn: string },
  mappings: DmsMappingInput,
) {
  assertPlan(plan);
  if (plan.compute.kind !== 'serverless') {
    throw new InvalidInputError('a replication config is for DMS Serverless; use a replication task with an instance', {
      field: 'compute.kind',
    });
  }
  const c = plan.compute;
  return {
    ReplicationConfigIdentifier: dmsNames(plan.migrationId).replicationConfig,
    SourceEndpointArn: endpoints.sourceArn,
    TargetEndpointArn: endpoints.targetArn,
    ReplicationType: 'full-load-and-cdc',
    ComputeConfig: {
      MaxCapacityUnits: c.maxCapacityUnits,
      ...(c.minCapacityUnits !== undefined ? { MinCapacityUnits: c.minCapacityUnits } : {}),
      ReplicationSubnetGroupId: c.replicationSubnetGroupId,
      ...(c.vpcSecurityGroupIds?.length ? { VpcSecurityGroupIds: [...c.vpcSecurityGroupIds] } : {}),
      MultiAZ: c.multiAz ?? false,
    },
    TableMappings: JSON.stringify(dmsTableMappings(mappings)),
    ReplicationSettings: JSON.stringify(dmsTaskSettings()),
    Tags: [{ Key: 'pgferry:migration', Value: plan.migrationId }],
  } as const;
}

/** A CDC latency reading (see packages/aws's dmsCdcLatency). */
export interface DmsLatencyReading {
  targetSeconds?: number;
  /** End of the minute the target figure covers. */
  at?: string;
}

/**
 * The cutover's drain on the DMS path: the target applied everything committed before the freeze when
 * a whole minute of CloudWatch's figure, begun after the freeze, says 0. An older minute, or none, says
 * nothing about writes made just before the freeze.
 */
export function dmsDrained(latency: DmsLatencyReading, freezeAt: string): boolean {
  if (latency.targetSeconds === undefined || !latency.at) return false;
  const minuteStart = new Date(latency.at).getTime() - 60_000;
  return latency.targetSeconds === 0 && minuteStart >= new Date(freezeAt).getTime();
}

/**
 * What a migration with `strategy: 'dms'` says of DMS (the plan without what the migration itself
 * gives: its id and the two database names, read from its URLs). Each problem names its field.
 */
/** What DMS runs on: a replication instance (its ARN), or DMS Serverless capacity in a subnet group. */
export const dmsComputeSchema = z.discriminatedUnion(
  'kind',
  [
    z.strictObject(
      {
        kind: z.literal('instance'),
        replicationInstanceArn: z.string({
          error: 'dms.compute.replicationInstanceArn is required with kind instance',
        }),
      },
      { error: 'dms.compute must be { kind: "instance", replicationInstanceArn }' },
    ),
    z.strictObject(
      {
        kind: z.literal('serverless'),
        maxCapacityUnits: z.number({
          error: `dms.compute.maxCapacityUnits is required with kind serverless: one of ${DMS_CAPACITY_UNITS.join(', ')}`,
        }),
        minCapacityUnits: z.number({ error: 'dms.compute.minCapacityUnits must be a number of DCUs' }).optional(),
        replicationSubnetGroupId: z.string({
          error:
            'dms.compute.replicationSubnetGroupId is required with kind serverless: the DMS replication subnet group',
        }),
        vpcSecurityGroupIds: z
          .array(z.string(), { error: 'dms.compute.vpcSecurityGroupIds must be a list of security group ids' })
          .optional(),
        multiAz: z.boolean({ error: 'dms.compute.multiAz must be true or false' }).optional(),
      },
      {
        error:
          'dms.compute must be { kind: "serverless", maxCapacityUnits, replicationSubnetGroupId, minCapacityUnits?, vpcSecurityGroupIds?, multiAz? }',
      },
    ),
  ],
  { error: 'dms.compute.kind must be instance (with replicationInstanceArn) or serverless' },
);

export const dmsSslModeSchema = z.enum(['require', 'verify-ca', 'verify-full'], {
  error: 'dms.sslMode must be require, verify-ca or verify-full',
});

export const dmsSettingsSchema = z
  .strictObject(
    {
      sourceSecretArn: z.string({ error: 'dms.sourceSecretArn is required' }),
      targetSecretArn: z.string({ error: 'dms.targetSecretArn is required' }),
      secretsAccessRoleArn: z.string({ error: 'dms.secretsAccessRoleArn is required' }),
      compute: dmsComputeSchema,
      sslMode: dmsSslModeSchema.optional(),
    },
    { error: 'dms must be an object: { sourceSecretArn, targetSecretArn, secretsAccessRoleArn, compute }' },
  )
  .superRefine((d, ctx) => {
    for (const p of dmsPlanProblems({ ...d, migrationId: 'm', sourceDatabase: 'db', targetDatabase: 'db' }))
      ctx.addIssue({ code: 'custom', path: p.field.split('.'), message: `dms.${p.message}` });
  });

export type DmsSettings = z.output<typeof dmsSettingsSchema>;

/** The database a postgres:// URL names (its path, else its dbname parameter). */
function databaseOf(url: string): string {
  const u = new URL(url);
  return decodeURIComponent(u.pathname.replace(/^\//, '')) || u.searchParams.get('dbname') || '';
}

/** The DMS plan of a migration: its settings, its id and the databases its URLs name. */
export function dmsPlanFor(config: { id: string; sourceUrl: string; targetUrl: string; dms?: DmsSettings }): DmsPlan {
  if (!config.dms)
    throw new InvalidInputError('the migration has no dms settings', {
      field: 'dms',
      migrationId: config.id,
      hint: 'a dms migration names its secrets, the role DMS reads them with, and its compute under dms',
    });
  return {
    ...config.dms,
    migrationId: config.id,
    sourceDatabase: databaseOf(config.sourceUrl),
    targetDatabase: databaseOf(config.targetUrl),
  };
}

/** A DMS replication pgferry runs: its task (instance) or replication config (Serverless) ARN. */
export interface DmsRef {
  arn: string;
  kind: DmsCompute['kind'];
  /** Instance compute: CloudWatch names the task's metrics by the instance's identifier. */
  replicationInstanceArn?: string;
  /** Serverless: the config's identifier (pgferry's name for it), one of the names its metrics may carry. */
  replicationConfigIdentifier?: string;
}

/**
 * The catch-up gate on the DMS path: the task's CDC latency under the lag limit for `samples`
 * readings in a row. No figure (no datapoint yet) breaks the streak: it is not 0.
 */
export function dmsGate(
  latency: DmsLatencyReading,
  previousStreak: number,
  limits: { maxLagMs: number; lagSamples: number },
): { ready: boolean; streak: number; reason?: string } {
  if (latency.targetSeconds === undefined)
    return { ready: false, streak: 0, reason: 'no CDC latency figure from CloudWatch yet (no datapoint is not 0)' };
  const ms = latency.targetSeconds * 1000;
  if (ms > limits.maxLagMs)
    return { ready: false, streak: 0, reason: `CDC latency ${ms} ms is over the limit of ${limits.maxLagMs} ms` };
  const streak = previousStreak + 1;
  return { ready: streak >= limits.lagSamples, streak };
}
