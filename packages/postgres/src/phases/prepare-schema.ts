/**
 * Prepare schema: roles first (without passwords or superuser, which RDS allows neither), then the
 * pre-data section (types, tables, functions) before the copy; the post-data section (indexes,
 * constraints, triggers) is built after the data by `buildPostData`, in parallel.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULTS, type DeferredForeignKey, objectNames, SchemaFailedError } from '@pgferry/core';
import type pg from 'pg';
import {
  EXCLUDED_SCHEMAS,
  listTables,
  madeSince,
  type SchemaNames,
  schemaNames,
  schemasAndExtensions,
  USER_SCHEMA,
  userObjects,
} from '../catalog';
import { connectClient, type Db, ident, qualified } from '../db';
import { artifactFile, findTool, runTool, toolConnection } from '../tools';
import { type PhaseContext, sourceMajor } from './context';

const DUMP_FILE = 'schema.dump';

/** Attributes RDS forbids (and a migration must not hand out) are never copied. */
export async function createRoles(ctx: PhaseContext): Promise<string[]> {
  const roles = await ctx.source.query<{
    rolname: string;
    rolcanlogin: boolean;
    rolinherit: boolean;
    rolcreatedb: boolean;
    rolcreaterole: boolean;
    rolconnlimit: number;
  }>(
    `SELECT rolname, rolcanlogin, rolinherit, rolcreatedb, rolcreaterole, rolconnlimit FROM pg_roles
      WHERE rolname !~ '^(pg_|rds)' AND oid >= 16384 ORDER BY rolname`,
  );
  const existing = new Set(
    (await ctx.target.query<{ rolname: string }>('SELECT rolname FROM pg_roles')).map((r) => r.rolname),
  );
  const created: string[] = [];
  for (const r of roles) {
    if (existing.has(r.rolname)) continue;
    const attrs = [
      r.rolcanlogin ? 'LOGIN' : 'NOLOGIN',
      r.rolinherit ? 'INHERIT' : 'NOINHERIT',
      r.rolcreatedb ? 'CREATEDB' : '',
      r.rolcreaterole ? 'CREATEROLE' : '',
      r.rolconnlimit >= 0 ? `CONNECTION LIMIT ${Number(r.rolconnlimit)}` : '',
    ].filter(Boolean);
    await ctx.target.query(`CREATE ROLE ${ident(r.rolname)} ${attrs.join(' ')}`);
    created.push(r.rolname);
    // Recorded at once (after the CREATE, so a role someone else made is never claimed as ours).
    await ctx.update((s) => {
      s.rolesCreated = [...new Set([...(s.rolesCreated ?? []), r.rolname])];
    });
  }
  const members = await ctx.source.query<{ role: string; member: string; admin: boolean }>(
    `SELECT r.rolname AS role, m.rolname AS member, am.admin_option AS admin FROM pg_auth_members am
       JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
      WHERE r.rolname !~ '^(pg_|rds)' AND m.rolname !~ '^(pg_|rds)' AND m.oid >= 16384`,
  );
  for (const m of members) {
    const has = await ctx.target.query(
      'SELECT 1 FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member WHERE r.rolname = $1 AND m.rolname = $2',
      [m.role, m.member],
    );
    if (has.length === 0)
      await ctx.target.query(`GRANT ${ident(m.role)} TO ${ident(m.member)}${m.admin ? ' WITH ADMIN OPTION' : ''}`);
  }
  return created;
}

/**
 * The marker row says this target database was empty and pgferry filled it. It also keeps what the
 * schema `public` was like before the restore changed it to the source's (owner, privileges, comment):
 * a rollback puts it back as it was, not as CREATE DATABASE makes it, so a hardened `public` (CREATE
 * revoked from PUBLIC, as many do since CVE-2018-1058) is not reopened by a rollback.
 */
async function ensureMarker(ctx: PhaseContext) {
  const { markerSchema } = objectNames(ctx.config.id);
  const table = `${ident(markerSchema)}.migration`;
  // One target database takes one migration. Two started at once into the same empty database both
  // found it empty, restored into it and copied into the same tables; the one that failed then
  // dropped the other's load in its rollback. Under a lock, only the first marks the database; the
  // other is refused here, before it restores or copies anything (and, unmarked, drops nothing).
  await ctx.target.withClient(async (c) => {
    await c.query('BEGIN');
    try {
      await c.query('SELECT pg_advisory_xact_lock($1)', [MARKER_LOCK]);
      await c.query(`CREATE SCHEMA IF NOT EXISTS ${ident(markerSchema)}`);
      await c.query(
        `CREATE TABLE IF NOT EXISTS ${table} (
           id text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now(),
           pre_data_at timestamptz, post_data_at timestamptz, public_schema jsonb, restored jsonb)`,
      );
      // A marker table made by an earlier pgferry lacks the columns.
      await c.query(
        `ALTER TABLE ${table} ADD COLUMN IF NOT EXISTS public_schema jsonb, ADD COLUMN IF NOT EXISTS restored jsonb`,
      );
      const others = (
        await c.query<{ id: string }>(`SELECT id FROM ${table} WHERE id <> $1 ORDER BY id`, [ctx.config.id])
      ).rows;
      if (others.length)
        throw new SchemaFailedError(
          `target database ${ctx.target.database} is taken by pgferry migration ${others.map((o) => o.id).join(', ')} (marked as its target): one target database takes one migration; nothing was restored or copied into it by this one`,
          {
            migrationId: ctx.config.id,
            phase: 'prepare-schema',
            field: '--target',
            hint: `point --target at another empty database; or, if that migration is over or abandoned, \`pgferry rollback --id ${others[0]?.id}\` (or \`pgferry cleanup\`) with its state directory frees it`,
          },
        );
      await c.query(
        // Nothing restored yet (not null: a marker of an earlier pgferry, whose rollback takes everything
        // on the target for its own; a dump that failed then dropped what a DBA had made there).
        `INSERT INTO ${table} (id, public_schema, restored)
         SELECT $1, coalesce((SELECT jsonb_build_object('exists', true, 'owner', pg_get_userbyid(n.nspowner),
                                                        'acl', n.nspacl::text[], 'comment', obj_description(n.oid, 'pg_namespace'))
                                FROM pg_namespace n WHERE n.nspname = 'public'), '{"exists": false}'),
                '{"schemas": [], "extensions": []}'
         ON CONFLICT (id) DO NOTHING`,
        [ctx.config.id],
      );
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    }
  });
}

