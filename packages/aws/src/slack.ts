/**
 * Slack in AWS: the secrets (Secrets Manager, read once per container), the replay cache and the
 * per-migration message record (the migration table), the Web API and `response_url` (fetch), and the
 * work a command or a gate button asks for, carried out with the store and Step Functions. The rules
 * themselves (who may act, what an action does in which state, the message) are pure, in core/slack.
 */
import { GetSecretValueCommand, type SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { type SFNClient, StartExecutionCommand, StopExecutionCommand } from '@aws-sdk/client-sfn';
import { type DynamoDBDocumentClient, GetCommand, PutCommand } from '@aws-sdk/lib-dynamodb';
import {
  APPROVAL_STEP,
  actionStep,
  authorizeForMigration,
  CUTOVER_REJECTED_ERROR,
  errorMessage,
  escapeMrkdwn,
  type GateClick,
  MAX_ROLLBACK_ATTEMPTS,
  type MigrationAction,
  MigrationNotFoundError,
  type MigrationState,
  type MigrationStore,
  migrationMessage,
  PgferryError,
  type PgferryEvent,
  type ReplayCache,
  redactText,
  rollbackExecutionInput,
  rollbackExecutionName,
  type SlackAccess,
  type SlackActor,
  type SlackBlock,
  type SlackCommand,
  type SlackMessageRef,
  slackCallFor,
  slackStartMigrationId,
  type TaskCallbacks,
} from '@pgferry/core';
import { MIGRATION_TABLE_KEYS, migrationPk } from './dynamo-parts';
import { executionStatus, runningExecutions } from './start';

// ---- Secrets -----------------------------------------------------------------------------------------

/**
 * A secret's string, read on first use and kept for the container's life (a Slack secret changes when
 * the app is reinstalled, which is a deploy). A failed read is not kept: the next request tries again.
 * The value is never logged; errors name the ARN only.
 */
export function cachedSecretString(secrets: SecretsManagerClient, arn: string): () => Promise<string> {
  let value: Promise<string> | undefined;
  return () => {
    value ??= secrets
      .send(new GetSecretValueCommand({ SecretId: arn }))
      .then((out) => {
        const text = out.SecretString?.trim();
        if (!text)
          throw new PgferryError(`the Slack secret ${arn} has no string value`, {
            hint: 'store the Slack value itself (the signing secret, or the xoxb- bot token) as the secret string',
          });
        return text;
      })
      .catch((err) => {
        value = undefined;
        throw err;
      });
    return value;
  };
}

// ---- Items in the migration table --------------------------------------------------------------------

/** Accepted signatures, one item each until their TTL: a conditional put is the atomic "seen before?". */
export class DynamoReplayCache implements ReplayCache {
  constructor(
    private readonly client: DynamoDBDocumentClient,
    private readonly tableName: string,
    private readonly now: () => number = Date.now,
  ) {}

  async remember(key: string, ttlSeconds: number): Promise<boolean> {
    const expires = Math.ceil(this.now() / 1000) + ttlSeconds;
    try {
      await this.client.send(
        new PutCommand({
          TableName: this.tableName,
          Item: {
            [MIGRATION_TABLE_KEYS.partitionKey]: slackSignaturePk(key),
            [MIGRATION_TABLE_KEYS.sortKey]: 'SLACK',
            [MIGRATION_TABLE_KEYS.timeToLive]: expires,
          },
          // An expired item DynamoDB has not deleted yet does not count.
          ConditionExpression: 'attribute_not_exists(pk) OR expiresAt < :now',
          ExpressionAttributeValues: { ':now': Math.floor(this.now() / 1000) },
        }),
      );
      return true;
    } catch (err) {
      if (err instanceof Error && err.name === 'ConditionalCheckFailedException') return false;
      throw err;
    }
  }
}

/** The replay cache's items are the only ones the endpoints write: their IAM condition names this prefix. */
export const SLACK_SIGNATURE_PK_PREFIX = 'SLACK#SIGNATURE#';
export const slackSignaturePk = (signature: string) => `${SLACK_SIGNATURE_PK_PREFIX}${signature}`;
export const SLACK_MESSAGE_SK = 'SLACK#MESSAGE';

/** Where a migration's message goes (`channel`) and, once posted, where it is (`ts`). */
export interface SlackMessageRecord {
  channel: string;
  ts?: string;
  updatedAt?: string;
}

export interface SlackMessages {
  get(migrationId: string): Promise<SlackMessageRecord | undefined>;
  put(migrationId: string, record: SlackMessageRecord): Promise<void>;
}

/**
 * The record lives next to the migration (pk MIGRATION#<id>) but in an item of its own: the tasks write
 * the migration item with a version check, and a Slack update must never make one of them conflict.
 */
export class DynamoSlackMessages implements SlackMessages {
  constructor(
    private readonly client: DynamoDBDocumentClient,
    private readonly tableName: string,
  ) {}

  async get(migrationId: string): Promise<SlackMessageRecord | undefined> {
    const out = await this.client.send(
      new GetCommand({ TableName: this.tableName, Key: { pk: migrationPk(migrationId), sk: SLACK_MESSAGE_SK } }),
    );
    const item = out.Item;
    if (!item || typeof item.channel !== 'string') return undefined;
    return {
      channel: item.channel,
      ...(typeof item.ts === 'string' ? { ts: item.ts } : {}),
      ...(typeof item.updatedAt === 'string' ? { updatedAt: item.updatedAt } : {}),
    };
  }

  async put(migrationId: string, record: SlackMessageRecord): Promise<void> {
    await this.client.send(
      new PutCommand({
        TableName: this.tableName,
        Item: { pk: migrationPk(migrationId), sk: SLACK_MESSAGE_SK, ...record },
      }),
    );
  }
}

// ---- Slack's HTTP side -------------------------------------------------------------------------------

/** Slack answered a Web API call with `ok: false` (or not JSON); the method and Slack's error code, no token. */
export class SlackApiError extends PgferryError {
  override name = 'SlackApiError';
  constructor(
    readonly method: string,
    readonly code: string,
  ) {
    super(`Slack ${method} failed: ${code}`, {
      hint:
        code === 'not_in_channel' || code === 'channel_not_found'
          ? 'invite the pgferry app to the channel (/invite @pgferry)'
          : code === 'invalid_auth' || code === 'not_authed'
            ? "the bot token secret does not hold the app's xoxb- token"
            : undefined,
    });
  }
}

export interface SlackHttpOptions {
  /** `https://slack.com/api/`; a test points it at a local server. */
  baseUrl?: string;
  fetch?: typeof fetch;
}

/** The few Web API methods pgferry uses, called with the bot token (JSON bodies, as Slack recommends). */
export class SlackWebApi {
  private readonly baseUrl: string;
  private readonly fetch: typeof fetch;
  constructor(
    private readonly token: () => Promise<string>,
    options: SlackHttpOptions = {},
  ) {
    this.baseUrl = options.baseUrl ?? 'https://slack.com/api/';
    this.fetch = options.fetch ?? globalThis.fetch;
  }

  async call(method: 'chat.postMessage' | 'chat.update', body: object): Promise<{ channel: string; ts: string }> {
    const res = await this.fetch(new URL(method, this.baseUrl), {
      method: 'POST',
      headers: { authorization: `Bearer ${await this.token()}`, 'content-type': 'application/json; charset=utf-8' },
      body: JSON.stringify(body),
    });
    const out = (await res.json().catch(() => ({ ok: false, error: `HTTP ${res.status}` }))) as {
      ok?: boolean;
      error?: string;
      channel?: string;
      ts?: string;
    };
    if (!out.ok || !out.channel || !out.ts) throw new SlackApiError(method, out.error ?? `HTTP ${res.status}`);
    return { channel: out.channel, ts: out.ts };
  }
}

/** What a command or click answers, later, through its `response_url`: seen by the person only. */
export interface SlackResponse {
  text: string;
  blocks?: SlackBlock[];
}

/** Slack's response URLs; anything else in a signed request is not followed (no request to an arbitrary host). */
export const SLACK_RESPONSE_URL_PREFIX = 'https://hooks.slack.com/';

export async function respondToSlack(
  responseUrl: string,
  response: SlackResponse,
  options: { fetch?: typeof fetch; allowedPrefix?: string } = {},
): Promise<void> {
  const prefix = options.allowedPrefix ?? SLACK_RESPONSE_URL_PREFIX;
  if (!responseUrl.startsWith(prefix))
    throw new PgferryError(`not a Slack response URL (it does not start with ${prefix}); nothing was sent to it`);
  const res = await (options.fetch ?? globalThis.fetch)(responseUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json; charset=utf-8' },
    body: JSON.stringify({ response_type: 'ephemeral', replace_original: false, ...response }),
  });
  if (!res.ok) throw new PgferryError(`Slack's response URL answered HTTP ${res.status}`);
}

