/**
 * Task tokens of callback steps completed through Step Functions. A token is completed by whichever
 * of an event, a person or the worker gets there first: the others find it completed already, and
 * that is harmless (false), not an error.
 */
import {
  SendTaskFailureCommand,
  SendTaskHeartbeatCommand,
  SendTaskSuccessCommand,
  SFNClient,
} from '@aws-sdk/client-sfn';
import { type MigrationStore, PgferryError, redactedJson, redactText, type TaskCallbacks } from '@pgferry/core';

/**
 * Deliver a task token taken from the store (`send`: SendTaskSuccess or SendTaskFailure). When Step
 * Functions does not answer (throttled, a network error), the token goes back under `step` and the
 * error is thrown, so that a retry of what took it (an event's redelivery) can deliver it: taken and
 * lost, the step would wait out its timeout.
 */
export async function deliverTakenToken<T>(
  store: Pick<MigrationStore, 'putTaskToken'>,
  migrationId: string,
  step: string,
  token: string,
  send: () => Promise<T>,
): Promise<T> {
  try {
    return await send();
  } catch (err) {
    await store.putTaskToken?.(migrationId, step, token);
    throw err;
  }
}

/** Step Functions' limits on SendTaskFailure's `error` and `cause`, and on a task's output (characters). */
export const SFN_ERROR_MAX = 256;
export const SFN_CAUSE_MAX = 32_768;
export const SFN_OUTPUT_MAX = 262_144;

/** Answers meaning the token was completed already, timed out, or never was one: nothing left to complete. */
const GONE = new Set(['TaskDoesNotExist', 'InvalidToken', 'TaskTimedOut']);

function tokenGone(err: unknown): boolean {
  return err instanceof Error && GONE.has(err.name);
}

/**
 * A heartbeat for a token Step Functions no longer waits on: the step timed out or was completed by
 * someone else, so the work behind it should stop (its result would go nowhere).
 */
export class TaskTokenGoneError extends PgferryError {
  override name = 'TaskTokenGoneError';
}

/** A task output too large for Step Functions: outputs are short summaries and figures, the rest lives in the store. */
export class TaskOutputTooLargeError extends PgferryError {
  override name = 'TaskOutputTooLargeError';
}

/** `text` cut to `max` characters, saying so at its end. */
export function truncate(text: string, max: number): string {
  if (text.length <= max) return text;
  const mark = '… (truncated)';
  return `${text.slice(0, max - mark.length)}${mark}`;
}

export class SfnTaskCallbacks implements TaskCallbacks {
  /**
   * `sfn` is injected by every caller that has one (tests, handlers); without one, a client for the
   * region and credentials of the environment (Lambda, the Fargate worker) is made here, at the edge.
   */
  constructor(private readonly sfn: SFNClient = new SFNClient({})) {}

  async succeed(token: string, output: unknown): Promise<boolean> {
    const json = redactedJson(output ?? {});
    if (json.length > SFN_OUTPUT_MAX)
      throw new TaskOutputTooLargeError(
        `a task output of ${json.length} characters is over Step Functions' limit of ${SFN_OUTPUT_MAX}`,
        { hint: 'keep large results (tables, samples, verify results) in the store and return a summary' },
      );
    return this.complete(() => this.sfn.send(new SendTaskSuccessCommand({ taskToken: token, output: json })));
  }

  async fail(token: string, error: string, cause: string): Promise<boolean> {
    return this.complete(() =>
      this.sfn.send(
        new SendTaskFailureCommand({
          taskToken: token,
          error: truncate(redactText(error), SFN_ERROR_MAX),
          cause: truncate(redactText(cause), SFN_CAUSE_MAX),
        }),
      ),
    );
  }

  async heartbeat(token: string): Promise<void> {
    try {
      await this.sfn.send(new SendTaskHeartbeatCommand({ taskToken: token }));
    } catch (err) {
      if (!tokenGone(err)) throw err;
      throw new TaskTokenGoneError(`Step Functions no longer waits on this task (${(err as Error).name})`, {
        cause: err,
        hint: 'the step timed out or was completed elsewhere; stop the work behind it',
      });
    }
  }

  private async complete(send: () => Promise<unknown>): Promise<boolean> {
    try {
      await send();
      return true;
    } catch (err) {
      if (tokenGone(err)) return false;
      throw err;
    }
  }
}
