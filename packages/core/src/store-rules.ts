/**
 * What every MigrationStore enforces the same way (the file store locally, DynamoDB in AWS): which
 * ids, correlation keys and step names it takes, that no password reaches the stored state, and the
 * words of the conflicts both report. One contract test suite runs against both stores.
 */
import { MIGRATION_ID } from './config';
import { errorMessage, InvalidInputError, MigrationBusyError, StateConflictError } from './errors';
import type { MigrationListing, MigrationState, MigrationStatus, MigrationStore } from './model';
import { redactText } from './redact';

/** The id of a stored migration names its files and items: anything but the grammar of new ids is refused. */
export function checkMigrationId(id: string): string {
  if (typeof id !== 'string' || !MIGRATION_ID.test(id))
    throw new InvalidInputError(
      `--id "${id}" is not a migration id: 1-24 characters of a-z, 0-9 and _, starting with a letter`,
      { field: '--id', hint: 'run `pgferry status` to list migrations' },
    );
  return id;
}

/** `RDS#<instance>`, `S3#<key>`, `DMS#<task>`: what an event names, so that it finds its migration. */
export const CORRELATION_KEY = /^(RDS|S3|DMS)#\S[\s\S]{0,1023}$/;

export function checkCorrelationKey(key: string): string {
  if (typeof key !== 'string' || !CORRELATION_KEY.test(key))
    throw new InvalidInputError(
      `correlation key "${String(key).slice(0, 80)}" is not RDS#<instance>, S3#<key> or DMS#<task> (at most 1024 characters after the #)`,
      { field: 'correlation key' },
    );
  return key;
}

/** A callback step's name (the task table's, e.g. `provisionTarget`), as a token is filed under it. */
export const TASK_STEP = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;

export function checkTaskStep(step: string): string {
  if (typeof step !== 'string' || !TASK_STEP.test(step))
    throw new InvalidInputError(
      `task step "${String(step).slice(0, 80)}" is not a step name: 1-64 letters, digits, _ or -, starting with a letter`,
      { field: 'step' },
    );
  return step;
}

export function checkTaskToken(token: string): string {
  // Step Functions task tokens are at most 1024 characters.
  if (typeof token !== 'string' || token.length === 0 || token.length > 1024)
    throw new InvalidInputError('a task token is 1-1024 characters', { field: 'token' });
  return token;
}

/** A migration in one of these is over: its correlation keys may be taken by another migration. */
export const FINISHED_STATUSES: readonly MigrationStatus[] = ['completed', 'rolled-back', 'cleaned-up'];

/** The path (`config.sourceUrl`, `events[3].message`) of the first string in `value` that holds a password. */
export function passwordPath(value: unknown, path = 'state'): string | undefined {
  if (typeof value === 'string') return redactText(value) === value ? undefined : path;
  if (Array.isArray(value)) {
    for (const [i, v] of value.entries()) {
      const found = passwordPath(v, `${path}[${i}]`);
      if (found) return found;
    }
    return undefined;
  }
  if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      const found = passwordPath(v, `${path}.${k}`);
      if (found) return found;
    }
  }
  return undefined;
}

/**
 * A new migration's state must carry no password: those go to the secret store, and the state keeps
 * the URLs redacted. Refused rather than redacted here: a caller that put one there has a bug.
 */
export function refuseSecretsInState(state: MigrationState): void {
  const path = passwordPath(state);
  if (path)
    throw new InvalidInputError(
      `${path} of migration ${state.id} holds a password; the state is stored in the clear, passwords only in the secret store`,
      {
        field: path,
        migrationId: state.id,
        hint: 'pass the URL with its password as the migration secrets, and put it in the state with redactUrl()',
      },
    );
}

export function alreadyExistsError(id: string, where: string): InvalidInputError {
  // Invalid input, not a conflict: trying again can never work.
  return new InvalidInputError(`--id ${id}: migration ${id} already exists in ${where}`, {
    field: '--id',
    hint: `choose another --id, or continue that one with \`pgferry resume --id ${id}\``,
  });
}

export function versionConflictError(id: string, stored: number, expected: number): StateConflictError {
  return new StateConflictError(
    `migration ${id} was changed by another process (version ${stored}, expected ${expected})`,
    { hint: 'another pgferry command is working on this migration; wait for it or re-run your command' },
  );
}

/** Another process holds migration `id` (its claim or lease): `holder` says who and since when. */
export function claimedError(id: string, holder: string, release: string): MigrationBusyError {
  return new MigrationBusyError(`migration ${id} is being worked on by another pgferry process (${holder})`, {
    field: '--id',
    hint: `wait for it to finish, or stop it (Ctrl-C) first; \`pgferry status --id ${id}\` shows where it is. ${release}`,
  });
}

/** A correlation key that names another migration still going on. */
export function correlationTakenError(key: string, owner: string, id: string): StateConflictError {
  return new StateConflictError(
    `${key} belongs to migration ${owner}, which is not over; migration ${id} cannot take it`,
    {
      field: 'correlation key',
      migrationId: id,
      hint: `finish, roll back or clean up migration ${owner} first, or give migration ${id} another ${key.split('#')[0]} resource`,
    },
  );
}

/** `ids` read with `get`: the readable ones in creation order, the others named with what is wrong. */
export async function readListing(
  ids: string[],
  get: (id: string) => Promise<MigrationState>,
): Promise<MigrationListing> {
  const listing: MigrationListing = { migrations: [], unreadable: [] };
  for (const id of ids) {
    await get(id).then(
      (s) => listing.migrations.push(s),
      (err) => listing.unreadable.push({ id, problem: errorMessage(err) }),
    );
  }
  listing.migrations.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  return listing;
}

/**
 * Re-read migration `id`, change it, and write it with the version read (optimistic locking): a write
 * that lost to another writer (StateConflictError) is tried again on the state as it now is, at most
 * `attempts` times in all. `change` returning false writes nothing (there is nothing to change). A
 * migration that is gone throws its MigrationNotFoundError, or with `ifGone: 'skip'` changes nothing.
 */
export async function updateMigration(
  store: Pick<MigrationStore, 'get' | 'put'>,
  id: string,
  change: (state: MigrationState) => boolean | undefined,
  options: { attempts?: number; ifGone?: 'throw' | 'skip' } = {},
): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const state = await store.get(id).catch((err: Error) => {
      if (options.ifGone === 'skip' && err.name === 'MigrationNotFoundError') return undefined;
      throw err;
    });
    if (!state || change(state) === false) return;
    try {
      await store.put(state);
      return;
    } catch (err) {
      if ((err as Error).name !== 'StateConflictError' || attempt >= (options.attempts ?? 5)) throw err;
    }
  }
}