// ---- The work behind a command or a click ------------------------------------------------------------

/** What an endpoint hands on (asynchronously) once the request is verified and the person allowed. */
export interface SlackWork {
  command: Exclude<SlackCommand, { kind: 'help' }>;
  actor: SlackActor;
  via: 'command' | 'button';
  responseUrl?: string;
  /**
   * The Slack request the work came from (its signature, accepted once): a `start` derives the
   * migration id from it, so an invocation Lambda retries after a failure starts the same migration
   * (startFromPlan's retry) instead of a second one of the same source.
   */
  requestKey?: string;
}

export function clickWork(click: GateClick, actor: SlackActor, responseUrl?: string): SlackWork {
  return { command: { kind: click.action, id: click.migrationId }, actor, via: 'button', responseUrl };
}

/** helper `start`'s `startFromPlan` from @pgferry/aws, injected (see functions/lib/slack-deps.ts). */
export type StartFromPlan = (
  request: { planName: string; requestedBy: string; migrationId?: string },
  deps: { store: MigrationStore; sfn: SFNClient; stateMachineArn: string },
) => Promise<{ migrationId: string; executionArn: string; alreadyStarted: boolean }>;

export interface SlackWorkDeps {
  store: MigrationStore;
  /** Plans by name (the store's getPlan): a migration's approvers are its plan's. */
  plans: { getPlan(name: string): Promise<{ approvers: SlackAccess } | undefined> };
  sfn: SFNClient;
  callbacks: TaskCallbacks;
  stateMachineArn: string;
  start: StartFromPlan;
  messages: SlackMessages;
  log(message: string): void;
  /** Tests: how long a click waits for a renewed approval token (RENEWED_TOKEN_WAIT_MS). */
  renewedTokenWaitMs?: number;
}