/** The advisory lock (on the target) under which a migration marks the target database as its own. */
const MARKER_LOCK = 7_215_590_418_301;

async function marker(ctx: PhaseContext): Promise<{ pre_data_at: Date | null; post_data_at: Date | null } | undefined> {
  const { markerSchema } = objectNames(ctx.config.id);
  const exists = await ctx.target.one<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [
    `${markerSchema}.migration`,
  ]);
  if (!exists.t) return undefined;
  const rows = await ctx.target.query<{ pre_data_at: Date | null; post_data_at: Date | null }>(
    `SELECT pre_data_at, post_data_at FROM ${ident(markerSchema)}.migration WHERE id = $1`,
    [ctx.config.id],
  );
  return rows[0];
}

async function dumpSchema(ctx: PhaseContext): Promise<string> {
  const pgDump = await findTool('pg_dump', await sourceMajor(ctx));
  const file = artifactFile(ctx.artifactDir, DUMP_FILE);
  const src = toolConnection(ctx.config.sourceUrl, `${objectNames(ctx.config.id).applicationName}:pg_dump`);
  const res = await runTool(
    pgDump,
    [
      '--schema-only',
      '--format=custom',
      '--no-publications',
      '--no-subscriptions',
      // A source that was once a pgferry target still has its marker schema: it is not the user's.
      `--exclude-schema=${objectNames(ctx.config.id).markerSchema}`,
      '--file',
      file,
      '--dbname',
      src.url,
    ],
    src.env,
  );
  if (res.code !== 0)
    throw new SchemaFailedError(`pg_dump of the source schema failed: ${res.stderr.trim()}`, {
      migrationId: ctx.config.id,
      phase: 'prepare-schema',
    });
  return file;
}

/** The schema dump of this migration, taken again if a crash or another machine lost it. */
async function schemaDump(ctx: PhaseContext): Promise<string> {
  const file = join(ctx.artifactDir, DUMP_FILE);
  return existsSync(file) ? file : await dumpSchema(ctx);
}

/**
 * maintenance_work_mem of each of `sessions` index builds running at once: together they share
 * `--jobs` × indexBuildMemoryMB, or `capMB` if that is less (see indexBuildLimits).
 */
export function indexBuildMemoryMB(
  jobs: number,
  sessions: number,
  capMB = Number.POSITIVE_INFINITY,
  /** The person's `--index-memory-mb`: a cap whatever the floor (each build then 1 MB at least, PostgreSQL's minimum). */
  userCapMB = Number.POSITIVE_INFINITY,
): number {
  const budget = Math.min(jobs * DEFAULTS.indexBuildMemoryMB, capMB);
  const share = Math.floor(budget / Math.max(1, sessions));
  const mb = Math.max(DEFAULTS.indexBuildMemoryMinMB, Math.min(DEFAULTS.indexBuildMemoryMaxMB, share));
  return Math.min(mb, Math.max(1, Math.floor(userCapMB / Math.max(1, sessions))));
}

/**
 * Parallel workers each of `sessions` index builds running at once may add: `--jobs` is the
 * parallelism the load may use on the target, the builds themselves already take `sessions` of it,
 * and never more than the server's max_parallel_maintenance_workers. Three builds on one table with
 * --jobs 4 run with none: on a 2-core target their workers only contended for the cores, split each
 * build's memory into parts that spilled to disk, and merged the parts again (orders, 5.7 M rows: 18
 * CPU-seconds for its three indexes against 12.5 without workers and with the memory to sort in it).
 */
export function indexBuildWorkers(jobs: number, sessions: number, serverMax: number): number {
  return Math.max(0, Math.min(serverMax, Math.floor(jobs / Math.max(1, sessions)) - 1));
}

