import {
  InvalidToken,
  SendTaskFailureCommand,
  SendTaskHeartbeatCommand,
  SendTaskSuccessCommand,
  SFNClient,
  SFNServiceException,
  TaskDoesNotExist,
  TaskTimedOut,
} from '@aws-sdk/client-sfn';
import { mockClient } from 'aws-sdk-client-mock';
import { beforeEach, describe, expect, it } from 'vitest';
import {
  SFN_CAUSE_MAX,
  SFN_ERROR_MAX,
  SfnTaskCallbacks,
  TaskOutputTooLargeError,
  TaskTokenGoneError,
} from '../packages/aws/src/index';
import { TEST_CLIENT_CONFIG } from './harness/aws-clients';

const client = new SFNClient(TEST_CLIENT_CONFIG);
const sfn = mockClient(client);
const callbacks = new SfnTaskCallbacks(client);
const meta = { $metadata: {} };

beforeEach(() => sfn.reset());

describe('SfnTaskCallbacks', () => {
  it('sends SendTaskSuccess with the output as JSON, passwords redacted', async () => {
    sfn.on(SendTaskSuccessCommand).resolves({});
    const ok = await callbacks.succeed('tok-1', {
      summary: 'target ready',
      rows: 12,
      note: 'connected to postgres://app:hunter2@db.example:5432/shop',
    });
    expect(ok).toBe(true);
    expect(sfn.commandCalls(SendTaskSuccessCommand).map((c) => c.args[0].input)).toEqual([
      {
        taskToken: 'tok-1',
        output: JSON.stringify({
          summary: 'target ready',
          rows: 12,
          note: 'connected to postgres://app:***@db.example:5432/shop',
        }),
      },
    ]);
  });

  it.each([
    ['TaskDoesNotExist', new TaskDoesNotExist({ message: 'Task does not exist anymore', ...meta })],
    ['InvalidToken', new InvalidToken({ message: 'Invalid token', ...meta })],
    ['TaskTimedOut', new TaskTimedOut({ message: 'Task Timed Out', ...meta })],
  ])('resolves false, without throwing, when the token is complete already (%s)', async (_name, error) => {
    sfn.on(SendTaskSuccessCommand).rejects(error).on(SendTaskFailureCommand).rejects(error);
    expect(await callbacks.succeed('done', { summary: 'again' })).toBe(false);
    expect(await callbacks.fail('done', 'SomeError', 'again')).toBe(false);
    expect(sfn.calls()).toHaveLength(2);
  });

  it('throws any other failure (throttling, access denied): the token is not known to be complete', async () => {
    const denied = new SFNServiceException({ name: 'AccessDeniedException', $fault: 'client', message: 'no', ...meta });
    sfn.on(SendTaskSuccessCommand).rejects(denied);
    await expect(callbacks.succeed('tok', { summary: 's' })).rejects.toThrow(/no/);
  });

  it('sends SendTaskFailure with error and cause cut to Step Functions limits, redacted before the cut', async () => {
    sfn.on(SendTaskFailureCommand).resolves({});
    const cause = `could not connect to postgres://u:s3cret@h/db ${'x'.repeat(40_000)}`;
    expect(await callbacks.fail('tok-2', `E${'r'.repeat(300)}`, cause)).toBe(true);
    const input = sfn.commandCalls(SendTaskFailureCommand)[0]!.args[0].input;
    expect(input.taskToken).toBe('tok-2');
    expect(input.error).toHaveLength(SFN_ERROR_MAX);
    expect(input.cause).toHaveLength(SFN_CAUSE_MAX);
    expect(input.cause).toMatch(/^could not connect to postgres:\/\/u:\*\*\*@h\/db x+… \(truncated\)$/);
    expect(input.cause).not.toContain('s3cret');
  });

  it('keeps short errors and causes as they are', async () => {
    sfn.on(SendTaskFailureCommand).resolves({});
    await callbacks.fail('tok-3', 'RdsTargetFailedError', 'RDS instance pgferry-shop is incompatible-network');
    expect(sfn.commandCalls(SendTaskFailureCommand)[0]!.args[0].input).toEqual({
      taskToken: 'tok-3',
      error: 'RdsTargetFailedError',
      cause: 'RDS instance pgferry-shop is incompatible-network',
    });
  });

  it('refuses an output over 256 KiB instead of letting Step Functions reject it later', async () => {
    const err = await callbacks.succeed('tok', { summary: 's', big: 'y'.repeat(300_000) }).catch((e) => e);
    expect(err).toBeInstanceOf(TaskOutputTooLargeError);
    expect(sfn.calls()).toHaveLength(0);
  });

  it('sends SendTaskHeartbeat, and tells the worker to stop when the step no longer waits', async () => {
    sfn
      .on(SendTaskHeartbeatCommand)
      .resolvesOnce({})
      .rejects(new TaskTimedOut({ message: 'Task Timed Out', ...meta }));
    await callbacks.heartbeat('tok-4');
    const err = await callbacks.heartbeat('tok-4').catch((e) => e);
    expect(err).toBeInstanceOf(TaskTokenGoneError);
    expect(err.name).toBe('TaskTokenGoneError');
    expect(sfn.commandCalls(SendTaskHeartbeatCommand).map((c) => c.args[0].input)).toEqual([
      { taskToken: 'tok-4' },
      { taskToken: 'tok-4' },
    ]);
  });
});