const code = (id: string) => `\`${escapeMrkdwn(id)}\``;

/** Carries out `work` and says what happened; a refusal changes nothing. */
export async function runSlackWork(work: SlackWork, deps: SlackWorkDeps): Promise<SlackResponse> {
  const { command, actor } = work;
  try {
    switch (command.kind) {
      case 'start':
        return await start(command.plan, work, deps);
      case 'status':
        return await status(command.id, deps);
      case 'resume':
        return await resume(command.id, actor, deps);
      default:
        return await act(command.kind, command.id, actor, deps);
    }
  } catch (err) {
    if (err instanceof MigrationNotFoundError && 'id' in command)
      return { text: `There is no migration ${code(command.id ?? '')}; nothing was changed.` };
    throw err;
  }
}

async function start(planName: string, work: SlackWork, deps: SlackWorkDeps): Promise<SlackResponse> {
  const plan = await deps.plans.getPlan(planName);
  if (!plan)
    return { text: `There is no plan ${code(planName)}; nothing was started. \`pgferry plan list\` shows the plans.` };
  const started = await deps.start(
    {
      planName,
      requestedBy: work.actor.userId,
      ...(work.requestKey ? { migrationId: slackStartMigrationId(work.requestKey) } : {}),
    },
    { store: deps.store, sfn: deps.sfn, stateMachineArn: deps.stateMachineArn },
  );
  // The message goes to the channel the command was typed in, unless the migration has one already.
  if (work.actor.channelId && !(await deps.messages.get(started.migrationId)))
    await deps.messages.put(started.migrationId, { channel: work.actor.channelId });
  deps.log(`slack: start of plan ${planName} by ${work.actor.userId}: migration ${started.migrationId}`);
  return {
    text: started.alreadyStarted
      ? `Migration ${code(started.migrationId)} of plan ${code(planName)} is running already; nothing new was started.`
      : `Started migration ${code(started.migrationId)} from plan ${code(planName)}.`,
  };
}

/**
 * `resume`: the next execution of a migration whose last one ended (a resumable stop), started as
 * `pgferry start <plan> --id <id>` starts it: startFromPlan decides (nothing while an execution runs,
 * nothing once the migration is over), so Slack and the CLI follow one rule.
 */