/** What the target allows index builds: see indexBuildMemoryMB and indexBuildWorkers. */
export interface IndexBuildLimits {
  /** At most this much maintenance_work_mem for all builds at once (Infinity: no cap); never below 64 MB a build. */
  capMB: number;
  /** The person's `--index-memory-mb`: all builds at once never above it, however many they are. */
  userCapMB?: number;
  /** The target's max_parallel_maintenance_workers. */
  maxWorkers: number;
}

/**
 * On RDS, whose parameter groups give shared_buffers a quarter of the instance's memory, concurrent
 * index builds take no more than shared_buffers between them (a quarter of it on Aurora), so that a small instance is not run
 * out of memory in the middle of the load. Elsewhere shared_buffers says little about the machine: the
 * person's `--index-memory-mb` (`userCapMB`) caps them there, and on RDS too when it is lower.
 */
export async function indexBuildLimits(target: Db, userCapMB?: number): Promise<IndexBuildLimits> {
  const { rds, aurora, mb, workers } = await target.one<{ rds: boolean; aurora: boolean; mb: string; workers: string }>(
    `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_superuser') AS rds,
            to_regproc('aurora_version') IS NOT NULL AS aurora,
            pg_size_bytes(current_setting('shared_buffers')) / 1048576 AS mb,
            current_setting('max_parallel_maintenance_workers') AS workers`,
  );
  // Aurora gives shared_buffers about two thirds of the memory: a quarter of it is what is safe.
  // --index-memory-mb: what the person knows of the target's memory (a small self-managed server).
  return {
    capMB: rds ? Number(mb) / (aurora ? 4 : 1) : Number.POSITIVE_INFINITY,
    maxWorkers: Number(workers),
    ...(userCapMB !== undefined ? { userCapMB } : {}),
  };
}

/** The settings of one of `sessions` index builds running at once. */
export function indexBuildSettings(jobs: number, sessions: number, limits: IndexBuildLimits) {
  return {
    maintenance_work_mem: `${Math.floor(indexBuildMemoryMB(jobs, sessions, limits.capMB, limits.userCapMB))}MB`,
    max_parallel_maintenance_workers: String(indexBuildWorkers(jobs, sessions, limits.maxWorkers)),
  };
}

/**
 * Restore one section, or only the TOC entries in `list` (lines of `pg_restore -l`). Errors other
 * than "already exists" (a re-run after a crash) fail the phase.
 */
async function restore(
  ctx: PhaseContext,
  file: string,
  section: 'pre-data' | 'post-data',
  jobs: number,
  /** `sessions`: index builds running at once with this restore's (its jobs if not given). */
  list?: { name: string; lines: string[]; sessions?: number },
) {
  const pgRestore = await findTool('pg_restore', 0);
  const tgt = toolConnection(ctx.config.targetUrl, `${objectNames(ctx.config.id).applicationName}:pg_restore`);
  const args = ['--section', section, '--dbname', tgt.url, '--no-publications', '--no-subscriptions'];
  if (list) {
    const listFile = artifactFile(ctx.artifactDir, `${list.name}.list`, `${list.lines.join('\n')}\n`);
    args.push('--use-list', listFile);
  }
  // pre-data is all-or-nothing so a crash cannot leave half a schema; post-data builds in parallel.
  if (section === 'pre-data') args.push('--single-transaction', '--exit-on-error');
  else args.push('--jobs', String(jobs));
  // Our session must write even if the target database is frozen (rollback of a previous attempt).
  // Index builds sort in memory instead of spilling to disk (pg_restore alone uses the server
  // default). Their parallel workers are set only where the builds running at once are known (a
  // table's own, `list.sessions`); in a general post-data restore, whose --jobs items are mostly
  // not index builds and whose last big index may build alone, the server's setting stands.
  let memory = '';
  if (section === 'post-data') {
    const settings = indexBuildSettings(
      ctx.config.jobs,
      list?.sessions ?? jobs,
      await indexBuildLimits(ctx.target, ctx.config.indexMemoryMB),
    );
    const set = list?.sessions !== undefined ? settings : { maintenance_work_mem: settings.maintenance_work_mem };
    memory = Object.entries(set)
      .map(([k, v]) => ` -c ${k}=${v}`)
      .join('');
  }
  const res = await runTool(pgRestore, [...args, file], {
    ...tgt.env,
    PGOPTIONS: `-c default_transaction_read_only=off${memory}`,
  });
  if (res.code === 0) return [];
  const errors = res.stderr.split('\n').filter((l) => /ERROR:/.test(l));
  // pre-data runs in one transaction: any error rolled all of it back, "already exists" too.
  const real = section === 'pre-data' ? errors : errors.filter((l) => !/already exists|multiple primary keys/.test(l));
  if (real.length > 0 || errors.length === 0) {
    throw new SchemaFailedError(`pg_restore (${section}) failed on the target: ${(real[0] ?? res.stderr).trim()}`, {
      migrationId: ctx.config.id,
      // post-data is built by the bulk-load phase
      phase: section === 'pre-data' ? 'prepare-schema' : 'bulk-load',
      hint: real.length > 1 ? `${real.length} errors; first shown` : undefined,
    });
  }
  return errors.map((l) => l.replace(/^.*?ERROR:\s*/, '').trim());
}

