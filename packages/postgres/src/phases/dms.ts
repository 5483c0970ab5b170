/**
 * The DMS strategy's PostgreSQL side (strategy `dms`, in AWS only): what the assessment adds, the
 * task's table mappings, change capture resumed after the full load, one gate sample read from the
 * task's CDC latency, and the DMS objects removed by a rollback or a clean-up. The AWS calls are the
 * `DmsReplication` port's (packages/aws); the cutover is in dms-cutover.ts.
 */
import {
  type DmsMappingInput,
  type DmsRef,
  type DmsReplication,
  dmsFindings,
  dmsGate,
  dmsPlanFor,
  LagTimeoutError,
  objectNames,
  PgferryError,
  type TableRef,
} from '@pgferry/core';
import { listTables, type TableInfo } from '../catalog';
import { ensurePublication } from '../replication';
import type { Finding } from './assess';
import { type PhaseContext, partitionsViaRoot } from './context';

/** The port, or the refusal a runtime without DMS gives (the local runtime: dms runs in AWS only). */
export function requireDms(dms: DmsReplication | undefined, migrationId: string): DmsReplication {
  if (dms) return dms;
  throw new PgferryError('strategy dms runs in AWS only: this runtime has no DMS client', {
    field: 'strategy',
    migrationId,
    hint: 'start the migration in the deployed pipeline, or choose --strategy snapshot, native or dump to run it here',
  });
}

/** What DMS would not carry, as assessment findings: its blockers refuse the migration, its warnings are kept. */
export function dmsAssessmentFindings(tables: TableInfo[]): Finding[] {
  return dmsFindings(tables).map((f) => ({
    level: f.severity,
    code: f.code,
    object: f.object,
    message: `${f.message}${f.columns?.length ? ` [${f.columns.join(', ')}]` : ''}`,
    hint: `see ${f.source}`,
  }));
}

/**
 * The task's table mappings: every schema holding a table pgferry migrates, minus the tables of those
 * schemas it leaves out (an extension's own tables, a scheduler's), and partitioned parents (DMS
 * would copy their rows twice, once through the parent and once per partition).
 */
export async function dmsMappings(ctx: PhaseContext): Promise<DmsMappingInput> {
  const tables = await listTables(ctx.source, { sizes: false });
  const schemas = [...new Set(tables.map((t) => t.schema))].sort();
  const listed = new Set(tables.map((t) => `${t.schema}.${t.name}`));
  const all = await ctx.source.query<TableRef>(
    `SELECT n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = ANY ($1) AND c.relkind IN ('r', 'p') ORDER BY 1, 2`,
    [schemas],
  );
  return {
    schemas,
    excluded: all.filter((t) => !listed.has(`${t.schema}.${t.name}`)),
    partitionedParents: tables.filter((t) => t.kind === 'partitioned').map((t) => ({ schema: t.schema, name: t.name })),
  };
}

/** The migration's DMS replication, as "Start the DMS task" recorded it. */
export function dmsRef(ctx: PhaseContext): DmsRef {
  const d = ctx.state.dms;
  if (!d?.arn)
    throw new PgferryError('no DMS task is recorded for this migration', {
      migrationId: ctx.config.id,
      phase: ctx.state.phase,
      hint: 'the DMS task is made by "Start the DMS task"; run the migration from the start',
    });
  return d;
}

/** "Start the DMS task": endpoints and task (or Serverless config) made once, started, and recorded. */
export async function dmsStart(ctx: PhaseContext, dms: DmsReplication): Promise<string> {
  // The databases pgferry is connected to: a config started from a plan names them only in its secrets
  // (its URLs hold placeholders), and DMS's endpoints need them by name.
  const database = async (db: PhaseContext['source']) =>
    (await db.query<{ name: string }>('SELECT current_database() AS name'))[0]!.name;
  const plan = {
    ...dmsPlanFor(ctx.config),
    sourceDatabase: await database(ctx.source),
    targetDatabase: await database(ctx.target),
  };
  const ref = await dms.start(plan, await dmsMappings(ctx));
  await ctx.update((s) => {
    s.dms = {
      ...s.dms,
      arn: ref.arn,
      kind: ref.kind,
      ...(ref.replicationInstanceArn ? { replicationInstanceArn: ref.replicationInstanceArn } : {}),
      ...(ref.replicationConfigIdentifier ? { replicationConfigIdentifier: ref.replicationConfigIdentifier } : {}),
      startedAt: s.dms?.startedAt ?? new Date().toISOString(),
    };
  });
  return `DMS ${ref.kind === 'instance' ? 'task' : 'Serverless replication'} ${ref.arn} ${ref.started ? 'started' : 'already running'}: full load, then change capture`;
}

