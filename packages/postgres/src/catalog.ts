import { MARKER_SCHEMA } from '@pgferry/core';
import type pg from 'pg';
import { type Db, qualified, serverMajor } from './db';

export interface ColumnInfo {
  name: string;
  type: string;
  notNull: boolean;
  generated: boolean;
  identity: boolean;
  /** The type can be sent and received in binary COPY format. */
  binary: boolean;
  /** `char(n)`: stored padded with blanks to n characters, which its input function adds back. */
  padded: boolean;
  /**
   * The type's name (pg_type.typname) when its own hash function tells apart every two values its text
   * form tells apart (integers, timestamps, uuid, bytea, numeric of fixed scale, text of a deterministic
   * collation...), so verify may hash the value instead of its text; undefined otherwise. Not so for
   * numeric without a scale (1.0 = 1.00), float (0 = -0), interval ('1 day' = '24 hours'), timetz, jsonb
   * (numbers inside compare as numeric), enums (hashed by OID, which differs between servers), and
   * every type without a hash.
   */
  hashable?: string;
}

export interface TableInfo {
  schema: string;
  name: string;
  oid: number;
  /** `partitioned` parents hold no rows; their leaves are `partition`s and are copied one by one. */
  kind: 'table' | 'partitioned' | 'partition';
  /** Root of the partition tree for a partition. */
  root?: { schema: string; name: string };
  unlogged: boolean;
  /** With indexes (what the table costs on disk). */
  sizeBytes: number;
  /** Heap and TOAST only (what a copy moves). */
  heapBytes: number;
  rowEstimate: number;
  primaryKey: string[];
  replicaIdentity: 'default' | 'full' | 'index' | 'nothing';
  /** Columns of the replica identity index (PK for default, the chosen index for USING INDEX). */
  identityColumns: string[];
  columns: ColumnInfo[];
  /** The extension whose configuration table this is (its rows are the user's, copied like any table's). */
  extension?: string;
}

/**
 * Extensions whose configuration tables drive a scheduler in the server: copied to the target, their
 * jobs would run there too while the source still runs them. Their tables are left out of the copy,
 * replication and verify, and assess says so.
 */
export const SCHEDULER_EXTENSIONS = ['pg_cron'];

/**
 * Not brought along by an extension, for a `pg_class c`. The exception is what an extension marked with
 * `pg_extension_config_dump` (its configuration tables and sequences, for example pg_partman's
 * part_config or PostGIS's spatial_ref_sys) and the sequences of such tables' columns: they hold the
 * user's rows, which pg_dump carries and so does pgferry (but a scheduler's: SCHEDULER_EXTENSIONS).
 * Other member tables are the extension's own and are left to the target's extension.
 */
export const NOT_EXTENSION_MEMBER = `NOT EXISTS (
    SELECT 1 FROM pg_depend d JOIN pg_extension x ON x.oid = d.refobjid
     WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e' AND d.refclassid = 'pg_extension'::regclass
       AND NOT (x.extname <> ALL ('{${SCHEDULER_EXTENSIONS.join(',')}}'::text[])
                AND (c.oid = ANY (coalesce(x.extconfig, '{}'))
                     OR EXISTS (SELECT 1 FROM pg_depend o
                                 WHERE o.classid = 'pg_class'::regclass AND o.objid = c.oid AND o.deptype IN ('a', 'i')
                                   AND o.refobjid = ANY (coalesce(x.extconfig, '{}'))))))`;

/** Schemas pgferry never migrates. */
export const EXCLUDED_SCHEMAS = ['pg_catalog', 'information_schema', MARKER_SCHEMA];
/** The schemas of the application's own objects, for a `pg_namespace n` (with `EXCLUDED_SCHEMAS` as $1). */
export const USER_SCHEMA = "n.nspname <> ALL($1) AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'";

/**
 * What a user made in a database: everything that lives in a schema (tables, views, sequences,
 * functions, types, collations, text search configurations, operators, …), schemas, extensions
 * (plpgsql and pgferry's own schema aside) and default privileges of a schema. Objects an extension or another object brings along (an
 * array type, a range's constructors) are not named. A target must hold none, because a rollback
 * empties it. Named the way PostgreSQL describes them (`function f()`, `table s.t`); `limit` + 1 at
 * most, so that a caller can tell there are more.
 */
