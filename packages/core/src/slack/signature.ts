/**
 * Slack request signatures (v0): HMAC-SHA256 of `v0:<X-Slack-Request-Timestamp>:<raw body>` with the
 * app's signing secret, hex, sent as `X-Slack-Signature: v0=<hex>`. Checked on the raw bytes before
 * anything is parsed (a parser is attack surface, and re-serialising a parsed body changes the bytes).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { PgferryError, type PgferryErrorOptions } from '../errors';

/** Slack's window: a request older (or newer) than this is refused, whatever its signature. */
export const SLACK_SIGNATURE_WINDOW_SECONDS = 5 * 60;

export type SlackRejection = 'missing' | 'malformed' | 'stale' | 'invalid' | 'replayed';

/** The request is not shown to come from Slack: answer 401 and act on nothing in it. */
export class SlackRequestRejectedError extends PgferryError {
  override name = 'SlackRequestRejectedError';
  constructor(
    readonly reason: SlackRejection,
    message: string,
    options: PgferryErrorOptions = {},
  ) {
    super(message, options);
  }
}

/**
 * Signatures already accepted. A captured request replayed within the window carries a valid
 * signature; remembering each accepted one for the window's length refuses the second copy. In AWS a
 * conditional put with a TTL (DynamoDB), locally a map.
 */
export interface ReplayCache {
  /** Record `key` for `ttlSeconds`; false when it was already recorded and has not expired (atomically). */
  remember(key: string, ttlSeconds: number): Promise<boolean>;
}

/** A ReplayCache in memory, for one process (the CLI, tests). */
export class MemoryReplayCache implements ReplayCache {
  private readonly seen = new Map<string, number>();
  constructor(private readonly now: () => number = Date.now) {}
  async remember(key: string, ttlSeconds: number): Promise<boolean> {
    const t = this.now();
    for (const [k, expires] of this.seen) if (expires <= t) this.seen.delete(k);
    if (this.seen.has(key)) return false;
    this.seen.set(key, t + ttlSeconds * 1000);
    return true;
  }
}

export interface SlackRequest {
  /** The body exactly as received: the bytes Slack signed. */
  rawBody: string | Uint8Array;
  /** `X-Slack-Request-Timestamp` (seconds since the epoch). */
  timestamp: string | undefined;
  /** `X-Slack-Signature` (`v0=<64 hex>`). */
  signature: string | undefined;
}

export function slackSignature(signingSecret: string, timestamp: string, rawBody: string | Uint8Array): string {
  const hmac = createHmac('sha256', signingSecret);
  hmac.update(`v0:${timestamp}:`);
  hmac.update(rawBody);
  return `v0=${hmac.digest('hex')}`;
}

const SIGNATURE = /^v0=[0-9a-f]{64}$/;

/**
 * Throws SlackRequestRejectedError unless the request is signed with `signingSecret`, within the
 * window of `now`, and not seen before. The messages never include the secret or the expected signature.
 */
export async function verifySlackRequest(
  request: SlackRequest,
  options: { signingSecret: string; replayCache: ReplayCache; now?: number },
): Promise<void> {
  const { timestamp, signature } = request;
  if (!options.signingSecret)
    throw new SlackRequestRejectedError('missing', 'no Slack signing secret is configured; every request is refused', {
      hint: 'store the Slack app signing secret in its Secrets Manager secret',
    });
  if (!timestamp || !signature)
    throw new SlackRequestRejectedError(
      'missing',
      `the request has no ${timestamp ? 'X-Slack-Signature' : 'X-Slack-Request-Timestamp'} header`,
    );
  if (!/^\d{1,12}$/.test(timestamp))
    throw new SlackRequestRejectedError('malformed', 'X-Slack-Request-Timestamp is not a number of seconds');
  if (!SIGNATURE.test(signature))
    throw new SlackRequestRejectedError('malformed', 'X-Slack-Signature is not v0=<64 hex digits>');
  const nowSeconds = Math.floor((options.now ?? Date.now()) / 1000);
  const age = nowSeconds - Number(timestamp);
  // Checked before the HMAC: an old request is refused whatever it carries. Both ways: a clock ahead.
  if (Math.abs(age) > SLACK_SIGNATURE_WINDOW_SECONDS)
    throw new SlackRequestRejectedError(
      'stale',
      `the request was signed ${Math.abs(age)} s ${age > 0 ? 'ago' : 'in the future'}, outside the ${SLACK_SIGNATURE_WINDOW_SECONDS} s window`,
      { hint: 'a replayed request, or this clock is off (check NTP)' },
    );
  const expected = Buffer.from(slackSignature(options.signingSecret, timestamp, request.rawBody), 'utf8');
  const given = Buffer.from(signature, 'utf8');
  // Same length by the format check above; timingSafeEqual keeps the comparison from leaking the prefix.
  if (expected.length !== given.length || !timingSafeEqual(expected, given))
    throw new SlackRequestRejectedError('invalid', 'the request signature does not match the signing secret');
  // Only a valid signature is remembered: an attacker cannot fill the cache with made-up ones.
  if (!(await options.replayCache.remember(signature, SLACK_SIGNATURE_WINDOW_SECONDS * 2)))
    throw new SlackRequestRejectedError('replayed', 'this signed request was already received once');
}

/**
 * The form fields of a verified request (slash commands and interactivity post
 * application/x-www-form-urlencoded). Verification comes first, in the same call, so that no handler
 * can parse a body it has not verified.
 */
export async function verifiedSlackForm(
  request: SlackRequest,
  options: { signingSecret: string; replayCache: ReplayCache; now?: number },
): Promise<URLSearchParams> {
  await verifySlackRequest(request, options);
  const body = typeof request.rawBody === 'string' ? request.rawBody : Buffer.from(request.rawBody).toString('utf8');
  return new URLSearchParams(body);
}
