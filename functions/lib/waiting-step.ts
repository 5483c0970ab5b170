/**
 * An event that ends a callback step's wait: find the migration through the correlation item the
 * step filed (`S3#<key>`, `DMS#<task>`), take the step's token (of two duplicate events only one gets
 * it) and complete it. Anything else is ignored with a log line and a result that says why.
 */
import type { MigrationStore, TaskCallbacks, TaskOutput } from '@pgferry/core';
import { PgferryError } from '@pgferry/core';

export type StepOutcome =
  | { action: 'succeeded' | 'failed'; migrationId: string; step: string }
  | { action: 'ignored'; reason: 'unknown' | 'no-waiting-step' | 'token-already-complete'; migrationId?: string };

export interface WaitingStepDeps {
  store: MigrationStore;
  callbacks: TaskCallbacks;
  log(message: string): void;
}

export async function completeWaitingStep(
  deps: WaitingStepDeps,
  what: string,
  key: string,
  step: string,
  result: { output: TaskOutput } | { error: string; cause: string },
): Promise<StepOutcome> {
  const { store, callbacks, log } = deps;
  if (!store.findCorrelation || !store.takeTaskToken || !store.putTaskToken)
    throw new PgferryError('this migration store keeps no correlation items or task tokens', {
      hint: 'deploy with the DynamoDB store',
    });
  const migrationId = await store.findCorrelation(key);
  if (!migrationId) {
    log(`ignored ${what}: no migration waits for ${key}`);
    return { action: 'ignored', reason: 'unknown' };
  }
  const token = await store.takeTaskToken(migrationId, step);
  if (!token) {
    log(`ignored ${what} of migration ${migrationId}: no ${step} step waits on it (a duplicate or late event)`);
    return { action: 'ignored', reason: 'no-waiting-step', migrationId };
  }
  let completed: boolean;
  try {
    completed =
      'output' in result
        ? await callbacks.succeed(token, result.output)
        : await callbacks.fail(token, result.error, result.cause);
  } catch (err) {
    // Step Functions did not answer: the token goes back, so that a redelivery completes it.
    await store.putTaskToken(migrationId, step, token);
    throw err;
  }
  if (!completed) {
    log(`ignored ${what} of migration ${migrationId}: Step Functions no longer waits on its ${step} token`);
    return { action: 'ignored', reason: 'token-already-complete', migrationId };
  }
  const action = 'output' in result ? 'succeeded' : 'failed';
  log(`${action} ${step} of migration ${migrationId} on ${what}`);
  return { action, migrationId, step };
}
