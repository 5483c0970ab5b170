/**
 * Roll back. Before cutover: remove everything pgferry created (subscription, slot, publication, the
 * loaded schema on the target) and make sure the source is writable. After cutover: freeze the target,
 * drain the reverse stream, sync sequences back, switch back, unfreeze the source.
 */
import { performance } from 'node:perf_hooks';
import {
  DEFAULTS,
  DrainTimeoutError,
  errorMessage,
  objectNames,
  RollbackFailedError,
  type SwitchRestore,
} from '@pgferry/core';
import {
  EXCLUDED_SCHEMAS,
  listTables,
  madeSince,
  type SchemaNames,
  schemaNames,
  schemasAndExtensions,
  USER_SCHEMA,
} from '../catalog';
import { critical, ROLLBACK_GAP } from '../critical';
import { type Db, ident, literal, qualified } from '../db';
import { currentLsn, freezeWrites, isFrozen, unfreezeWrites, waitConfirmed, waitPreparedTransactions } from '../freeze';
import { describeDrainForecast, forecastDrain } from '../lag';
import { dropPublication, dropSlot, dropSubscription, slotExists, subscriptionExists } from '../replication';
import { syncSequences } from '../sequences';
import { readSwitchFile, switchConnection } from '../switch';
import { unreplicatedTables } from './catch-up';
import type { PhaseContext } from './context';
import { settleSwitch, withTimeout } from './cutover';
import { runUndo, type UndoStep } from './undo';

/**
 * Drop what the schema restore created on the target, only if pgferry's marker says it made it.
 * `keptLoad`: nothing of the load was dropped, and why.
 */
async function dropLoadedSchema(ctx: PhaseContext): Promise<{ ours: boolean; kept: string[]; keptLoad?: string }> {
  const n = objectNames(ctx.config.id);
  const { t } = await ctx.target.one<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [
    `${n.markerSchema}.migration`,
  ]);
  if (!t) return { ours: false, kept: [] };
  // (A marker table of an earlier pgferry has no public_schema: to_jsonb of the row reads it as absent.)
  const [mine] = await ctx.target.query<{
    public_schema: PublicSchema | null;
    /** `before`: set just before the restore, until it is recorded as done: what the target had then. */
    restored: (SchemaNames & { before?: SchemaNames }) | null;
    done: boolean;
  }>(
    `SELECT to_jsonb(m) -> 'public_schema' AS public_schema, to_jsonb(m) -> 'restored' AS restored,
            m.pre_data_at IS NOT NULL AS done
       FROM ${ident(n.markerSchema)}.migration m WHERE id = $1`,
    [ctx.config.id],
  );
  if (!mine) return { ours: false, kept: [] };
  // Marked, but the restore never began (the dump or the roles failed): nothing on the target is
  // pgferry's but its marker, not even `public`.
  if (!mine.done && mine.restored && !mine.restored.before) {
    await ctx.target.query(`DROP SCHEMA IF EXISTS ${ident(n.markerSchema)} CASCADE`);
    return { ours: true, kept: [] };
  }
  // The target was empty when assessed (a blocker otherwise). The schemas and extensions the restore
  // made are recorded; one someone created since is not pgferry's to drop, and is named instead.
  // (A marker of an earlier pgferry recorded nothing: everything on the target counts as its own.)
  // (The marker schema is not among them: it goes last, so a rollback stopped half way finds it.)
  const present = await schemasAndExtensions(ctx.target);
  const { schemas, extensions } = present;
  // A restore begun and not recorded as done (it may have landed): what was not there before it is its.
  const begun = mine.restored?.before;
  const restored = begun ? madeSince(begun, schemaNames(present)) : mine.restored;
  // A table someone made on the target since, in public or in a schema the restore made: nothing of the
  // load is dropped then (DROP SCHEMA … CASCADE took such a table silently), since that table may also
  // use a type, a default or a foreign key in another of those schemas, whose CASCADE would take its
  // columns. pgferry's own are the source's tables (as loaded, or as the source has them now).
  const ours = new Set(
    [...(ctx.state.tables ?? []), ...(await listTables(ctx.source, { sizes: false }))].map((t) =>
      JSON.stringify([t.schema, t.name]),
    ),
  );
  const dropping = ['public', ...schemas.filter((x) => !restored || restored.schemas.includes(x))];
  const strangers = (await listTables(ctx.target, { sizes: false }))
    .filter((t) => dropping.includes(t.schema) && !ours.has(JSON.stringify([t.schema, t.name])))
    .map(qualified);
  const keptSchemas = schemas.filter((x) => restored && !restored.schemas.includes(x));
  // An extension someone created in a schema that goes (public, or one the restore made) goes with it.
  const kept = [
    ...keptSchemas.map((x) => `schema ${x}`),
    ...extensions
      .filter((x) => restored && !restored.extensions.includes(x.name) && keptSchemas.includes(x.schema))
      .map((x) => `extension ${x.name}`),
  ];
  if (!strangers.length) {
    for (const s of schemas.filter((x) => !restored || restored.schemas.includes(x)))
      await ctx.target.query(`DROP SCHEMA ${ident(s)} CASCADE`);
    for (const e of extensions.filter((x) => !restored || restored.extensions.includes(x.name)))
      await ctx.target.query(`DROP EXTENSION IF EXISTS ${ident(e.name)} CASCADE`);
    const major = (
      await ctx.target.one<{ v: number }>("SELECT current_setting('server_version_num')::int / 10000 AS v")
    ).v;
    await ctx.target.query('DROP SCHEMA IF EXISTS public CASCADE');
    await restorePublicSchema(ctx, mine.public_schema, major);
  }
  await ctx.target.query(`DROP SCHEMA IF EXISTS ${ident(n.markerSchema)} CASCADE`);
  const keptLoad = strangers.length
    ? `everything pgferry loaded on the target (schemas ${dropping.join(', ')}), since ${strangers.join(', ')} (made on the target since the migration began; not pgferry's) may depend on it: drop what you do not want yourself`
    : undefined;
  return { ours: true, kept, keptLoad };
}