async function resume(id: string, actor: SlackActor, deps: SlackWorkDeps): Promise<SlackResponse> {
  const state = await deps.store.get(id);
  const plan = state.planName ? await deps.plans.getPlan(state.planName) : undefined;
  const allowed = authorizeForMigration(actor, state, plan, 'resume');
  if (!allowed.allowed) return { text: allowed.message };
  if (!state.planName)
    return {
      text: `${code(id)} was not started from a plan, so Slack cannot resume it; nothing was started. Resume it where it was started: \`pgferry resume --id ${escapeMrkdwn(id)}\`.`,
    };
  let started: Awaited<ReturnType<StartFromPlan>>;
  try {
    started = await deps.start(
      { planName: state.planName, requestedBy: actor.userId, migrationId: id },
      { store: deps.store, sfn: deps.sfn, stateMachineArn: deps.stateMachineArn },
    );
  } catch (err) {
    // Rolled back, aborted, completed (nothing to resume), or another process resuming it.
    if (err instanceof Error && err.name === 'StateConflictError')
      return { text: `${escapeMrkdwn(err.message)}. Nothing was started.` };
    throw err;
  }
  const execution = code(started.executionArn.split(':').at(-1) ?? '');
  if (started.alreadyStarted)
    return {
      text: `${code(id)} is running already, in execution ${execution}; nothing was started. \`/pgferry status ${escapeMrkdwn(id)}\` shows where it stands.`,
    };
  deps.log(`slack: resume of migration ${id} by ${actor.userId}: execution ${started.executionArn} started`);
  return {
    text: `Resumed ${code(id)} (requested by <@${escapeMrkdwn(actor.userId)}>) in execution ${execution}: it goes on from where it stopped.`,
  };
}

const LISTED = 20;

async function status(id: string | undefined, deps: SlackWorkDeps): Promise<SlackResponse> {
  if (id) return migrationMessage(await deps.store.get(id));
  const { migrations } = await deps.store.list();
  if (!migrations.length) return { text: 'No migrations yet.' };
  const recent = [...migrations].sort((a, b) => b.updatedAt.localeCompare(a.updatedAt)).slice(0, LISTED);
  const lines = recent.map((s) => `• ${code(s.id)}: ${escapeMrkdwn(s.status)}, ${escapeMrkdwn(s.phase)}`);
  const more = migrations.length > LISTED ? `\n…and ${migrations.length - LISTED} older` : '';
  return { text: `${lines.join('\n')}${more}` };
}

async function act(
  action: MigrationAction,
  id: string,
  actor: SlackActor,
  deps: SlackWorkDeps,
): Promise<SlackResponse> {
  const state = await deps.store.get(id);
  const plan = state.planName ? await deps.plans.getPlan(state.planName) : undefined;
  const allowed = authorizeForMigration(actor, state, plan, action);
  if (!allowed.allowed) return { text: allowed.message };
  const step = actionStep(action, state);
  const by = `<@${escapeMrkdwn(actor.userId)}>`;
  switch (step.step) {
    case 'refuse':
      return { text: step.message };
    case 'approve':
      return completeApproval(state, deps, { output: { summary: `cutover approved in Slack by ${actor.userId}` } }, [
        `Cutover of ${code(id)} approved by ${by}: it freezes writes once the gate is open again.`,
      ]);
    case 'reject-at-gate':
      return completeApproval(
        state,
        deps,
        { error: CUTOVER_REJECTED_ERROR, cause: `rollback requested in Slack by ${actor.userId} at the cutover gate` },
        [`Rolling back ${code(id)} (requested by ${by}): nothing was cut over; what pgferry made is removed.`],
      );
    case 'stop-then-roll-back':
      return stopThenRollBack(state, action, actor, deps);
  }
}

/**
 * How long a decision whose token had just timed out waits for the next approval window's token (the
 * waiting task files it first thing; the worker function runs for up to 60 s).
 */
export const RENEWED_TOKEN_WAIT_MS = 20_000;
const RENEWED_TOKEN_POLL_MS = 500;

/**
 * Takes the approval token (atomically: of two clicks one gets it) and completes it once. The wait
 * renews its token every window (definition.ts): a click that took a token whose window had just ended
 * (Step Functions answers TaskTimedOut) takes the next window's token and completes that one, so the
 * decision is neither lost nor reported done when it did nothing.
 */