/**
 * "Start replication" on the DMS path: the task stopped after its full load and the changes cached
 * meanwhile (its settings ask so); change capture resumes where it stopped. The reverse publication is
 * made now, outside any write gap, as on the native path: rollback after the switch is native PostgreSQL.
 */
export async function dmsStartReplication(ctx: PhaseContext, dms: DmsReplication): Promise<string> {
  const ref = dmsRef(ctx);
  await dms.resume(ref);
  await ctx.update((s) => {
    s.dms = { ...s.dms!, resumedAt: new Date().toISOString() };
  });
  const n = objectNames(ctx.config.id);
  await ensurePublication(ctx.target, n.reversePublication, await listTables(ctx.target, { sizes: false }), {
    viaRoot: await partitionsViaRoot(ctx),
  });
  return `DMS change capture resumed on ${ref.arn}; reverse publication ${n.reversePublication} ready`;
}

/** DMS publishes CDC latency once a minute: sampling faster reads the same datapoint again. */
export const DMS_SAMPLE_SECONDS = 30;

/**
 * One gate sample on the DMS path: the task's CDC latency (CloudWatch) under --max-lag-ms, `lagSamples`
 * times in a row. As on the native path (gateStep), a gate still closed `catchUpTimeoutMs` after
 * `startedAt` (when this catch-up began, ms since the epoch) ends in LagTimeoutError: the migration
 * stops resumable, the task keeps replicating.
 */
export async function dmsGateSample(
  ctx: PhaseContext,
  dms: DmsReplication,
  streak: number,
  startedAt = Date.now(),
): Promise<{ ready: boolean; streak: number; waitSeconds: number; summary: string; lagMs: number | null }> {
  const latency = await dms.cdcLatency(dmsRef(ctx));
  const g = dmsGate(latency, streak, ctx.config);
  const lagMs = latency.targetSeconds === undefined ? null : latency.targetSeconds * 1000;
  const summary = g.ready
    ? `caught up: DMS CDC latency ${lagMs} ms, ${g.streak} sample(s) in a row under ${ctx.config.maxLagMs} ms`
    : (g.reason ?? `DMS CDC latency ${lagMs} ms (${g.streak} of ${ctx.config.lagSamples} samples under the limit)`);
  if (!g.ready && ctx.config.catchUpTimeoutMs > 0 && Date.now() - startedAt > ctx.config.catchUpTimeoutMs)
    throw new LagTimeoutError(
      `the cutover gate did not open within ${Math.round(ctx.config.catchUpTimeoutMs / 1000)} s: ${summary}`,
      {
        phase: 'catch-up',
        hint: `the DMS task keeps replicating and nothing was removed; fix the reason above, then resume it with \`pgferry start <plan> --stage <stage> --id ${ctx.config.id} --state-machine-arn <arn>\` (a new execution; its done-checks skip what is done), or \`/pgferry abort ${ctx.config.id}\` to remove the migration`,
      },
    );
  return { ready: g.ready, streak: g.streak, waitSeconds: g.ready ? 0 : DMS_SAMPLE_SECONDS, summary, lagMs };
}

/** The DMS task (or config) stopped and deleted with its endpoints: a rollback before the switch, and clean-up. */
export async function dmsCleanup(ctx: PhaseContext, dms: DmsReplication): Promise<string> {
  const removed = await dms.cleanup(dmsPlanFor(ctx.config), ctx.state.dms?.arn ? ctx.state.dms : undefined);
  if (ctx.state.dms)
    await ctx.update((s) => {
      s.dms = { ...s.dms!, cleanedUpAt: new Date().toISOString() };
    });
  return removed.length ? `DMS: deleted ${removed.join(', ')}` : 'DMS: nothing to delete';
}