/** TOC descriptions of the post-data entries `ensureBuilt` checks, longest first, and their kind. */
const CHECKED: Array<[string, 'i' | 'c' | 't']> = [
  ['FK CONSTRAINT', 'c'],
  ['CHECK CONSTRAINT', 'c'],
  ['CONSTRAINT', 'c'],
  ['INDEX', 'i'],
  ['TRIGGER', 't'],
];

/**
 * pg_restore's "already exists" is let pass because a re-run after a crash finds its own objects,
 * but the name may belong to something else created on the target meanwhile. Every index,
 * constraint and trigger of the TOC `lines` must now be on the target, or the build fails naming
 * what is missing (and what pg_restore let pass). Names are compared as the TOC writes them ("schema
 * name" for an index, "schema table name" otherwise, then the owner), so that a source renamed since
 * the dump cannot make a built object look missing; an index must also be on its table (as the
 * source names it now), unless that table is not on the target by that name (renamed since).
 */
async function ensureBuilt(ctx: PhaseContext, lines: string[], passed: string[]) {
  const wanted = lines.flatMap((line) => {
    const m = /^\d+; \d+ ([1-9]\d*) (.*)$/.exec(line);
    const body = m?.[2];
    const checked = body ? CHECKED.find(([d]) => body.startsWith(`${d} `)) : undefined;
    if (!m || !body || !checked) return [];
    const [desc, kind] = checked;
    return [{ oid: Number(m[1]), desc, kind, rest: body.slice(desc.length + 1) }];
  });
  if (!wanted.length) return;
  // The table each index is on, as the source names it now (index oids do not change on a rename).
  const indexTables = new Map(
    (
      await ctx.source.query<{ oid: string; tbl: string }>(
        `SELECT x.indexrelid::int8::text AS oid, n.nspname || ' ' || t.relname AS tbl
           FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace
          WHERE x.indexrelid = ANY($1::oid[])`,
        [wanted.filter((w) => w.kind === 'i').map((w) => w.oid)],
      )
    ).map((r) => [Number(r.oid), r.tbl]),
  );
  // pg_restore --list writes a line break in a name as a space.
  const rows = await ctx.target.query<{ key: string; tbl: string | null }>(
    `WITH ns AS (SELECT n.oid, n.nspname FROM pg_namespace n WHERE ${USER_SCHEMA})
     SELECT 'i ' || translate(n.nspname || ' ' || c.relname, E'\n\r', '  ') AS key,
            translate(tn.nspname || ' ' || t.relname, E'\n\r', '  ') AS tbl
       FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid JOIN ns n ON n.oid = c.relnamespace
       JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
     UNION ALL
     SELECT 'c ' || translate(n.nspname || ' ' || coalesce(t.relname, y.typname) || ' ' || k.conname, E'\n\r', '  '), NULL
       FROM pg_constraint k LEFT JOIN pg_class t ON t.oid = k.conrelid LEFT JOIN pg_type y ON y.oid = k.contypid
       JOIN ns n ON n.oid = coalesce(t.relnamespace, y.typnamespace)
     UNION ALL
     SELECT 't ' || translate(n.nspname || ' ' || t.relname || ' ' || g.tgname, E'\n\r', '  '), NULL
       FROM pg_trigger g JOIN pg_class t ON t.oid = g.tgrelid JOIN ns n ON n.oid = t.relnamespace
     UNION ALL
     SELECT 'r ' || translate(n.nspname || ' ' || t.relname, E'\n\r', '  '), NULL
       FROM pg_class t JOIN ns n ON n.oid = t.relnamespace WHERE t.relkind IN ('r', 'p')`,
    [EXCLUDED_SCHEMAS],
  );
  const present = new Map<string, Set<string>>();
  for (const r of rows) present.set(r.key, (present.get(r.key) ?? new Set()).add(r.tbl ?? ''));
  // "rest" is the name then the owner: the name is found if some prefix ending before a space is present.
  const found = (w: (typeof wanted)[number]) => {
    for (let i = w.rest.lastIndexOf(' '); i > 0; i = w.rest.lastIndexOf(' ', i - 1)) {
      const on = present.get(`${w.kind} ${w.rest.slice(0, i)}`);
      if (!on) continue;
      const table = w.kind === 'i' ? indexTables.get(w.oid) : undefined;
      if (!table || !present.has(`r ${table}`) || on.has(table)) return true;
    }
    return false;
  };
  const missing = wanted.filter((w) => !found(w)).map((w) => `${w.desc} ${w.rest}`);
  if (!missing.length) return;
  throw new SchemaFailedError(
    `indexes, constraints or triggers are missing on the target after pg_restore: ${missing.slice(0, 5).join('; ')}${missing.length > 5 ? `; and ${missing.length - 5} more` : ''} (as pg_restore --list names them: type, schema, [table,] name, owner)${passed.length ? `; pg_restore said: ${passed.slice(0, 3).join('; ')}` : ''}`,
    {
      migrationId: ctx.config.id,
      phase: 'bulk-load',
      hint: 'something created on the target during the migration holds these names: keep everyone else off the target database while pgferry loads it, then start the migration again',
    },
  );
}