/** What the target's schema `public` was like before pgferry restored into it (see ensureMarker). */
interface PublicSchema {
  exists: boolean;
  owner?: string;
  /** aclitem[] as text; null: the default privileges. */
  acl?: string[] | null;
  comment?: string | null;
}

/** Put `public` back as the marker recorded it, or, for a marker that recorded nothing, as CREATE DATABASE makes it. */
async function restorePublicSchema(ctx: PhaseContext, was: PublicSchema | null, major: number) {
  const db = ctx.target;
  if (!was) {
    await db.query('CREATE SCHEMA public');
    if (major >= 15)
      await db.query('ALTER SCHEMA public OWNER TO pg_database_owner; GRANT USAGE ON SCHEMA public TO PUBLIC');
    else await db.query('GRANT ALL ON SCHEMA public TO PUBLIC');
    return;
  }
  if (!was.exists) return;
  await db.query('CREATE SCHEMA public');
  if (was.owner) await db.query(`ALTER SCHEMA public OWNER TO ${ident(was.owner)}`);
  if (was.acl) {
    // Start from no privileges at all, then grant exactly the recorded ones (as the owner grants them).
    await db.query(`REVOKE ALL ON SCHEMA public FROM PUBLIC`);
    if (was.owner) await db.query(`REVOKE ALL ON SCHEMA public FROM ${ident(was.owner)}`);
    const grants = await db.query<{ grantee: string | null; privilege: string; grantable: boolean }>(
      `SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE a.grantee::regrole::text END AS grantee,
              a.privilege_type AS privilege, a.is_grantable AS grantable
         FROM unnest($1::text[]::aclitem[]) AS i, LATERAL aclexplode(ARRAY[i]) AS a`,
      [was.acl],
    );
    // (regrole's text is already a quoted identifier; a schema has only these two privileges.)
    for (const g of grants.filter((x) => x.privilege === 'CREATE' || x.privilege === 'USAGE'))
      await db.query(
        `GRANT ${g.privilege} ON SCHEMA public TO ${g.grantee ?? 'PUBLIC'}${g.grantable ? ' WITH GRANT OPTION' : ''}`,
      );
  }
  await db.query(`COMMENT ON SCHEMA public IS ${was.comment == null ? 'NULL' : literal(was.comment)}`);
}

