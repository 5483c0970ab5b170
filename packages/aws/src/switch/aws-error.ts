import { ConnectionSwitchError, errorMessage, redactText, type SwitchCheckProblem } from '@pgferry/core';

/** SDK error names that mean "it is not there" and "pgferry may not", across Secrets Manager, SSM and Route 53. */
const MISSING = new Set([
  'ResourceNotFoundException',
  'ParameterNotFound',
  'ParameterVersionNotFound',
  'NoSuchHostedZone',
]);
const DENIED = new Set(['AccessDeniedException', 'AccessDenied', 'UnauthorizedOperation', 'NotAuthorizedException']);

/**
 * An SDK error as a ConnectionSwitchError naming the resource and the action: "not found" and "not
 * allowed" each say what to do; anything else keeps the SDK's message (redacted) and its cause.
 */
export function switchError(err: unknown, resource: string, action: string): ConnectionSwitchError {
  if (err instanceof ConnectionSwitchError) return err;
  const name = err instanceof Error ? err.name : '';
  if (MISSING.has(name)) {
    return new ConnectionSwitchError(`${resource} was not found (${action}: ${name})`, resource, {
      cause: err,
      hint: `check the name/ARN and the region of ${resource}; pgferry switches an existing resource and never creates it`,
    });
  }
  if (DENIED.has(name)) {
    return new ConnectionSwitchError(`pgferry is not allowed to ${action} on ${resource} (${name})`, resource, {
      cause: err,
      hint: `grant ${action} on ${resource} to the role pgferry runs as`,
    });
  }
  return new ConnectionSwitchError(`${action} on ${resource} failed: ${redactText(errorMessage(err))}`, resource, {
    cause: err,
  });
}

/** What the three switches share: the resource's name for messages, the clock, and SDK errors named by resource. */
export abstract class AwsSwitchBase {
  readonly resource: string;
  protected readonly now: () => Date;

  constructor(resource: string, now?: () => Date) {
    this.resource = resource;
    this.now = now ?? (() => new Date());
  }

  protected async send<T>(action: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (err) {
      throw switchError(err, this.resource, action);
    }
  }

  /** A check that could not read the resource: one problem, naming it and what to do. */
  protected unreadable(err: unknown, action: string): SwitchCheckProblem[] {
    const e = switchError(err, this.resource, action);
    return [{ resource: this.resource, message: e.message, hint: e.hint ?? '' }];
  }
}