/**
 * Did an earlier run's pre-data restore commit? It is one transaction, so one of the source's tables
 * on the target means all of it is. (Something else on the target, say an extension an operator
 * created there after the restore failed, does not count.)
 */
async function preDataLanded(ctx: PhaseContext, existing: string[]): Promise<boolean> {
  const tables = (await listTables(ctx.source)).map(qualified);
  // A source without tables (functions only, say): whatever is on the target has to count.
  if (tables.length === 0) return existing.length > 0;
  const { n } = await ctx.target.one<{ n: number }>(
    'SELECT count(*)::int AS n FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NOT NULL',
    [tables],
  );
  return n > 0;
}

/** Phase "Prepare schema" (pre-data). Idempotent: the marker row records completion. */
export async function prepareSchema(ctx: PhaseContext): Promise<string> {
  const m = await marker(ctx);
  if (m?.pre_data_at) return 'already done: schema restored earlier';
  const existing = await userObjects(ctx.target, 4);
  // Only a target that was empty gets pgferry's marker, and only a marked target is ever emptied by a
  // rollback: whatever the assessment said, a database holding someone's objects is never touched.
  if (!m && existing.length > 0) {
    throw new SchemaFailedError(
      `target database ${ctx.target.database} is not empty (${existing.slice(0, 4).join(', ')}${existing.length > 4 ? ', …' : ''}); pgferry needs an empty target database`,
      {
        migrationId: ctx.config.id,
        phase: 'prepare-schema',
        field: '--target',
        hint: 'create a new empty database on the target and point --target at it',
      },
    );
  }
  // A crash after the single-transaction restore but before the marker update leaves the tables: done,
  // and the dump they came from stays the one post-data is built from.
  const landed = !!m && (await preDataLanded(ctx, existing));
  // Marked first: a migration refused the target (another's) makes nothing there, not even roles.
  await ensureMarker(ctx);
  // The roles are made on the target while pg_dump reads the source (and pg_restore is looked for).
  void findTool('pg_restore', 0).catch(() => {});
  // Both finish before a failure is thrown: no role is made (and recorded) after the phase failed.
  const [createdRoles, dumped] = await Promise.allSettled([
    createRoles(ctx),
    landed ? schemaDump(ctx) : dumpSchema(ctx),
  ]);
  if (createdRoles.status === 'rejected') throw createdRoles.reason;
  if (dumped.status === 'rejected') throw dumped.reason;
  const roles = createdRoles.value;
  const file = dumped.value;
  const markerTable = `${ident(objectNames(ctx.config.id).markerSchema)}.migration`;
  let before: SchemaNames | undefined;
  if (!landed) {
    // What is there before the restore is not its: recorded first, so that a rollback after a restore
    // that landed but was not recorded (a crash in between) drops what it made, and only that.
    before = schemaNames(await schemasAndExtensions(ctx.target));
    await ctx.target.query(`UPDATE ${markerTable} SET restored = $2 WHERE id = $1`, [
      ctx.config.id,
      { schemas: [], extensions: [], before },
    ]);
    await restore(ctx, file, 'pre-data', 1);
  }
  // The schemas and extensions the restore made: the only ones a rollback drops.
  const now = schemaNames(await schemasAndExtensions(ctx.target));
  const made = before ? madeSince(before, now) : now;
  await ctx.target.query(`UPDATE ${markerTable} SET pre_data_at = now(), restored = $2 WHERE id = $1`, [
    ctx.config.id,
    made,
  ]);
  return `schema restored${roles.length ? `; roles created without passwords: ${roles.join(', ')}` : ''}`;
}

/**
 * The post-data section split by table: a table's own indexes and primary-key, unique and
 * exclusion constraints can be built as soon as its rows are in, while other tables are still being
 * copied. Everything else (foreign keys, triggers, rules, policies, partitioned indexes and their
 * ATTACH, comments, statistics) waits for the end.
 */
export interface PostDataPlan {
  /** Every post-data TOC line (`pg_restore --list`). */
  entries: string[];
  /** The lines a table's own indexes and constraints are, keyed by the table's oid on the source. */
  byTable: Map<number, string[]>;
  /**
   * Tables with an index left for the end: ANALYZE gathers an expression index's statistics only
   * once the index exists, so these are analyzed at the end too.
   */
  lateStats: Set<number>;
  /**
   * Foreign keys added NOT VALID after the load instead of restored (which checks every row while
   * the load waits), keyed by TOC line: those checked on the source, between plain tables (a
   * partitioned table takes no NOT VALID foreign key). Catch-up validates them (`finishLoad`).
   */
  foreignKeys: Map<string, DeferredForeignKey & { definition: string }>;
}