async function completeApproval(
  state: MigrationState,
  deps: SlackWorkDeps,
  result: { output: object } | { error: string; cause: string },
  done: string[],
): Promise<SlackResponse> {
  let token = await deps.store.takeTaskToken?.(state.id, APPROVAL_STEP);
  if (!token)
    return {
      text: `Nothing waits for a decision on ${code(state.id)} any more (someone decided already); nothing was changed.`,
    };
  for (;;) {
    let completed: boolean;
    try {
      completed =
        'output' in result
          ? await deps.callbacks.succeed(token, result.output)
          : await deps.callbacks.fail(token, result.error, result.cause);
    } catch (err) {
      // Step Functions did not answer: the token goes back so that the next click can complete it,
      // unless a window renewed meanwhile and filed a newer one, which stays.
      const newer = await deps.store.takeTaskToken?.(state.id, APPROVAL_STEP);
      await deps.store.putTaskToken?.(state.id, APPROVAL_STEP, newer ?? token);
      throw err;
    }
    if (completed) break;
    const next = await renewedToken(state.id, token, deps);
    if (!next)
      return {
        text: `The approval window of ${code(state.id)} had just ended when this arrived, and no new one opened within ${RENEWED_TOKEN_WAIT_MS / 1000} s (the execution may have stopped); nothing was changed. Check \`/pgferry status ${escapeMrkdwn(state.id)}\` and press again.`,
      };
    deps.log(`slack: the approval window of migration ${state.id} renewed under a click; completing the new token`);
    token = next;
  }
  deps.log(`slack: ${'output' in result ? 'approved' : 'rejected'} the cutover of migration ${state.id}`);
  return { text: done.join('\n') };
}

/** The token the next approval window files after `spent` timed out, taken; undefined if none comes in time. */
async function renewedToken(id: string, spent: string, deps: SlackWorkDeps): Promise<string | undefined> {
  const until = Date.now() + (deps.renewedTokenWaitMs ?? RENEWED_TOKEN_WAIT_MS);
  for (;;) {
    const token = await deps.store.takeTaskToken?.(id, APPROVAL_STEP);
    if (token && token !== spent) return token;
    if (Date.now() >= until) return undefined;
    await new Promise((r) => setTimeout(r, RENEWED_TOKEN_POLL_MS));
  }
}

/**
 * `abort` (before the switch) and `rollback` after it: the migrate execution is stopped (a stopped
 * execution runs no Catch, so its undo is started here: what the failure policy does for a failure
 * before the switch, the rollback), then one execution goes straight to "Roll back": the first of
 * `<id>-rollback`, `-rollback-2`… that does not exist, past those that failed, so a second click or a
 * retry while one runs starts nothing twice (two at once name the same one: Step Functions starts one).
 */
async function stopThenRollBack(
  state: MigrationState,
  action: MigrationAction,
  actor: SlackActor,
  deps: SlackWorkDeps,
): Promise<SlackResponse> {
  // The execution that runs the migration now (a long catch-up continues in new executions), and the
  // one it may have started a moment ago, before that one's assessment recorded it (start.ts's
  // runningExecutions): a rollback must never run beside either.
  for (const arn of await runningExecutions(state, deps))
    await deps.sfn.send(
      new StopExecutionCommand({
        executionArn: arn,
        error: action === 'abort' ? 'MigrationAborted' : 'RollbackRequested',
        cause: `${action} requested in Slack by ${actor.userId}`,
      }),
    );
  // A stopped execution's approval token is dead: leave no stale one behind.
  await deps.store.takeTaskToken?.(state.id, APPROVAL_STEP);
  // The next rollback execution: past those that ended without rolling back (a rollback that failed is
  // asked for again this way); one that runs or rolled back already is the answer.
  let name = '';
  let failed: string | undefined;
  for (let n = 1; !name; n++) {
    if (n > MAX_ROLLBACK_ATTEMPTS)
      return {
        text: `${MAX_ROLLBACK_ATTEMPTS} rollback executions of ${code(state.id)} ended without rolling it back (the last: ${code(failed ?? '')}); nothing new was started. See why in the Step Functions console and \`/pgferry status ${escapeMrkdwn(state.id)}\`.`,
      };
    const candidate = rollbackExecutionName(state.id, n);
    const status = await executionStatus(deps, candidate);
    if (status === 'RUNNING')
      return {
        text: `A rollback of ${code(state.id)} was started already (${code(candidate)}); nothing new was started.`,
      };
    if (status === 'SUCCEEDED')
      return { text: `${code(state.id)} was rolled back already (${code(candidate)}); nothing new was started.` };
    if (status) failed = `${candidate}: ${status}`;
    else name = candidate;
  }
  try {
    await deps.sfn.send(
      new StartExecutionCommand({
        stateMachineArn: deps.stateMachineArn,
        name,
        input: JSON.stringify(rollbackExecutionInput(state.id)),
      }),
    );
  } catch (err) {
    if (err instanceof Error && err.name === 'ExecutionAlreadyExists')
      return { text: `A rollback of ${code(state.id)} was started already; nothing new was started.` };
    throw err;
  }
  deps.log(`slack: ${action} of migration ${state.id} by ${actor.userId}: rollback execution ${name} started`);
  const by = `<@${escapeMrkdwn(actor.userId)}>`;
  const again = failed ? ` Started again as ${code(name)}: ${code(failed)}.` : '';
  return {
    text:
      action === 'abort'
        ? `Aborted ${code(state.id)} (by ${by}): its execution is stopped and the rollback removes what pgferry made.${again}`
        : `Rolling ${code(state.id)} back to the source (requested by ${by}); reverse replication kept it current, nothing is lost.${again}`,
  };
}