export async function userObjects(db: Db, limit = 5): Promise<string[]> {
  const rows = await db.query<{ what: string }>(
    `WITH user_ns AS (SELECT n.oid, n.nspname FROM pg_namespace n WHERE ${USER_SCHEMA})
     SELECT what FROM (
       SELECT 1 AS o, pg_describe_object(d.classid, d.objid, d.objsubid) AS what FROM pg_depend d
        WHERE d.refclassid = 'pg_namespace'::regclass AND d.deptype = 'n' AND d.refobjid IN (SELECT oid FROM user_ns)
          AND NOT EXISTS (SELECT 1 FROM pg_depend x
                           WHERE x.classid = d.classid AND x.objid = d.objid AND x.deptype IN ('e', 'i'))
       UNION ALL
       SELECT 2, format('schema %I', n.nspname) FROM user_ns n
        WHERE n.nspname <> 'public'
          AND NOT EXISTS (SELECT 1 FROM pg_depend x
                           WHERE x.classid = 'pg_namespace'::regclass AND x.objid = n.oid AND x.deptype = 'e')
       UNION ALL
       SELECT 3, format('extension %I', x.extname) FROM pg_extension x
        WHERE x.extname <> 'plpgsql' AND x.extnamespace NOT IN (SELECT oid FROM user_ns)
       UNION ALL
       -- DROP SCHEMA takes these along too.
       SELECT 4, format('default privileges in schema %I', n.nspname) FROM pg_default_acl a
         JOIN user_ns n ON n.oid = a.defaclnamespace
     ) o WHERE what IS NOT NULL ORDER BY o, what LIMIT $2`,
    [EXCLUDED_SCHEMAS, limit + 1],
  );
  return rows.map((r) => r.what);
}

/**
 * User tables (no system or pgferry tables, no extension's own tables but its configuration tables),
 * leaves and parents, in a stable order.
 */