export async function planPostData(ctx: PhaseContext): Promise<PostDataPlan> {
  const dump = await schemaDump(ctx);
  const pgRestore = await findTool('pg_restore', 0);
  const listed = await runTool(pgRestore, ['--list', '--section', 'post-data', dump]);
  if (listed.code !== 0)
    throw new SchemaFailedError(`pg_restore --list failed: ${listed.stderr.trim()}`, {
      migrationId: ctx.config.id,
      phase: 'bulk-load',
    });
  // "dumpId; catalog-oid object-oid TYPE schema tag owner": the two oids name the object on the source.
  const entries = listed.stdout
    .split('\n')
    .map((line) => ({ line, m: /^(\d+); (\d+) (\d+) /.exec(line) }))
    .filter((e) => e.m)
    .map((e) => ({ line: e.line, catalog: Number(e.m?.[2]), oid: Number(e.m?.[3]) }));
  const indexes = entries.filter((e) => e.catalog === 1259).map((e) => e.oid);
  const constraints = entries.filter((e) => e.catalog === 2606).map((e) => e.oid);
  // An index whose expression or predicate calls a user-defined function may (if the function is
  // not as immutable as it claims) read other tables, which are loaded only at the end: it waits too.
  const owners = await ctx.source.query<{ catalog: number; oid: string; table_oid: string }>(
    `WITH calls_user_function AS (
       SELECT DISTINCT d.objid AS index_oid FROM pg_depend d
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_proc'::regclass)
     SELECT 1259 AS catalog, x.indexrelid::int8::text AS oid, x.indrelid::int8::text AS table_oid
       FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid
      WHERE c.relkind = 'r' AND x.indexrelid = ANY($1::oid[])
        AND x.indexrelid NOT IN (SELECT index_oid FROM calls_user_function)
     UNION ALL
     SELECT 2606, k.oid::int8::text, k.conrelid::int8::text
       FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
      WHERE c.relkind = 'r' AND k.contype IN ('p', 'u', 'x') AND k.oid = ANY($2::oid[])
        AND k.conindid NOT IN (SELECT index_oid FROM calls_user_function)
     UNION ALL
     SELECT DISTINCT 0, '', x.indrelid::int8::text FROM pg_index x
      WHERE x.indexrelid IN (SELECT index_oid FROM calls_user_function)`,
    [indexes, constraints],
  );
  // (catalog 0: tables with such an index, whose statistics must wait for it.)
  const lateStats = new Set(owners.filter((o) => o.catalog === 0).map((o) => Number(o.table_oid)));
  const tableOf = new Map(owners.map((o) => [`${o.catalog}:${o.oid}`, Number(o.table_oid)]));
  const byTable = new Map<number, string[]>();
  for (const e of entries) {
    const table = tableOf.get(`${e.catalog}:${e.oid}`);
    if (table === undefined) continue;
    byTable.set(table, [...(byTable.get(table) ?? []), e.line]);
  }
  return {
    entries: entries.map((e) => e.line),
    byTable,
    lateStats,
    foreignKeys: await deferrableForeignKeys(ctx, entries),
  };
}

