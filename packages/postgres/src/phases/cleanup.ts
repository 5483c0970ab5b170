/** Clean up: pgferry's subscriptions, slots, publications and marker schema on both sides; report leftovers. */
import { type MigrationState, objectNames } from '@pgferry/core';
import { type Db, ident } from '../db';
import { isFrozen, unfreezeWrites } from '../freeze';
import { dropPublication, dropSlot, dropSubscription } from '../replication';
import type { PhaseContext } from './context';

export async function leftovers(ctx: PhaseContext): Promise<string[]> {
  const prefix = `pgferry_${ctx.config.id}`;
  const found: string[] = [];
  for (const [side, db] of [
    ['source', ctx.source],
    ['target', ctx.target],
  ] as const) {
    for (const r of await db.query<{ n: string }>(
      'SELECT slot_name AS n FROM pg_replication_slots WHERE slot_name = $1 OR slot_name = $2',
      [prefix, `${prefix}_rev`],
    ))
      found.push(`${side} replication slot ${r.n}`);
    for (const r of await db.query<{ n: string }>('SELECT pubname AS n FROM pg_publication WHERE pubname IN ($1, $2)', [
      prefix,
      `${prefix}_rev`,
    ]))
      found.push(`${side} publication ${r.n}`);
    for (const r of await db.query<{ n: string }>(
      'SELECT subname AS n FROM pg_subscription WHERE subname IN ($1, $2)',
      [prefix, `${prefix}_rev`],
    ))
      found.push(`${side} subscription ${r.n}`);
  }
  const marker = await ctx.target.query("SELECT 1 FROM pg_namespace WHERE nspname = 'pgferry'");
  if (marker.length) found.push('target schema pgferry');
  return found;
}

export async function cleanup(ctx: PhaseContext): Promise<string> {
  const n = objectNames(ctx.config.id);
  const removed: string[] = [];
  if (await dropSubscription(ctx.target, n.subscription)) removed.push(`target subscription ${n.subscription}`);
  // (The reverse subscription drops its slot on the target as it goes.)
  removed.push(...(await cleanupSource(ctx.source, ctx.config.id, { keepReverseSlot: false })));
  if (await dropSlot(ctx.target, n.reverseSlot)) removed.push(`target slot ${n.reverseSlot}`);
  if (await dropPublication(ctx.target, n.reversePublication))
    removed.push(`target publication ${n.reversePublication}`);
  // The marker schema goes only when no other migration's marker is in it. Only a marker table that is
  // not there means none: a read that fails (a lock timeout, a lost connection) fails the clean-up.
  const { t } = await ctx.target.one<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [
    `${n.markerSchema}.migration`,
  ]);
  const other = t
    ? await ctx.target.query(`SELECT 1 FROM ${ident(n.markerSchema)}.migration WHERE id <> $1`, [ctx.config.id])
    : [];
  if (other.length === 0) {
    await ctx.target.query(`DROP SCHEMA IF EXISTS ${ident(n.markerSchema)} CASCADE`);
  } else {
    await ctx.target.query(`DELETE FROM ${ident(n.markerSchema)}.migration WHERE id = $1`, [ctx.config.id]);
  }
  // A cutover that froze the source and stopped before its switch (its undo failed, or it was killed in
  // its write gap): the application is on the source, which nothing will unfreeze once this is cleaned
  // up. (A cutover whose switch began is refused before this: it is finished, not undone.)
  const unfrozen = await unfreezeUnswitchedSource(ctx.source, ctx.state);
  if (unfrozen) removed.push(unfrozen);
  // What a failed undo of that cutover left (the freeze, the slot) is gone now: nothing for resume to end.
  if (cutoverUndoCleanedUp(ctx.state))
    await ctx.update((s) => {
      s.undoFailed = undefined;
    });
  // A rollback left the target read-only while pgferry could still switch to it again; that is over now.
  if (ctx.state.rollback?.switchAt && (await isFrozen(ctx.target))) {
    await unfreezeWrites(ctx.target);
    removed.push(`the target's default_transaction_read_only (set by the rollback)`);
  }
  const left = await leftovers(ctx);
  await ctx.update((s) => {
    s.leftovers = left;
  });
  const notes: string[] = [];
  if (!ctx.state.cutover?.switchAt && ctx.state.status !== 'rolled-back' && ctx.state.dataLoadedAt)
    notes.push(
      "the data loaded on the target stays, no longer replicated nor marked as pgferry's (a rollback before the clean-up would have removed it; now drop the target database yourself if it is not wanted)",
    );
  if (ctx.state.cutover?.switchAt && !ctx.state.rollback?.switchAt && (await isFrozen(ctx.source))) {
    notes.push(
      `the source database stays read-only so nothing writes to it by mistake (ALTER DATABASE ${ident(ctx.source.database)} RESET default_transaction_read_only reopens it)`,
    );
  }
  return [
    `removed ${removed.length ? removed.join(', ') : 'nothing (already clean)'}`,
    left.length ? `LEFT BEHIND: ${left.join(', ')}` : 'nothing left behind',
    ...notes,
  ].join('; ');
}

