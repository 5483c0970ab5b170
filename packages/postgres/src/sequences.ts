import { PgferryError } from '@pgferry/core';
import { listSequences } from './catalog';
import type { Db } from './db';

/**
 * Copy every sequence's value and is_called (owned by a column or not) from one side to the other in
 * one statement: the receiving side mirrors the sending one, backwards too (a sequence RESTARTed,
 * set lower or cycled on the sending side since an earlier sync). The receiving side takes no writes
 * of its own before its switch (the target until the cutover's, the read-only source until the
 * rollback's), so nothing there is further along than the sending side says.
 * `neverLower`: the receiving side may already take writes (a rollback run again after its switch
 * began): a sequence there is only moved forward, never back below values it may have handed out.
 */
export async function syncSequences(from: Db, to: Db, options: { neverLower?: boolean } = {}): Promise<number> {
  const all = await listSequences(from, { owners: false });
  const unreadable = all.filter((s) => !s.readable);
  if (unreadable.length > 0) {
    throw new PgferryError(
      `cannot read ${unreadable.length} sequence(s) on the ${from.side}: ${unreadable.map((s) => `${s.schema}.${s.name}`).join(', ')}`,
      {
        hint: 'GRANT SELECT on them to the migration role; every sequence must be synced before the target takes writes',
      },
    );
  }
  const seqs = all.filter((s) => s.lastValue !== null);
  if (seqs.length === 0) return 0;
  // One already at the same called value is not set again: after the sync the cutover runs before its
  // freeze, the one inside the write gap writes only what moved since. (pg_sequences.last_value is
  // null for a sequence never called: always set.)
  await to.query(
    `SELECT setval(format('%I.%I', v.schema, v.name)::regclass, v.value, v.called)
       FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[]) AS v(schema, name, value, called)
       LEFT JOIN pg_sequences s ON s.schemaname = v.schema AND s.sequencename = v.name
      WHERE NOT (v.called AND s.last_value IS NOT DISTINCT FROM v.value)
        -- The next value each side would hand out, compared in the sequence's direction.
        AND (NOT $5::bool OR s.last_value IS NULL
             OR sign(s.increment_by) * (v.value::numeric + CASE WHEN v.called THEN s.increment_by ELSE 0 END
                                        - (s.last_value::numeric + s.increment_by)) > 0)`,
    [
      seqs.map((s) => s.schema),
      seqs.map((s) => s.name),
      seqs.map((s) => s.lastValue),
      seqs.map((s) => s.isCalled),
      options.neverLower ?? false,
    ],
  );
  return seqs.length;
}