/** `fn` on a source session with search_path pg_catalog, so that definitions read name every table with its schema. */
async function withCatalogSession<T>(ctx: PhaseContext, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = await connectClient(ctx.config.sourceUrl, {
    side: 'source',
    applicationName: objectNames(ctx.config.id).applicationName,
  });
  try {
    await client.query('SET search_path = pg_catalog');
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

async function deferrableForeignKeys(
  ctx: PhaseContext,
  entries: Array<{ line: string; catalog: number; oid: number }>,
): Promise<PostDataPlan['foreignKeys']> {
  const fks = entries.filter((e) => e.catalog === 2606 && / FK CONSTRAINT /.test(e.line));
  if (!fks.length) return new Map();
  return withCatalogSession(ctx, async (client) => {
    const { rows } = await client.query<{
      oid: string;
      table: string;
      name: string;
      definition: string;
      drift: string;
    }>(
      `SELECT k.oid::int8::text AS oid, format('%I.%I', n.nspname, c.relname) AS table, k.conname AS name,
              pg_get_constraintdef(k.oid) AS definition,
              format('foreign key %I on %s', k.conname, format('%s.%s', n.nspname, c.relname)) AS drift
         FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_class r ON r.oid = k.confrelid
        WHERE k.oid = ANY($1::oid[]) AND k.contype = 'f' AND k.convalidated AND c.relkind = 'r' AND r.relkind = 'r'`,
      [fks.map((e) => e.oid)],
    );
    const byOid = new Map(rows.map((r) => [Number(r.oid), r]));
    const out: PostDataPlan['foreignKeys'] = new Map();
    for (const e of fks) {
      const fk = byOid.get(e.oid);
      if (fk) out.set(e.line, { table: fk.table, name: fk.name, definition: fk.definition, drift: fk.drift });
    }
    return out;
  });
}

/**
 * Add foreign keys NOT VALID: at once, whatever the tables hold (the rows were checked on the source).
 * On a session without lock_timeout: the ANALYZE of a table built during the copy may still hold it.
 */
async function addForeignKeysNotValid(ctx: PhaseContext, fks: Array<DeferredForeignKey & { definition: string }>) {
  const client = await connectClient(ctx.config.targetUrl, {
    side: 'target',
    applicationName: objectNames(ctx.config.id).applicationName,
    lockTimeoutMs: 0,
  });
  try {
    for (const fk of fks) {
      const exists = await client.query(
        'SELECT 1 FROM pg_constraint WHERE conrelid = $1::regclass AND conname = $2 AND contype = $3',
        [fk.table, fk.name, 'f'],
      );
      if (exists.rows.length) continue; // a re-run: added (and perhaps validated) already
      await client.query(`ALTER TABLE ONLY ${fk.table} ADD CONSTRAINT ${ident(fk.name)} ${fk.definition} NOT VALID`);
    }
  } finally {
    await client.end().catch(() => {});
  }
}

/** A primary key or unique constraint built as a unique index first, then attached (`USING INDEX`). */
interface KeyByIndex {
  line: string;
  table: string;
  name: string;
  kind: 'PRIMARY KEY' | 'UNIQUE';
  deferrable: string;
  indexDef: string;
}

/**
 * The primary keys and unique constraints of TOC `lines` that can be built as a plain unique index
 * and then attached with `ADD CONSTRAINT … USING INDEX` (a B-tree on plain columns, default
 * operator classes and order, no predicate, no INCLUDE, the default tablespace; not the table's
 * REPLICA IDENTITY USING INDEX or CLUSTER ON index, which pg_dump sets inside the constraint's own TOC
 * entry, so the entry stays with pg_restore and sets them). pg_restore adds a
 * constraint under ACCESS EXCLUSIVE, so it waits for every other index build on its table and then
 * builds alone; as an index it builds beside them (SHARE locks), and attaching it is a catalog change.
 */
async function keysByIndex(ctx: PhaseContext, lines: string[]): Promise<KeyByIndex[]> {
  const oids = new Map<number, string>();
  for (const line of lines) {
    const m = /^\d+; 2606 (\d+) CONSTRAINT /.exec(line);
    if (m) oids.set(Number(m[1]), line);
  }
  if (!oids.size) return [];
  return withCatalogSession(ctx, async (client) => {
    const { rows } = await client.query<{
      oid: string;
      table: string;
      name: string;
      contype: 'p' | 'u';
      deferrable: boolean;
      deferred: boolean;
      indexdef: string;
    }>(
      `SELECT k.oid::int8::text AS oid, format('%I.%I', n.nspname, c.relname) AS table, k.conname AS name,
              k.contype, k.condeferrable AS deferrable, k.condeferred AS deferred, pg_get_indexdef(k.conindid) AS indexdef
         FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_index x ON x.indexrelid = k.conindid JOIN pg_class i ON i.oid = k.conindid
         JOIN pg_am a ON a.oid = i.relam
        WHERE k.oid = ANY($1::oid[]) AND k.contype IN ('p', 'u') AND c.relkind = 'r' AND i.relname = k.conname
          AND a.amname = 'btree' AND x.indisunique AND x.indexprs IS NULL AND x.indpred IS NULL
          AND x.indnkeyatts = x.indnatts AND i.reltablespace = 0 AND 0 = ALL (x.indoption::int2[])
          AND NOT x.indisreplident AND NOT x.indisclustered

          AND NOT EXISTS (SELECT 1 FROM unnest(x.indclass::oid[]) AS oc(oid) JOIN pg_opclass o ON o.oid = oc.oid WHERE NOT o.opcdefault)`,
      [[...oids.keys()]],
    );
    return rows.flatMap((r) => {
      const line = oids.get(Number(r.oid));
      // The definition pg_get_indexdef gives: "CREATE UNIQUE INDEX name ON schema.table USING btree (…)".
      if (!line || !r.indexdef.startsWith('CREATE UNIQUE INDEX ')) return [];
      return [
        {
          line,
          table: r.table,
          name: r.name,
          kind: r.contype === 'p' ? ('PRIMARY KEY' as const) : ('UNIQUE' as const),
          deferrable: r.deferrable ? (r.deferred ? ' DEFERRABLE INITIALLY DEFERRED' : ' DEFERRABLE') : '',
          indexDef: r.indexdef,
        },
      ];
    });
  });
}

/**
 * Build `key`'s unique index, then attach it as the constraint. Idempotent (a re-run finds either).
 * A name taken by something else is let pass as pg_restore lets it ("already exists", returned):
 * `ensureBuilt` then names what is missing.
 */
async function buildKeyByIndex(
  ctx: PhaseContext,
  key: KeyByIndex,
  settings: ReturnType<typeof indexBuildSettings>,
): Promise<string[]> {
  const client = await connectClient(ctx.config.targetUrl, {
    side: 'target',
    applicationName: `${objectNames(ctx.config.id).applicationName}:pg_restore`,
    statementTimeoutMs: 0,
    lockTimeoutMs: 0,
  });
  try {
    for (const [name, value] of Object.entries(settings)) await client.query(`SET ${name} = '${value}'`);
    await client.query('SET search_path = pg_catalog');
    const { rows } = await client.query<{ constraint: boolean; index: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = $1::regclass AND conname = $2) AS constraint,
              EXISTS (SELECT 1 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                       WHERE x.indrelid = $1::regclass AND i.relname = $2) AS index`,
      [key.table, key.name],
    );
    if (rows[0]?.constraint) return []; // an earlier run's (ensureBuilt checks it is there)
    if (!rows[0]?.index) await client.query(key.indexDef);
    await client.query(
      `ALTER TABLE ONLY ${key.table} ADD CONSTRAINT ${ident(key.name)} ${key.kind} USING INDEX ${ident(key.name)}${key.deferrable}`,
    );
    return [];
  } catch (err) {
    const e = err as { code?: string; message?: string };
    if (e.code === '42P07' || e.code === '42710') return [e.message ?? 'already exists'];
    throw new SchemaFailedError(
      `${key.kind} ${key.name} on ${key.table} could not be built on the target: ${e.message ?? String(err)}`,
      { migrationId: ctx.config.id, phase: 'bulk-load', cause: err },
    );
  } finally {
    await client.end().catch(() => {});
  }
}

/** What one table's build reads from the catalogs: asked for ahead, while its rows are still being copied. */
export interface TablePostDataPrep {
  keys: KeyByIndex[];
  limits: IndexBuildLimits;
}

export async function prepareTablePostData(ctx: PhaseContext, lines: string[]): Promise<TablePostDataPrep> {
  const [keys, limits] = await Promise.all([
    keysByIndex(ctx, lines),
    indexBuildLimits(ctx.target, ctx.config.indexMemoryMB),
  ]);
  return { keys, limits };
}

/**
 * One table's own indexes and constraints (lines of `planPostData`), all at once: its primary key
 * and unique constraints as unique indexes beside the other indexes (`keysByIndex`), the rest by
 * pg_restore. Idempotent.
 */
export async function buildTablePostData(
  ctx: PhaseContext,
  tableOid: number,
  lines: string[],
  prep?: TablePostDataPrep,
) {
  const file = join(ctx.artifactDir, DUMP_FILE);
  const { keys, limits } = prep ?? (await prepareTablePostData(ctx, lines));
  const byIndex = new Set(keys.map((k) => k.line));
  const others = lines.filter((l) => !byIndex.has(l));
  // Every build of the table runs at once, sharing the memory of --jobs builds.
  const sessions = Math.min(ctx.config.jobs, others.length) + keys.length;
  const settings = indexBuildSettings(ctx.config.jobs, sessions, limits);
  const [restored, ...built] = await Promise.allSettled([
    others.length
      ? restore(ctx, file, 'post-data', Math.min(ctx.config.jobs, others.length), {
          name: `post-data-${tableOid}`,
          lines: others,
          sessions,
        })
      : Promise.resolve([]),
    ...keys.map((k) => buildKeyByIndex(ctx, k, settings)),
  ]);
  const passed: string[] = [];
  for (const r of [restored, ...built]) {
    if (r?.status === 'rejected') throw r.reason;
    if (r) passed.push(...(r.value ?? []));
  }
  await ensureBuilt(ctx, lines, passed);
}

/** The post-data TOC `lines` by one pg_restore, `--jobs` at a time, then checked (ensureBuilt). Idempotent. */
export async function buildPostDataLines(ctx: PhaseContext, name: string, lines: string[], dump?: string) {
  const file = dump ?? (await schemaDump(ctx));
  await ensureBuilt(
    ctx,
    lines,
    await restore(ctx, file, 'post-data', Math.min(ctx.config.jobs, lines.length), { name, lines }),
  );
}

/**
 * Indexes, constraints and triggers, after the data, `--jobs` at a time; the `built` lines of `plan`
 * (restored during the copy by `buildTablePostData`) are left out. Idempotent.
 */
export async function buildPostData(
  ctx: PhaseContext,
  early?: { plan: PostDataPlan; built: Set<string> },
): Promise<string> {
  const m = await marker(ctx);
  if (m?.post_data_at) return 'already done: indexes and constraints built earlier';
  const dump = await schemaDump(ctx);
  // Every post-data entry not built during the copy (all of them without an early plan).
  const plan = early?.plan ?? (await planPostData(ctx));
  const left = plan.entries.filter((l) => !early?.built.has(l));
  // Foreign keys last, after the indexes they need on the referenced tables, and NOT VALID.
  const deferred = left.filter((l) => plan.foreignKeys.has(l));
  const rest = left.filter((l) => !plan.foreignKeys.has(l));
  if (rest.length > 0) await buildPostDataLines(ctx, 'post-data-rest', rest, dump);
  if (deferred.length > 0) {
    const fks = deferred.map((l) => plan.foreignKeys.get(l) as DeferredForeignKey & { definition: string });
    await addForeignKeysNotValid(ctx, fks);
    await ensureBuilt(ctx, deferred, []);
    // Recorded before the marker says post-data is done: a re-run finds them to validate either way.
    await ctx.update((s) => {
      const known = new Set((s.foreignKeysToValidate ?? []).map((f) => f.drift));
      s.foreignKeysToValidate = [
        ...(s.foreignKeysToValidate ?? []),
        ...fks.filter((f) => !known.has(f.drift)).map(({ table, name, drift }) => ({ table, name, drift })),
      ];
    });
  }
  await ctx.target.query(
    `UPDATE ${ident(objectNames(ctx.config.id).markerSchema)}.migration SET post_data_at = now() WHERE id = $1`,
    [ctx.config.id],
  );
  const fks = plan.entries.filter((l) => plan.foreignKeys.has(l) && !early?.built.has(l)).length;
  return `indexes, constraints and triggers built${fks ? `; ${fks} foreign key(s) added NOT VALID, validated during catch-up` : ''}`;
}