/** Whether what a cutover's failed undo left (a freeze, a slot) is what a clean-up removes: no switch came after it. */
export function cutoverUndoCleanedUp(state: MigrationState): boolean {
  return state.undoFailed?.of === 'cutover' && !state.cutover?.switchAt;
}

/**
 * A source a cutover froze and never switched from (and that was not read-only before it) made
 * writable again: what clean-up removed, said so, or undefined.
 */
export async function unfreezeUnswitchedSource(source: Db, state: MigrationState): Promise<string | undefined> {
  const c = state.cutover;
  if (!c?.freezeAt || c.switchStartedAt || c.switchAt || c.wasFrozen || !(await isFrozen(source))) return undefined;
  await unfreezeWrites(source);
  return `the source's default_transaction_read_only (set by the cutover that did not switch)`;
}

/**
 * The source's side of the clean-up: the reverse subscription, the forward slot (which retains the
 * source's WAL), the publications (the DMS cutover's late-write watch too, if its process died before it
 * dropped it). `keepReverseSlot` for a target that is gone for good (`pgferry cleanup --without-target`):
 * the subscription's slot on the target is left alone, since nothing could reach it. Returns what was removed.
 */
export async function cleanupSource(source: Db, id: string, options: { keepReverseSlot: boolean }): Promise<string[]> {
  const n = objectNames(id);
  const removed: string[] = [];
  if (await dropSubscription(source, n.reverseSubscription, { keepSlot: options.keepReverseSlot }))
    removed.push(`source subscription ${n.reverseSubscription}`);
  if (await dropSlot(source, n.slot)) removed.push(`source slot ${n.slot}`);
  if (await dropPublication(source, n.publication)) removed.push(`source publication ${n.publication}`);
  if (await dropPublication(source, n.watch)) removed.push(`source publication ${n.watch}`);
  return removed;
}

/** What pgferry may have left on a target clean-up could not reach (the target's side of cleanup). */
export function targetObjects(state: MigrationState): string[] {
  const id = state.id;
  const n = objectNames(id);
  // Only what can be there: the forward subscription goes once the switch is finished (a failure after
  // the switch may have left it); the reverse slot is made in the cutover's gap; the reverse publication
  // as replication starts.
  const switchFinished = !!state.cutover?.switchAt && state.failure?.phase !== 'cutover';
  const objects = [
    ...(switchFinished ? [] : [`subscription ${n.subscription}`]),
    ...(state.cutover?.freezeAt ? [`replication slot ${n.reverseSlot}`] : []),
    ...(state.phases['start-replication'] || state.cutover ? [`publication ${n.reversePublication}`] : []),
    `the row of ${n.markerSchema}.migration for ${id} (the schema ${n.markerSchema} when no other migration's row is in it)`,
  ];
  if (state.rolesCreated?.length) objects.push(`the role(s) pgferry created: ${state.rolesCreated.join(', ')}`);
  if (state.rollback?.switchAt) objects.push('the read-only setting the rollback left on the target database');
  // (A rollback before the switch dropped the loaded schema.)
  if (state.dataLoadedAt && !state.cutover?.switchAt && state.status !== 'rolled-back')
    objects.push('the data loaded (drop the target database if it is not wanted)');
  return objects;
}