async function beforeCutover(ctx: PhaseContext): Promise<string> {
  const n = objectNames(ctx.config.id);
  const done: string[] = [];
  if (await dropSubscription(ctx.target, n.subscription, { keepSlot: true }))
    done.push(`target subscription ${n.subscription}`);
  // Reverse replication a cutover prepared, or began in a write gap it did not finish.
  if (await dropSubscription(ctx.source, n.reverseSubscription, { keepSlot: true }))
    done.push(`source subscription ${n.reverseSubscription}`);
  if (await dropSlot(ctx.target, n.reverseSlot)) done.push(`target slot ${n.reverseSlot}`);
  if (await dropSlot(ctx.source, n.slot)) done.push(`source slot ${n.slot}`);
  if (await dropPublication(ctx.source, n.publication)) done.push(`source publication ${n.publication}`);
  if (await dropPublication(ctx.target, n.reversePublication)) done.push(`target publication ${n.reversePublication}`);
  if (await dropPublication(ctx.source, n.watch)) done.push(`source publication ${n.watch}`);
  // Only a freeze this migration's cutover set (its breadcrumb says so): a source read-only before it
  // (another migration's cutover made it so, and reverse replication still applies into it) stays so.
  const c = ctx.state.cutover;
  if (c?.freezeAt && !c.wasFrozen && (await isFrozen(ctx.source))) {
    await unfreezeWrites(ctx.source);
    done.push('source unfrozen');
  }
  if (ctx.state.undoFailed)
    await ctx.update((s) => {
      s.undoFailed = undefined; // what a failed undo of the cutover left is removed above
    });
  const loaded = await dropLoadedSchema(ctx);
  if (loaded.ours)
    done.push(
      loaded.keptLoad
        ? 'nothing of the schema and data loaded on the target (kept, below)'
        : 'schema and data loaded on the target',
    );
  // (DROP OWNED would take what is kept: the roles' objects there go only with a target emptied.)
  const roles = await dropCreatedRoles(ctx, loaded.ours && !loaded.keptLoad);
  if (roles.dropped.length) done.push(`target roles ${roles.dropped.join(', ')}`);
  const summary = done.length ? `removed ${done.join(', ')}` : 'nothing to remove';
  const kept = [
    ...loaded.kept.map((k) => `${k} (created on the target since the migration began; not pgferry's)`),
    ...(loaded.keptLoad ? [loaded.keptLoad] : []),
    ...roles.kept,
  ];
  return kept.length ? `${summary}; kept ${kept.join('; ')}` : summary;
}

/**
 * Roles are cluster-wide: pgferry drops the ones it created only once nothing but the (now emptied)
 * target database refers to them. A role someone has since used elsewhere stays, named.
 */
async function dropCreatedRoles(
  ctx: PhaseContext,
  targetIsOurs: boolean,
): Promise<{ dropped: string[]; kept: string[] }> {
  const dropped: string[] = [];
  const kept: string[] = [];
  for (const role of ctx.state.rolesCreated ?? []) {
    const exists = await ctx.target.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role]);
    if (exists.length === 0) {
      dropped.push(role);
      continue;
    }
    try {
      // What is left of it in a target database pgferry filled (default privileges) goes with it.
      if (targetIsOurs) await ctx.target.query(`DROP OWNED BY ${ident(role)}`);
      await ctx.target.query(`DROP ROLE ${ident(role)}`);
      dropped.push(role);
    } catch (err) {
      kept.push(`role ${role} (${err instanceof Error ? err.message : String(err)})`);
    }
  }
  await ctx.update((s) => {
    s.rolesCreated = (s.rolesCreated ?? []).filter((r) => !dropped.includes(r));
  });
  return { dropped, kept };
}

/** The application's tables on `db` (what a new one is told from, inside the gap). */
async function tableOids(db: Db): Promise<number[]> {
  const rows = await db.query<{ oid: number }>(
    `SELECT c.oid::int AS oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND ${USER_SCHEMA}`,
    [EXCLUDED_SCHEMAS],
  );
  return rows.map((r) => r.oid);
}

