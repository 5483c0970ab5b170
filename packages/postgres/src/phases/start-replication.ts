/** Start replication exactly at the slot (copy_data = false): no gap, no duplicate. */
import { objectNames, ReplicationFailedError } from '@pgferry/core';
import { listTables } from '../catalog';
import { sleep } from '../db';
import { applyTuning, createSubscription, ensurePublication, slotExists, subscriptionExists } from '../replication';
import { type PhaseContext, partitionsViaRoot, sourceMajor } from './context';

export async function startReplication(ctx: PhaseContext): Promise<string> {
  const names = objectNames(ctx.config.id);
  if (await subscriptionExists(ctx.target, names.subscription)) {
    await createSubscription(ctx.target, names.subscription, ctx.config.sourceUrl, names.publication, names.slot); // re-enables
    return 'already done: subscription exists (enabled)';
  }
  if (!(await slotExists(ctx.source, names.slot))) {
    throw new ReplicationFailedError(
      `replication slot ${names.slot} is missing on the source, so changes since the copy are not retained`,
      {
        phase: 'start-replication',
        hint: 'roll back (`pgferry rollback`) and migrate again',
      },
    );
  }
  const tuning = await applyTuning(ctx.target, await sourceMajor(ctx), await listTables(ctx.source, { sizes: false }));
  await createSubscription(ctx.target, names.subscription, ctx.config.sourceUrl, names.publication, names.slot, {
    tuning,
  });
  // The reverse publication is made now, outside any write gap (it only names tables; nothing flows yet).
  await ensurePublication(ctx.target, names.reversePublication, await listTables(ctx.target, { sizes: false }), {
    viaRoot: await partitionsViaRoot(ctx),
  });
  // Wait for the apply worker to attach to the slot, so a misconfiguration surfaces here, not later.
  for (let i = 0; i < 100; i++) {
    const [row] = await ctx.source.query<{ active: boolean }>(
      'SELECT active FROM pg_replication_slots WHERE slot_name = $1',
      [names.slot],
    );
    if (row?.active)
      return `subscription ${names.subscription} streaming from slot ${names.slot} at ${ctx.state.slotLsn ?? '?'} (apply: ${tuning.binary ? 'binary' : 'text'}, streaming ${tuning.streaming})`;
    await sleep(100);
  }
  throw new ReplicationFailedError(`subscription ${names.subscription} did not connect to the source within 10 s`, {
    phase: 'start-replication',
    hint: 'the target server must reach the source at the --source URL; see the target server log',
  });
}
