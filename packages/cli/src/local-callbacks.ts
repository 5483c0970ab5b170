/**
 * The local token registry: callback states (`.waitForTaskToken`) complete locally through the same
 * `TaskCallbacks` port the worker and the Lambda handlers use with Step Functions. A token is minted
 * per callback state entered; whoever completes it first (the in-process worker task, `pgferry
 * cutover` for the approval) writes its completion, once: the completion is a file created with
 * link(2), which fails for everyone but the first, in any process. The execution reads the state's
 * result from the completion, as Step Functions does.
 */
import { createHash, randomUUID } from 'node:crypto';
import { linkSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  checkTaskToken,
  MIGRATION_ID,
  PgferryError,
  redactedJson,
  redactText,
  type TaskCallbacks,
} from '@pgferry/core';
import { makeDirectory } from './store';

/** What completed a token: the state's result, or the error the state fails with. */
export type Completion =
  | { status: 'succeeded'; at: string; output: unknown }
  | { status: 'failed'; at: string; error: string; cause: string };

/** A heartbeat for a token that is completed already: the work behind it should stop (as in AWS). */
export class LocalTokenGoneError extends PgferryError {
  override name = 'TaskTokenGoneError';
}

const PREFIX = 'local:';

export class LocalTaskCallbacks implements TaskCallbacks {
  constructor(private readonly stateDir: string) {}

  /** A new token for callback state `step` of migration `id`. */
  static mint(id: string, step: string): string {
    return `${PREFIX}${id}:${step}:${randomUUID()}`;
  }

  /** Where the completions of migration `id`'s tokens are kept (0700, files 0600). */
  dir(id: string): string {
    return join(this.stateDir, 'callbacks', MIGRATION_ID.test(id) ? id : '_other');
  }

  private file(token: string): string {
    checkTaskToken(token);
    const id = token.startsWith(PREFIX) ? token.slice(PREFIX.length).split(':')[0] : '';
    return join(this.dir(id ?? ''), `${createHash('sha256').update(token).digest('hex')}.json`);
  }

  async succeed(token: string, output: unknown): Promise<boolean> {
    return this.complete(token, {
      status: 'succeeded',
      at: new Date().toISOString(),
      output: JSON.parse(redactedJson(output ?? {})),
    });
  }

  async fail(token: string, error: string, cause: string): Promise<boolean> {
    return this.complete(token, { status: 'failed', at: new Date().toISOString(), error, cause: redactText(cause) });
  }

  async heartbeat(token: string): Promise<void> {
    if (this.result(token))
      throw new LocalTokenGoneError('the execution no longer waits on this task: its token was completed');
  }

  /** The token's completion, if it has one. */
  result(token: string): Completion | undefined {
    try {
      return JSON.parse(readFileSync(this.file(token), 'utf8')) as Completion;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Forget every completion of migration `id` (an execution that ended; nothing waits on them). */
  clear(id: string): void {
    rmSync(this.dir(id), { recursive: true, force: true });
  }

  /** Written whole to a temp file, then linked into place: link(2) refuses an existing name, so one completer wins. */
  private complete(token: string, completion: Completion): boolean {
    const file = this.file(token);
    makeDirectory(join(file, '..'));
    const tmp = `${file}.${process.pid}.${randomUUID()}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(completion)}\n`, { mode: 0o600 });
    try {
      linkSync(tmp, file);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    } finally {
      unlinkSync(tmp);
    }
  }
}