async function afterCutover(ctx: PhaseContext): Promise<string> {
  const n = objectNames(ctx.config.id);
  if (ctx.state.rollback?.switchAt) {
    await finish(ctx);
    return `already done: switched back at ${ctx.state.rollback.switchAt}`;
  }
  if (
    !(await subscriptionExists(ctx.source, n.reverseSubscription)) ||
    !(await slotExists(ctx.target, n.reverseSlot))
  ) {
    throw new RollbackFailedError(
      'reverse replication is gone, so switching back would lose the writes made on the target',
      {
        phase: 'rollback',
        hint: 'the application stays on the target; compare the databases before moving back by hand',
      },
    );
  }
  // A rollback interrupted after it stopped the reverse stream would otherwise wait on it forever.
  await ctx.source.query(`ALTER SUBSCRIPTION ${ident(n.reverseSubscription)} ENABLE`);
  // An earlier attempt that began to switch back (the switch file may name the source): the
  // application may already write to the source, so no sequence there may go backwards.
  const earlier = ctx.state.rollback;
  const sourceMayWrite =
    !!earlier?.switchStartedAt ||
    (!!ctx.config.switchFile && readSwitchFile(ctx.config.switchFile) === ctx.config.sourceUrl);
  const seqOptions = { neverLower: sourceMayWrite };
  // Sequences synced once outside the gap: the sync inside it then sets only those that moved since.
  await syncSequences(ctx.target, ctx.source, seqOptions);
  // As the cutover: the target is frozen only when the reverse drain fits the budget, predicted from a
  // catch-up just now. A rollback that began its write gap before (killed in it) finishes whatever the lag.
  const fresh = !earlier?.freezeAt;
  if (fresh) {
    // A table made on the target since the cutover (a deploy's migration, a new partition from a source
    // older than 13) is not in the reverse publication: switching back would leave its rows behind.
    // (The freeze then stops DDL too: a read-only transaction cannot create a table.)
    const unreplicated = await unreplicatedTables(ctx, 'reverse');
    if (unreplicated.length)
      throw new RollbackFailedError(`switching back would leave rows behind: ${unreplicated.join('; ')}`, {
        phase: 'rollback',
        hint: `nothing was frozen and the application stays on the target; do the above, then run \`pgferry rollback --id ${ctx.config.id}\` again`,
      });
    const f = await forecastDrain(
      ctx.target,
      n.reverseSlot,
      Math.min(ctx.config.drainTimeoutMs, Math.max(ctx.config.maxDrainMs * 5, 1000)),
    );
    if (!f.caughtUp || f.predictedMs > ctx.config.maxDrainMs)
      throw new DrainTimeoutError(
        `not freezing the target: the reverse drain is predicted at ${f.predictedMs} ms, over the budget of ${ctx.config.maxDrainMs} ms (${describeDrainForecast(f, 'the source')}${f.caughtUp ? '' : '; it did not catch up with the target'})`,
        {
          phase: 'rollback',
          hint: `nothing was frozen and the application stays on the target; run \`pgferry rollback --id ${ctx.config.id}\` again once reverse lag is low (\`pgferry status\` shows it), or raise --max-drain-ms to allow a longer write gap`,
        },
      );
  }
  // Recorded before the freeze: a rollback killed in its write gap shows in status, and resume refuses
  // to pretend the application is on the target; running the rollback again finishes it. So is whether
  // the target was read-only before (then an undo leaves it so); an earlier attempt's answer stands.
  const wasFrozen = earlier?.freezeAt ? earlier.wasFrozen : await isFrozen(ctx.target);
  const freezeAt = new Date();
  await ctx.update((s) => {
    s.rollback = {
      freezeAt: freezeAt.toISOString(),
      direction: 'reverse',
      wasFrozen,
      switchStartedAt: earlier?.switchStartedAt,
    };
  });
  const command = `pgferry rollback --id ${ctx.config.id}`;
  // An earlier attempt began to switch back (the source was unfrozen, the switch file or command may
  // have moved the application): undoing toward the target would leave both sides writable with the
  // application on either. A failure now undoes nothing; the breadcrumb stays and a run again finishes.
  const switching = !!earlier?.switchStartedAt;
  const notUndone = (what: string, err: unknown) =>
    new RollbackFailedError(
      `${what}: ${errorMessage(err)}; not undone: an earlier attempt of this rollback began to switch back, so the application may already write to the source (which stays writable); the target stays read-only`,
      {
        cause: err,
        phase: 'rollback',
        hint: `fix the cause, then run \`${command}\` again: it finishes the switch back`,
      },
    );
  const tablesBefore = new Set(await tableOids(ctx.target));
  const unfreezeTarget: UndoStep[] = wasFrozen ? [] : [['unfreeze the target', () => unfreezeWrites(ctx.target)]];
  // From the freeze of the target until the switch back is recorded, Ctrl-C waits (critical.ts).
  const { gap, sequences, restored } = await critical(async () => {
    const t0 = performance.now();
    let freeze: Awaited<ReturnType<typeof freezeWrites>>;
    let lsn: string;
    try {
      // (Run again after the switch back began: the target stays frozen whatever its sessions do.)
      freeze = await freezeWrites(ctx.target, { preparedOrphanMs: ctx.config.preparedOrphanMs, refreeze: switching });
      // The application's prepared transactions on the target commit (read-only or not) before the LSN.
      await waitPreparedTransactions(ctx.target, ctx.config.maxPreparedWaitMs);
      lsn = await currentLsn(ctx.target);
    } catch (err) {
      if (switching) throw notUndone('the write freeze of the target failed', err);
      await runUndo(ctx, 'rollback', unfreezeTarget, { cause: err, command });
      throw new RollbackFailedError(
        `the write freeze of the target failed; the target was unfrozen and the application stays on it: ${errorMessage(err)}`,
        {
          cause: err,
          phase: 'rollback',
          hint: `fix the cause, then run \`${command}\` again`,
        },
      );
    }
    // A table made on the target between the check before the freeze and the freeze (none can be made
    // now: a read-only transaction cannot): one query on the catalog, and the full check only if so. A
    // rollback run again after one killed in its gap had no check before the freeze: the full one, now.
    const made = await tableOids(ctx.target).then(
      async (now) =>
        !fresh || now.some((oid) => !tablesBefore.has(oid)) ? await unreplicatedTables(ctx, 'reverse') : [],
      (err) => [`the check for tables made on the target failed (${errorMessage(err)})`],
    );
    if (made.length) {
      if (switching) throw notUndone('switching back would leave rows behind', new Error(made.join('; ')));
      const err = new RollbackFailedError(
        `switching back would leave rows behind: ${made.join('; ')}; the target was unfrozen and the application stays on it`,
        { phase: 'rollback', hint: `do the above, then run \`${command}\` again` },
      );
      await runUndo(ctx, 'rollback', unfreezeTarget, { cause: err, command });
      throw err;
    }
    // Inside the gap the budget holds as in the cutover; an interrupted rollback's second try waits longer.
    const drainMs = fresh ? ctx.config.maxDrainMs : ctx.config.drainTimeoutMs;
    if (!(await waitConfirmed(ctx.target, n.reverseSlot, lsn, drainMs))) {
      const message = `the source did not confirm ${lsn} from the reverse stream within ${drainMs} ms`;
      if (switching) throw notUndone('the reverse drain did not finish', new DrainTimeoutError(message));
      await runUndo(ctx, 'rollback', unfreezeTarget, { cause: new DrainTimeoutError(message), command });
      throw new DrainTimeoutError(`${message}; the target was unfrozen`, {
        phase: 'rollback',
        hint: 'run `pgferry rollback` again once reverse lag is low',
      });
    }
    // Until the switch back, a failure is undone: the application stays on the target, which writes again.
    let sourceUnfrozen = false;
    const undo = async (err: unknown, what: string) => {
      if (switching) return notUndone(what, err);
      await runUndo(
        ctx,
        'rollback',
        [
          // The same freeze as the cutover's, sessions ended: one that connected to the source while it
          // was writable could otherwise write there while the application writes to the target.
          ...(sourceUnfrozen
            ? ([['freeze the source again', () => freezeWrites(ctx.source, { refreeze: true })]] as UndoStep[])
            : []),
          [
            'resume reverse replication',
            () => ctx.source.query(`ALTER SUBSCRIPTION ${ident(n.reverseSubscription)} ENABLE`),
          ],
          ...unfreezeTarget,
        ],
        { cause: err, command },
      );
      return new RollbackFailedError(
        `${what}; the rollback was undone: the application stays on the target, which takes writes again, and reverse replication goes on: ${errorMessage(err)}`,
        {
          cause: err,
          phase: 'rollback',
          hint: `fix the cause, then run \`${command}\` again`,
        },
      );
    };
    let sequences: number;
    try {
      sequences = await syncSequences(ctx.target, ctx.source, seqOptions);
      await ctx.source.query(`ALTER SUBSCRIPTION ${ident(n.reverseSubscription)} DISABLE`);
      sourceUnfrozen = true;
      await unfreezeWrites(ctx.source);
      // From here a rollback run again must not move the source's sequences back (see sourceMayWrite).
      await ctx.update((s) => {
        s.rollback = { ...s.rollback, switchStartedAt: new Date().toISOString() };
      });
    } catch (err) {
      throw await undo(err, 'the rollback failed before switching back');
    }
    try {
      await switchConnection({
        switchFile: ctx.config.switchFile,
        onSwitch: ctx.config.onSwitch,
        migrationId: ctx.config.id,
        direction: 'reverse',
        activeUrl: ctx.config.sourceUrl,
        previousUrl: ctx.config.targetUrl,
        sourceUrl: ctx.config.sourceUrl,
        targetUrl: ctx.config.targetUrl,
      });
    } catch (err) {
      // Once the switch file names the source, the application may write there: not undone.
      if (ctx.config.switchFile && readSwitchFile(ctx.config.switchFile) === ctx.config.sourceUrl)
        throw new RollbackFailedError(
          `the switch back did not finish: ${errorMessage(err)}; the switch file already names the source, so it is not undone (the target stays read-only)`,
          {
            cause: err,
            phase: 'rollback',
            field: '--on-switch',
            hint: `fix the --on-switch command, then \`${command} --on-switch '<the fixed command>'\` switches back again and finishes`,
          },
        );
      throw await undo(err, 'the switch back failed');
    }
    // Returns once the change is accepted: its propagation is waited for after the gap (below).
    const restored = await restoreAwsConnection(ctx, command);
    const gap = Math.round(performance.now() - t0);
    await ctx.update((s) => {
      s.rollback = {
        freezeAt: freezeAt.toISOString(),
        freezeLsn: lsn,
        switchStartedAt: s.rollback?.switchStartedAt,
        switchAt: new Date(freezeAt.getTime() + gap).toISOString(),
        writeGapMs: gap,
        sessionsEnded: freeze.sessionsEnded,
        sequencesSynced: sequences,
        direction: 'reverse',
        wasFrozen,
      };
      s.undoFailed = undefined;
    });
    return { gap, sequences, restored };
  }, ROLLBACK_GAP);
  // After the gap, as the cutover's: the put-back's propagation (Route 53 INSYNC), bounded, never an undo.
  if (restored) await settleSwitch(ctx, restored);
  await finish(ctx);
  return `switched back to the source: write gap ${gap} ms, ${sequences} sequence(s) synced${restored ? `; ${restored.summary}` : ''}; the target is left read-only`;
}

