import { PgferryError } from '@pgferry/core';
import { listSequences } from './catalog';
import type { Db } from './db';

/**
 * Copy every sequence's value (owned by a column or not) from one side to the other in one statement.
 * Values never move backwards: the target keeps the larger of the two.
 */
export async function syncSequences(from: Db, to: Db): Promise<number> {
  const all = await listSequences(from);
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
  await to.query(
    `SELECT setval(format('%I.%I', v.schema, v.name)::regclass,
                   CASE WHEN s.last_value > v.value THEN s.last_value ELSE v.value END,
                   CASE WHEN s.last_value > v.value THEN true ELSE v.called END)
       FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[]) AS v(schema, name, value, called)
       LEFT JOIN pg_sequences s ON s.schemaname = v.schema AND s.sequencename = v.name`,
    [seqs.map((s) => s.schema), seqs.map((s) => s.name), seqs.map((s) => s.lastValue), seqs.map((s) => s.isCalled)],
  );
  return seqs.length;
}