export async function listTables(
  db: Db,
  /** sizes: false leaves sizeBytes and heapBytes at 0: reading them stats every file (300–800 ms for 5,000 tables). */
  options: { sizes?: boolean } = {},
): Promise<TableInfo[]> {
  const sizes = options.sizes ?? true;
  const major = await serverMajor(db);
  // Before 12 there is no pg_partition_root (the root is found by walking pg_inherits up) and no
  // generated column.
  const partitionRoot =
    major >= 12
      ? 'pg_partition_root(c.oid)'
      : `(WITH RECURSIVE up(oid, depth) AS (
            SELECT c.oid, 0 UNION ALL SELECT i.inhparent, up.depth + 1 FROM up JOIN pg_inherits i ON i.inhrelid = up.oid)
          SELECT oid FROM up ORDER BY depth DESC LIMIT 1)`;
  const rows = await db.query<{
    oid: number;
    schema: string;
    name: string;
    relkind: string;
    relispartition: boolean;
    relpersistence: string;
    relreplident: string;
    size: number;
    heap: number;
    reltuples: number;
    pk: string[] | null;
    ri: string[] | null;
    root_schema: string | null;
    root_name: string | null;
    extension: string | null;
  }>(
    `SELECT c.oid::int AS oid, n.nspname AS schema, c.relname AS name, c.relkind::text, c.relispartition,
            c.relpersistence::text, c.relreplident::text,
            ${sizes ? 'pg_total_relation_size(c.oid)' : '0'} AS size, ${sizes ? 'pg_table_size(c.oid)' : '0'} AS heap, greatest(c.reltuples, 0)::float8 AS reltuples,
            (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid AND i.indisprimary) AS pk,
            (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid AND i.indisreplident) AS ri,
            rn.nspname AS root_schema, rc.relname AS root_name,
            (SELECT x.extname FROM pg_extension x WHERE c.oid = ANY (x.extconfig)) AS extension
       FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace
       LEFT JOIN LATERAL ${partitionRoot} AS root(oid) ON c.relispartition
       LEFT JOIN pg_class rc ON rc.oid = root.oid
       LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
      WHERE c.relkind IN ('r', 'p')
        AND ${USER_SCHEMA}
        AND ${NOT_EXTENSION_MEMBER}
      ORDER BY n.nspname, c.relname`,
    [EXCLUDED_SCHEMAS],
  );
  const columns = await db.query<{
    oid: number;
    name: string;
    type: string;
    notnull: boolean;
    generated: boolean;
    identity: boolean;
    binary: boolean;
    padded: boolean;
    hashable: string | null;
  }>(
    `SELECT a.attrelid::int AS oid, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS notnull,
            ${major >= 12 ? "a.attgenerated <> ''" : 'false'} AS generated, a.attidentity <> '' AS identity,
            -- binary COPY is safe for built-in types with send/receive functions; extension and
            -- user-defined types go as text so a differing binary layout on the target cannot bite.
            -- The reg* types are OIDs in binary, which name other objects on the target: as text
            -- they are names. tsquery's receive refuses an empty query its send writes.
            (t.typsend <> 0 AND t.typreceive <> 0 AND bt.oid < 16384 AND t.typtype <> 'e'
             AND bt.typname NOT LIKE 'reg%' AND bt.typname <> 'tsquery') AS binary,
            (a.atttypid = 'pg_catalog.bpchar'::pg_catalog.regtype AND a.atttypmod > 4) AS padded,
            CASE WHEN t.typtype = 'b' AND t.oid < 16384 AND (
               t.typname IN ('int2', 'int4', 'int8', 'oid', 'bool', 'date', 'time', 'timestamp', 'timestamptz', 'uuid', 'bytea')
               OR (t.typname = 'numeric' AND a.atttypmod <> -1)
               OR ((t.typname IN ('text', 'varchar') OR (t.typname = 'bpchar' AND a.atttypmod > 4))
                   AND ${major >= 12 ? 'EXISTS (SELECT 1 FROM pg_collation co WHERE co.oid = a.attcollation AND co.collisdeterministic)' : 'true'})
            ) THEN t.typname::text END AS hashable
       FROM pg_attribute a
       JOIN pg_type t ON t.oid = a.atttypid
       JOIN pg_type bt ON bt.oid = CASE WHEN t.typelem <> 0 AND t.typlen = -1 THEN t.typelem WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
       JOIN pg_class c ON c.oid = a.attrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') AND n.nspname <> ALL($1)
      ORDER BY a.attrelid, a.attnum`,
    [EXCLUDED_SCHEMAS],
  );
  const byTable = new Map<number, ColumnInfo[]>();
  for (const c of columns) {
    const list = byTable.get(c.oid) ?? [];
    list.push({
      name: c.name,
      type: c.type,
      notNull: c.notnull,
      generated: c.generated,
      identity: c.identity,
      binary: c.binary,
      padded: c.padded,
      ...(c.hashable ? { hashable: c.hashable } : {}),
    });
    byTable.set(c.oid, list);
  }
  const identMap: Record<string, TableInfo['replicaIdentity']> = { d: 'default', f: 'full', i: 'index', n: 'nothing' };
  return rows.map((r) => {
    const replicaIdentity = identMap[r.relreplident] ?? 'default';
    return {
      schema: r.schema,
      name: r.name,
      oid: r.oid,
      kind: r.relkind === 'p' ? 'partitioned' : r.relispartition ? 'partition' : 'table',
      root: r.relispartition && r.root_schema && r.root_name ? { schema: r.root_schema, name: r.root_name } : undefined,
      unlogged: r.relpersistence === 'u',
      sizeBytes: r.size,
      heapBytes: r.heap,
      rowEstimate: Math.round(r.reltuples),
      primaryKey: r.pk ?? [],
      replicaIdentity,
      identityColumns: replicaIdentity === 'default' ? (r.pk ?? []) : replicaIdentity === 'index' ? (r.ri ?? []) : [],
      columns: byTable.get(r.oid) ?? [],
      ...(r.extension ? { extension: r.extension } : {}),
    } satisfies TableInfo;
  });
}

/** A table can replicate UPDATE and DELETE when it has a usable replica identity. */
export function hasReplicaIdentity(t: TableInfo): boolean {
  if (t.kind === 'partitioned') return true; // checked on its leaves
  return t.replicaIdentity === 'full' || t.identityColumns.length > 0;
}

/** Tables whose rows are copied: plain tables and partition leaves, never partitioned parents. */
export function copyableTables(tables: TableInfo[]): TableInfo[] {
  return tables.filter((t) => t.kind !== 'partitioned' && !t.unlogged);
}

/**
 * Tables named in the publication: plain tables and partition roots (published via the root so the
 * target may partition differently); leaves are covered by their root. Not `viaRoot` (a source older
 * than 13): plain tables and leaves, each published and applied under its own name.
 */
export function publishedTables(tables: TableInfo[], viaRoot: boolean): TableInfo[] {
  return tables.filter(
    (t) =>
      !t.unlogged && (t.kind === 'table' || (viaRoot ? t.kind === 'partitioned' && !t.root : t.kind === 'partition')),
  );
}

export interface SequenceInfo {
  schema: string;
  name: string;
  /** As text: a bigint past 2^53 does not survive a JS number. */
  lastValue: string | null;
  isCalled: boolean;
  ownedBy?: string;
  /** The connecting role may read the sequence's value. */
  readable: boolean;
}