/**
 * The AWS connection switch put back as the cutover's record says (its previous value, exactly).
 * Idempotent. A failure may have moved the application back already, so it is not undone: the target
 * stays read-only, and the rollback run again restores and finishes.
 */
async function restoreAwsConnection(ctx: PhaseContext, command: string): Promise<SwitchRestore | undefined> {
  const sw = ctx.connectionSwitch;
  const record = ctx.state.cutover?.switchRecord;
  if (!sw || !record) return undefined;
  try {
    const r = await withTimeout(
      sw.restore(record),
      DEFAULTS.connectionSwitchTimeoutMs,
      `${sw.resource} did not answer within ${DEFAULTS.connectionSwitchTimeoutMs} ms`,
    );
    ctx.log(r.summary);
    return r;
  } catch (err) {
    throw new RollbackFailedError(
      `the connection switch of ${sw.resource} was not put back: ${errorMessage(err)}; it may already point the application at the source, so the rollback is not undone (the target stays read-only)`,
      {
        cause: err,
        phase: 'rollback',
        field: 'switch',
        hint: `fix what stopped it (its permissions, the resource), then \`${command}\` puts it back and finishes`,
      },
    );
  }
}

async function finish(ctx: PhaseContext) {
  const n = objectNames(ctx.config.id);
  await dropSubscription(ctx.source, n.reverseSubscription);
  await dropSlot(ctx.target, n.reverseSlot);
  await dropPublication(ctx.target, n.reversePublication);
}

export async function rollback(ctx: PhaseContext): Promise<string> {
  const c = ctx.state.cutover;
  if (c?.switchAt) return afterCutover(ctx);
  // The switch began and was not recorded as done: the application may already write to the target.
  // Emptying the target (the rollback before cutover) would lose those writes: finish the switch first.
  if (c?.switchStartedAt)
    throw new RollbackFailedError(
      `a cutover stopped while switching the application to the target (at ${c.switchStartedAt}): the application may already write there, so the target is not emptied`,
      {
        phase: 'rollback',
        hint: `run \`pgferry resume --id ${ctx.config.id}\` to finish the switch, then \`pgferry rollback --id ${ctx.config.id}\` to switch back losing nothing`,
      },
    );
  return beforeCutover(ctx);
}