/** The worker: the work, then its answer through `response_url`; a failure is answered too, redacted. */
export async function handleSlackWork(
  work: SlackWork,
  deps: SlackWorkDeps & { respond(url: string, response: SlackResponse): Promise<void> },
): Promise<SlackResponse> {
  let response: SlackResponse;
  try {
    response = await runSlackWork(work, deps);
  } catch (err) {
    const message = redactText(errorMessage(err));
    deps.log(`slack: ${work.command.kind} by ${work.actor.userId} failed: ${message}`);
    response = { text: `:x: \`${work.command.kind}\` failed: ${escapeMrkdwn(message)}` };
  }
  if (work.responseUrl) await deps.respond(work.responseUrl, response);
  return response;
}

// ---- The migration's message, from bus events ---------------------------------------------------------

export interface SlackMessageDeps {
  store: Pick<MigrationStore, 'get'>;
  messages: SlackMessages;
  api: SlackWebApi;
  /** Where a migration's message goes when no command named a channel. */
  defaultChannel?: string;
  now?: () => number;
  log(message: string): void;
}

export type MessageOutcome =
  | { action: 'posted' | 'updated'; channel: string; ts: string }
  | { action: 'ignored'; reason: 'unknown-migration' | 'no-channel' | 'throttled' };

/** Posts the migration's message on its first event and updates it in place after (core: slackCallFor). */
export async function updateSlackMessage(event: PgferryEvent, deps: SlackMessageDeps): Promise<MessageOutcome> {
  const id = event.detail.migrationId;
  let state: MigrationState;
  try {
    state = await deps.store.get(id);
  } catch (err) {
    if (!(err instanceof MigrationNotFoundError)) throw err;
    deps.log(`slack: ignored ${event.type} of ${id}: no such migration`);
    return { action: 'ignored', reason: 'unknown-migration' };
  }
  const record = await deps.messages.get(id);
  const channel = record?.channel ?? deps.defaultChannel;
  if (!channel) {
    deps.log(`slack: ignored ${event.type} of ${id}: no channel configured for its message`);
    return { action: 'ignored', reason: 'no-channel' };
  }
  const now = deps.now?.() ?? Date.now();
  const message: SlackMessageRef | undefined =
    record?.ts && record.updatedAt ? { channel, ts: record.ts, updatedAt: record.updatedAt } : undefined;
  const call = slackCallFor(event, state, { channel, message, now });
  if (!call) return { action: 'ignored', reason: 'throttled' };
  let method = call.method;
  let posted: { channel: string; ts: string };
  try {
    posted = await deps.api.call(call.method, call.body);
  } catch (err) {
    // Someone deleted the message: the migration gets a new one rather than none.
    if (!(err instanceof SlackApiError && call.method === 'chat.update' && err.code === 'message_not_found')) throw err;
    const { ts: _gone, ...message } = call.body;
    method = 'chat.postMessage';
    posted = await deps.api.call(method, message);
  }
  await deps.messages.put(id, { channel: posted.channel, ts: posted.ts, updatedAt: new Date(now).toISOString() });
  return { action: method === 'chat.postMessage' ? 'posted' : 'updated', ...posted };
}