/**
 * The application's sequences, for a `pg_class c` joined to `pg_namespace n` (with `EXCLUDED_SCHEMAS` as
 * $1): in its schemas and not brought along by an extension.
 */
export const USER_SEQUENCE = `c.relkind = 'S' AND ${USER_SCHEMA} AND ${NOT_EXTENSION_MEMBER}`;

/** Schemas and extensions by name (as a target's marker row records them). */
export interface SchemaNames {
  schemas: string[];
  extensions: string[];
}

/** schemasAndExtensions' answer by name only, as the marker records it. */
export const schemaNames = (x: { schemas: string[]; extensions: Array<{ name: string }> }): SchemaNames => ({
  schemas: x.schemas,
  extensions: x.extensions.map((e) => e.name),
});

/** The schemas and extensions in `now` that `before` did not have: what a restore in between made. */
export function madeSince(before: SchemaNames, now: SchemaNames): SchemaNames {
  return {
    schemas: now.schemas.filter((x) => !before.schemas.includes(x)),
    extensions: now.extensions.filter((x) => !before.extensions.includes(x)),
  };
}

/**
 * The schemas (other than public) and extensions (plpgsql aside) of a database: on a target pgferry
 * filled, what its schema restore made, and what its rollback drops.
 */
export async function schemasAndExtensions(
  db: Db,
): Promise<{ schemas: string[]; extensions: Array<{ name: string; schema: string }> }> {
  const [schemas, extensions] = await Promise.all([
    db.query<{ name: string }>(
      `SELECT n.nspname AS name FROM pg_namespace n WHERE ${USER_SCHEMA} AND n.nspname <> 'public' ORDER BY 1`,
      [EXCLUDED_SCHEMAS],
    ),
    db.query<{ name: string; schema: string }>(
      "SELECT extname AS name, extnamespace::regnamespace::text AS schema FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
    ),
  ]);
  return { schemas: schemas.map((r) => r.name), extensions };
}

/** Every user sequence, owned by a column or not, with its current value. */
export async function listSequences(db: Db, options: { owners?: boolean } = {}): Promise<SequenceInfo[]> {
  const owners = options.owners ?? true;
  // pg_sequence_last_value answers for every called sequence in one scan (NULL for one never called
  // or RESTARTed, whose last_value and is_called are then read from the sequence itself).
  const seqs = await db.query<{
    schema: string;
    name: string;
    owned_by: string | null;
    readable: boolean;
    last_value: string | null;
  }>(
    `SELECT n.nspname AS schema, c.relname AS name, has_sequence_privilege(c.oid, 'SELECT') AS readable,
            CASE WHEN has_sequence_privilege(c.oid, 'SELECT') THEN pg_sequence_last_value(c.oid)::text END AS last_value,
            ${
              owners
                ? `(SELECT format('%s.%s', d.refobjid::regclass, a.attname) FROM pg_depend d
               JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
              WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i') LIMIT 1)`
                : 'NULL'
            } AS owned_by
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE ${USER_SEQUENCE}
      ORDER BY 1, 2`,
    [EXCLUDED_SCHEMAS],
  );
  if (seqs.length === 0) return [];
  // The others straight from each sequence (pg_sequences hides them from roles without USAGE): one
  // statement per sequence, all sent at once. A UNION ALL of them took 390 ms to plan for 1,500
  // sequences, inside the write gap; single statements 21 ms.
  type Value = { i: number; last_value: string; is_called: boolean };
  const text = seqs
    .map((s, i) =>
      s.readable && s.last_value === null
        ? `SELECT ${i} AS i, last_value::text AS last_value, is_called FROM ${qualified(s)}`
        : '',
    )
    .filter(Boolean)
    .join(';\n');
  const values: Value[] = seqs.flatMap((s, i) =>
    s.last_value !== null ? [{ i, last_value: s.last_value, is_called: true }] : [],
  );
  if (text)
    values.push(
      ...(await db.withClient(async (client) => {
        const result = (await client.query(text)) as unknown as pg.QueryResult<Value> | pg.QueryResult<Value>[];
        return (Array.isArray(result) ? result : [result]).flatMap((r) => r.rows);
      })),
    );
  const byIndex = new Map(values.map((v) => [v.i, v]));
  return seqs.map((s, i) => ({
    schema: s.schema,
    name: s.name,
    lastValue: byIndex.get(i)?.last_value ?? null,
    isCalled: byIndex.get(i)?.is_called ?? false,
    ownedBy: s.owned_by ?? undefined,
    readable: s.readable,
  }));
}
