/**
 * Migration state in one DynamoDB table (layout in dynamo-parts.ts): the migration item with optimistic
 * versioning, its large fields as chunk items, a lease with a TTL for the one command or execution
 * acting on it, callback steps' task tokens, and correlation items that let an event find its
 * migration. Passwords are never written here: the connection secrets are resolved at run time
 * (Secrets Manager by ARN in AWS) through the injected vault.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { AttributeValue } from '@aws-sdk/client-dynamodb';
import {
  BatchGetCommand,
  BatchWriteCommand,
  DeleteCommand,
  type DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  QueryCommand,
  ScanCommand,
  TransactWriteCommand,
  UpdateCommand,
} from '@aws-sdk/lib-dynamodb';
import {
  alreadyExistsError,
  bucketed,
  bucketsToThin,
  type ClaimOptions,
  checkCorrelationKey,
  checkMigrationId,
  checkPlanName,
  checkTaskStep,
  checkTaskToken,
  claimedError,
  correlationTakenError,
  errorMessage,
  FINISHED_STATUSES,
  InvalidInputError,
  LAG_SERIES,
  type LagSample,
  LEASE_SECONDS,
  type MigrationListing,
  MigrationNotFoundError,
  type MigrationPlan,
  type MigrationPlanInput,
  type MigrationSecrets,
  type MigrationState,
  type MigrationStore,
  mergeLagSeries,
  PgferryError,
  parseMigrationPlan,
  peakOfBucket,
  readListing,
  redactedJson,
  refuseSecretsInState,
  StateUnreadableError,
  storedPlan,
  versionConflictError,
} from '@pgferry/core';
import {
  CHUNK_BYTES,
  CORRELATION_SK,
  chunkSk,
  DYNAMO_ITEM_LIMIT_BYTES,
  LAG_PREFIX,
  LEASE_SK,
  lagRawSk,
  lagThinnedSk,
  migrationPk,
  type PartRef,
  PLAN_SK,
  planPk,
  STATE_SK,
  sha256,
  splitState,
  splitUtf8,
  tokenSk,
  utf8Bytes,
} from './dynamo-parts';

/** Where a migration's connection secrets live; the store itself never holds them. */
export interface SecretsVault {
  /** The migration's secrets at run time (in AWS: Secrets Manager, by the ARNs in its config). */
  resolve(migration: MigrationState): Promise<MigrationSecrets>;
  /** Keep the secrets `create` is handed; absent where they exist before the migration does (ARNs in its config). */
  store?(id: string, secrets: MigrationSecrets): Promise<void>;
  remove?(id: string): Promise<void>;
}

export interface DynamoStoreOptions {
  /** Injected: its region, credentials and retry policy are the caller's. */
  client: DynamoDBDocumentClient;
  tableName: string;
  vault: SecretsVault;
  /** How long a lease lasts unless renewed, and how often its holder renews it. */
  leaseMs?: number;
  renewEveryMs?: number;
  /** Who holds a lease, as a conflict names it, unless a claim names its holder (default: pid and host). */
  holder?: string;
  /** Told when a renewal finds the lease taken over (its holder stalled past the lease). */
  onLeaseLost?: (id: string, message: string) => void;
  now?: () => number;
}

export const DEFAULT_LEASE_MS = LEASE_SECONDS * 1000;

const isConditionFailure = (err: unknown) => (err as Error | undefined)?.name === 'ConditionalCheckFailedException';

/** A transaction cancelled because of its condition at `index` (the others report `None`). */
function cancelledBy(err: unknown, index: number): boolean {
  const reasons = (err as { CancellationReasons?: { Code?: string }[] }).CancellationReasons;
  return (err as Error)?.name === 'TransactionCanceledException' && reasons?.[index]?.Code === 'ConditionalCheckFailed';
}

/** An attribute of the item a failed condition returns (raw AttributeValues: the document client leaves it so). */
function oldAttribute(err: unknown, name: string): string | undefined {
  const value = (err as { Item?: Record<string, AttributeValue> }).Item?.[name];
  return value?.S ?? value?.N;
}

/**
 * Whether a write refused by its condition is the one the item already holds: a write whose reply was
 * lost (a 500, a reset connection) is sent again by the SDK, and its second sending is refused by the
 * condition the first one's landing broke. Each write carries its own `writeId`.
 */
function landed(err: unknown, item: Item): boolean {
  return oldAttribute(err, 'writeId') === item.writeId;
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A write names its chunks within this long of writing them, or gives up and removes them. */
export const COMMIT_WINDOW_MS = 10 * 60_000;
/** Chunks no migration item names are removed once this old (well past any commit window). */
export const ORPHAN_AGE_MS = 6 * COMMIT_WINDOW_MS;
/** Every this many versions of a migration, a write sweeps the chunks nothing names. */
const SWEEP_EVERY = 50;

/** BatchWrite's and BatchGet's limits per request. */
const BATCH_WRITE = 25;
const BATCH_GET = 100;
/** Throttled batch work is retried with growing pauses this many times before the write fails. */
const BATCH_ATTEMPTS = 8;

type Key = { pk: string; sk: string };
type Item = Record<string, unknown>;

export class DynamoMigrationStore implements MigrationStore {
  private readonly client: DynamoDBDocumentClient;
  readonly tableName: string;
  private readonly vault: SecretsVault;
  private readonly leaseMs: number;
  private readonly renewEveryMs: number;
  private readonly holder: string;
  private readonly now: () => number;
  private readonly onLeaseLost?: (id: string, message: string) => void;
  private readonly parts = new Map<string, string>();
  private partBytes = 0;

  constructor(options: DynamoStoreOptions) {
    if (!options.tableName)
      throw new PgferryError('the DynamoDB store needs its table name', {
        field: 'tableName',
        hint: 'set it from the stack output (the migrations table)',
      });
    this.client = options.client;
    this.tableName = options.tableName;
    this.vault = options.vault;
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    this.renewEveryMs = options.renewEveryMs ?? Math.floor(this.leaseMs / 3);
    this.holder = options.holder ?? `pid ${process.pid} on ${hostname()}`;
    this.now = options.now ?? Date.now;
    this.onLeaseLost = options.onLeaseLost;
  }

  private get where() {
    return `DynamoDB table ${this.tableName}`;
  }

  private notFound(id: string) {
    return new MigrationNotFoundError(`no migration ${id} in ${this.where}`, {
      field: '--id',
      hint: 'run `pgferry status` to list migrations',
    });
  }

  async create(state: MigrationState, secrets: MigrationSecrets): Promise<void> {
    checkMigrationId(state.id);
    refuseSecretsInState(state);
    const { item, written } = await this.writeParts(state, {});
    try {
      await this.client.send(
        new PutCommand({
          TableName: this.tableName,
          Item: item,
          ConditionExpression: 'attribute_not_exists(pk)',
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      );
    } catch (err) {
      // Only a refused write is known not to name the chunks: after a timeout it may have landed.
      if (!isConditionFailure(err)) throw err;
      // Refused because it had landed: the SDK sent it again after a reply that was lost.
      if (!landed(err, item)) {
        await this.deleteParts(state.id, written).catch(() => {});
        throw alreadyExistsError(state.id, this.where);
      }
    }
    try {
      await this.vault.store?.(state.id, secrets);
    } catch (err) {
      // A migration whose secrets are not kept could never run: it is not left behind.
      await this.client.send(new DeleteCommand({ TableName: this.tableName, Key: this.key(state.id, STATE_SK) }));
      await this.deleteParts(state.id, written);
      throw err;
    }
  }

  async get(id: string): Promise<MigrationState> {
    checkMigrationId(id);
    // The chunks named by the item read may be replaced by a write that lands in between: read again.
    for (let attempt = 1; ; attempt++) {
      const item = await this.getItem(this.key(id, STATE_SK));
      if (!item) throw this.notFound(id);
      try {
        return await this.assemble(id, item);
      } catch (err) {
        if (!(err instanceof PartMissing) || attempt >= 3) throw this.unreadable(id, err);
      }
    }
  }

  private unreadable(id: string, err: unknown) {
    return new StateUnreadableError(
      `the state of migration ${id} in ${this.where} is unreadable (${errorMessage(err)})`,
      {
        cause: err,
        field: '--id',
        migrationId: id,
        hint: `restore the table from its point-in-time backup; the migration's objects on the servers are named pgferry_${id}, and \`pgferry status\` lists it as unreadable until then`,
      },
    );
  }

  async secrets(id: string): Promise<MigrationSecrets> {
    return this.vault.resolve(await this.get(id));
  }

  async updateSecrets(id: string, secrets: MigrationSecrets): Promise<void> {
    await this.get(id);
    if (!this.vault.store)
      throw new PgferryError(`the connection secrets of migration ${id} are not kept by pgferry`, {
        field: '--id',
        migrationId: id,
        hint: 'change them where its config points (the Secrets Manager secrets named by ARN)',
      });
    await this.vault.store(id, secrets);
  }

  async removeSecrets(id: string): Promise<void> {
    await this.vault.remove?.(checkMigrationId(id));
  }

  async put(state: MigrationState): Promise<MigrationState> {
    const id = checkMigrationId(state.id);
    const stored = await this.getItem(this.key(id, STATE_SK));
    if (!stored) throw this.notFound(id);
    if (stored.version !== state.version) throw versionConflictError(id, Number(stored.version), state.version);
    const next: MigrationState = { ...state, version: state.version + 1, updatedAt: new Date().toISOString() };
    const before = (stored.parts ?? {}) as Record<string, PartRef>;
    const { item, written } = await this.writeParts(next, before);
    try {
      await this.client.send(
        new PutCommand({
          TableName: this.tableName,
          Item: item,
          ConditionExpression: 'version = :read',
          ExpressionAttributeValues: { ':read': state.version },
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      );
    } catch (err) {
      if (!isConditionFailure(err)) throw err; // it may have landed: its chunks stay
      // Refused because it had landed (the SDK sent it again after a reply that was lost): a success,
      // whose chunks the item names. Removing them would leave the migration unreadable.
      if (!landed(err, item)) {
        await this.deleteParts(id, written).catch(() => {});
        const now = oldAttribute(err, 'version');
        if (now === undefined) throw this.notFound(id);
        throw versionConflictError(id, Number(now), state.version);
      }
    }
    // Only now are the replaced chunks no longer named by the migration item. A failure here leaves
    // chunks nothing reads: harmless, so it does not fail the write that succeeded.
    const after = item.parts as Record<string, PartRef>;
    const replaced = Object.fromEntries(Object.entries(before).filter(([f, ref]) => after[f]?.set !== ref.set));
    await this.deleteParts(id, replaced).catch(() => {});
    if (next.version % SWEEP_EVERY === 0) await this.sweep(id).catch(() => {});
    return next;
  }

  async list(): Promise<MigrationListing> {
    const items = await this.allPages((ExclusiveStartKey) =>
      this.client.send(
        new ScanCommand({
          TableName: this.tableName,
          FilterExpression: 'sk = :state AND begins_with(pk, :migration)',
          ProjectionExpression: 'pk',
          ExpressionAttributeValues: { ':state': STATE_SK, ':migration': 'MIGRATION#' },
          ExclusiveStartKey,
        }),
      ),
    );
    const ids = items.map((item) => String(item.pk).slice('MIGRATION#'.length));
    return readListing(ids, (id) => this.get(id));
  }

  /**
   * A lease on migration `id` for this holder until the release is called, renewed while held. A lease
   * another holder keeps renewing is refused; one that lapsed (its holder died or stalled) is taken over.
   */
  async claim(id: string, holder: string = this.holder, options: ClaimOptions = {}): Promise<() => Promise<void>> {
    checkMigrationId(id);
    const me = randomUUID();
    const since = new Date(this.now()).toISOString();
    const now = this.now();
    try {
      await this.client.send(
        new PutCommand({
          TableName: this.tableName,
          Item: { ...this.key(id, LEASE_SK), holder: me, who: holder, since, ...this.leaseUntil(now) },
          ConditionExpression: 'attribute_not_exists(pk) OR leaseUntil < :now',
          ExpressionAttributeValues: { ':now': now },
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      );
    } catch (err) {
      if (!isConditionFailure(err)) throw err;
      // (Refused because it had landed: the SDK sent it again after a lost reply. The lease is ours.)
      if (oldAttribute(err, 'holder') !== me) {
        const until = Number(oldAttribute(err, 'leaseUntil'));
        throw claimedError(
          id,
          `${oldAttribute(err, 'who') ?? 'unknown holder'}, since ${oldAttribute(err, 'since') ?? '?'}, lease until ${Number.isFinite(until) ? new Date(until).toISOString() : '?'}`,
          `A lease its holder stops renewing lapses by itself ${Math.ceil(this.leaseMs / 1000)} s after its last renewal.`,
        );
      }
    }
    let released = false;
    const renewal = setInterval(() => {
      this.renew(id, me).catch((err) => {
        // Transient: the next tick tries again while the lease lasts. Released: a late renewal found no lease.
        if (!isConditionFailure(err) || released) return;
        clearInterval(renewal);
        const message = `the lease on migration ${id} was taken over by another holder after it lapsed`;
        this.onLeaseLost?.(id, message);
        options.onLost?.(message);
      });
    }, this.renewEveryMs);
    renewal.unref();
    return async () => {
      released = true;
      clearInterval(renewal);
      await this.client
        .send(
          new DeleteCommand({
            TableName: this.tableName,
            Key: this.key(id, LEASE_SK),
            ConditionExpression: 'holder = :me',
            ExpressionAttributeValues: { ':me': me },
          }),
        )
        .catch((err) => {
          if (!isConditionFailure(err)) throw err; // no longer ours: nothing to release
        });
    };
  }

  private leaseUntil(now: number) {
    const until = now + this.leaseMs;
    // expiresAt (seconds, the table's TTL) only tidies up: the condition reads leaseUntil, exact to the ms.
    return { leaseUntil: until, expiresAt: Math.ceil(until / 1000) + 60 };
  }

  private async renew(id: string, me: string): Promise<void> {
    const { leaseUntil, expiresAt } = this.leaseUntil(this.now());
    await this.client.send(
      new UpdateCommand({
        TableName: this.tableName,
        Key: this.key(id, LEASE_SK),
        UpdateExpression: 'SET leaseUntil = :until, expiresAt = :expires',
        ConditionExpression: 'holder = :me',
        ExpressionAttributeValues: { ':until': leaseUntil, ':expires': expiresAt, ':me': me },
      }),
    );
  }

  /**
   * Point `key` at migration `id`. A key held by another migration that is not over is refused; one
   * whose migration is over (or gone) is taken over, as a target instance may be reused.
   */
  async correlate(key: string, id: string): Promise<void> {
    checkCorrelationKey(key);
    checkMigrationId(id);
    for (let attempt = 0; ; attempt++) {
      const owner = (await this.getItem({ pk: key, sk: CORRELATION_SK }))?.migrationId as string | undefined;
      if (owner === id) return;
      if (owner !== undefined) {
        const ownerItem = await this.getItem(this.key(owner, STATE_SK));
        if (ownerItem && !FINISHED_STATUSES.includes(ownerItem.status as never))
          throw correlationTakenError(key, owner, id);
      }
      try {
        await this.putForMigration(id, {
          Item: { pk: key, sk: CORRELATION_SK, migrationId: id, at: new Date(this.now()).toISOString() },
          // Exactly the owner read above: a third migration taking it meanwhile is read again.
          ConditionExpression: owner === undefined ? 'attribute_not_exists(pk)' : 'migrationId = :owner',
          ExpressionAttributeValues: owner === undefined ? undefined : { ':owner': owner },
        });
        return;
      } catch (err) {
        if (!cancelledBy(err, 1) || attempt >= 3) throw err;
      }
    }
  }

  async findCorrelation(key: string): Promise<string | undefined> {
    const item = await this.getItem({ pk: checkCorrelationKey(key), sk: CORRELATION_SK });
    return item?.migrationId as string | undefined;
  }

  async putTaskToken(id: string, step: string, token: string): Promise<void> {
    checkMigrationId(id);
    checkTaskStep(step);
    checkTaskToken(token);
    await this.putForMigration(id, {
      Item: { ...this.key(id, tokenSk(step)), token, at: new Date(this.now()).toISOString() },
    });
  }

  /** Write `put` only while migration `id` exists (its own condition, if any, is the transaction's second). */
  private async putForMigration(
    id: string,
    put: { Item: Item; ConditionExpression?: string; ExpressionAttributeValues?: Record<string, unknown> },
  ): Promise<void> {
    try {
      await this.client.send(
        new TransactWriteCommand({
          TransactItems: [
            {
              ConditionCheck: {
                TableName: this.tableName,
                Key: this.key(id, STATE_SK),
                ConditionExpression: 'attribute_exists(pk)',
              },
            },
            { Put: { TableName: this.tableName, ...put } },
          ],
        }),
      );
    } catch (err) {
      if (cancelledBy(err, 0)) throw this.notFound(id);
      throw err;
    }
  }

  /** One conditional delete: of two takers, DynamoDB returns the old item to one only. */
  async takeTaskToken(id: string, step: string): Promise<string | undefined> {
    checkMigrationId(id);
    checkTaskStep(step);
    const out = await this.client
      .send(
        new DeleteCommand({
          TableName: this.tableName,
          Key: this.key(id, tokenSk(step)),
          ConditionExpression: 'attribute_exists(pk)',
          ReturnValues: 'ALL_OLD',
        }),
      )
      .catch((err) => {
        if (isConditionFailure(err)) return undefined;
        throw err;
      });
    return out?.Attributes?.token as string | undefined;
  }

  /**
   * Samples into their minute's item (list_append: no read, one write per minute touched). A sample
   * that opens a new minute also thins the minutes past the hour of full samples (lag-series.ts).
   * A minute's item takes LAG_SERIES.maxPerBucket samples at most (far under the item limit).
   */
  async appendLag(id: string, samples: LagSample[]): Promise<void> {
    checkMigrationId(id);
    const { buckets, newestAt } = bucketed(samples);
    let opened = false;
    for (const [bucket, list] of buckets) {
      const key = this.key(id, lagRawSk(bucket));
      let room = list;
      for (let attempt = 1; room.length; attempt++) {
        try {
          const out = await this.client.send(
            new UpdateCommand({
              TableName: this.tableName,
              Key: key,
              UpdateExpression: 'SET samples = list_append(if_not_exists(samples, :none), :new)',
              ConditionExpression: 'attribute_not_exists(samples) OR size(samples) <= :room',
              ExpressionAttributeValues: {
                ':none': [],
                ':new': room.map((p) => ({ ...p })),
                ':room': LAG_SERIES.maxPerBucket - room.length,
              },
              ReturnValues: 'UPDATED_OLD',
            }),
          );
          if (!out.Attributes?.samples) opened = true;
          break;
        } catch (err) {
          if (!isConditionFailure(err) || attempt >= 3) throw err;
          // The minute is (nearly) full: what fits goes in, the rest is left out of the series (the state keeps its own).
          const held = ((await this.getItem(key))?.samples as unknown[] | undefined)?.length ?? 0;
          room = room.slice(0, Math.max(0, LAG_SERIES.maxPerBucket - held));
        }
      }
    }
    if (opened && newestAt) await this.thinLag(id, newestAt);
  }

  private async thinLag(id: string, newestAt: string): Promise<void> {
    const raw = await this.allPages((ExclusiveStartKey) =>
      this.client.send(
        new QueryCommand({
          TableName: this.tableName,
          KeyConditionExpression: 'pk = :pk AND begins_with(sk, :raw)',
          ExpressionAttributeValues: { ':pk': migrationPk(id), ':raw': lagRawSk('') },
          ProjectionExpression: 'sk',
          ExclusiveStartKey,
        }),
      ),
    );
    const buckets = raw.map((item) => String(item.sk).slice(lagRawSk('').length));
    for (const bucket of bucketsToThin(buckets, newestAt)) {
      const item = await this.getItem(this.key(id, lagRawSk(bucket)));
      const list = (item?.samples ?? []) as LagSample[];
      // Written before the minute's samples go: a failure in between leaves both, which the reader merges.
      if (list.length)
        await this.client.send(
          new PutCommand({
            TableName: this.tableName,
            Item: { ...this.key(id, lagThinnedSk(bucket)), sample: peakOfBucket(list) },
          }),
        );
      await this.client.send(new DeleteCommand({ TableName: this.tableName, Key: this.key(id, lagRawSk(bucket)) }));
    }
  }

  async lagSeries(id: string): Promise<LagSample[]> {
    checkMigrationId(id);
    const items = await this.allPages((ExclusiveStartKey) =>
      this.client.send(
        new QueryCommand({
          TableName: this.tableName,
          KeyConditionExpression: 'pk = :pk AND begins_with(sk, :lag)',
          ExpressionAttributeValues: { ':pk': migrationPk(id), ':lag': LAG_PREFIX },
          ExclusiveStartKey,
        }),
      ),
    );
    const thinned = items.filter((i) => i.sample).map((i) => i.sample as LagSample);
    const raw = items.flatMap((i) => (i.samples ?? []) as LagSample[]);
    return mergeLagSeries(thinned, raw);
  }

  /** A named plan: one item, its validated JSON in `plan`. */
  async putPlan(input: MigrationPlanInput): Promise<MigrationPlan> {
    const plan = parseMigrationPlan(input);
    await this.client.send(
      new PutCommand({
        TableName: this.tableName,
        Item: {
          pk: planPk(plan.name),
          sk: PLAN_SK,
          name: plan.name,
          plan: JSON.stringify(plan),
          at: new Date(this.now()).toISOString(),
        },
      }),
    );
    return plan;
  }

  async getPlan(name: string): Promise<MigrationPlan | undefined> {
    const item = await this.getItem({ pk: planPk(checkPlanName(name)), sk: PLAN_SK });
    return item ? this.readPlan(name, item) : undefined;
  }

  async listPlans(): Promise<MigrationPlan[]> {
    const items = await this.allPages((ExclusiveStartKey) =>
      this.client.send(
        new ScanCommand({
          TableName: this.tableName,
          FilterExpression: 'sk = :plan AND begins_with(pk, :prefix)',
          ExpressionAttributeValues: { ':plan': PLAN_SK, ':prefix': 'PLAN#' },
          ConsistentRead: true,
          ExclusiveStartKey,
        }),
      ),
    );
    return items
      .map((item) => this.readPlan(String(item.pk).slice('PLAN#'.length), item))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  private readPlan(name: string, item: Item): MigrationPlan {
    const where = `${this.where} (item ${planPk(name)})`;
    let value: unknown;
    try {
      value = JSON.parse(String(item.plan));
    } catch (err) {
      throw new InvalidInputError(`the stored plan ${name} in ${where} is not JSON (${errorMessage(err)})`, {
        field: 'plan',
        hint: 'store it again with `pgferry plan put FILE --table ...`',
      });
    }
    return storedPlan(name, value, where);
  }

  private key(id: string, sk: string): Key {
    return { pk: migrationPk(id), sk };
  }

  private async getItem(key: Key): Promise<Item | undefined> {
    const out = await this.client.send(new GetCommand({ TableName: this.tableName, Key: key, ConsistentRead: true }));
    return out.Item;
  }

  /**
   * The migration item for `state` (redacted once more, whatever a driver put in a message), after
   * writing the chunks of every large field that changed since `before`; `written` names those chunks.
   */
  private async writeParts(
    state: MigrationState,
    before: Record<string, PartRef>,
  ): Promise<{ item: Item; written: Record<string, PartRef> }> {
    const redacted = JSON.parse(redactedJson(state)) as Record<string, unknown>;
    const { body, parts } = splitState(redacted);
    const refs: Record<string, PartRef> = {};
    const written: Record<string, PartRef> = {};
    const chunks: Item[] = [];
    const writtenAt = this.now();
    for (const [field, json] of Object.entries(parts)) {
      const hash = sha256(json);
      const kept = before[field];
      if (kept?.sha256 === hash) {
        refs[field] = kept;
        continue;
      }
      const set = randomUUID().replaceAll('-', '').slice(0, 16);
      const pieces = splitUtf8(json, CHUNK_BYTES);
      pieces.forEach((data, i) => {
        chunks.push({ ...this.key(state.id, chunkSk(field, set, i)), data, writtenAt });
      });
      refs[field] = { set, chunks: pieces.length, bytes: utf8Bytes(json), sha256: hash };
      written[field] = refs[field];
      this.remember(state.id, field, set, json);
    }
    const item: Item = {
      ...this.key(state.id, STATE_SK),
      id: state.id,
      version: state.version,
      status: state.status,
      phase: state.phase,
      createdAt: state.createdAt,
      updatedAt: state.updatedAt,
      body: JSON.stringify(body),
      parts: refs,
      writeId: randomUUID(),
    };
    const size = utf8Bytes(JSON.stringify(item));
    if (size > DYNAMO_ITEM_LIMIT_BYTES - 16 * 1024)
      throw new PgferryError(`the state of migration ${state.id} is too large for one DynamoDB item (${size} bytes)`, {
        migrationId: state.id,
        hint: 'this is a pgferry bug: a field of the state should be stored as a part of its own',
      });
    try {
      await this.batchWrite(chunks.map((Item) => ({ PutRequest: { Item } })));
      // The sweep takes unnamed chunks of this age for a dead writer's: one this slow does not commit.
      if (this.now() - writtenAt > COMMIT_WINDOW_MS)
        throw new PgferryError(
          `writing the state of migration ${state.id} took longer than ${COMMIT_WINDOW_MS / 60_000} minutes; not committed`,
          { migrationId: state.id, hint: 'DynamoDB is throttling or unreachable; re-run the command' },
        );
    } catch (err) {
      await this.deleteParts(state.id, written).catch(() => {});
      throw err;
    }
    return { item, written };
  }

  /**
   * Remove the chunks no migration item names: left by a writer that died between its chunks and its
   * migration item, or by a delete that failed. Only chunks older than a commit window and then some
   * (ORPHAN_AGE_MS): a younger one may belong to a write about to land. Returns how many it removed.
   */
  async sweep(id: string): Promise<number> {
    const pk = migrationPk(checkMigrationId(id));
    const chunks = (await this.allPages((ExclusiveStartKey) =>
      this.client.send(
        new QueryCommand({
          TableName: this.tableName,
          KeyConditionExpression: 'pk = :pk AND begins_with(sk, :part)',
          ProjectionExpression: 'sk, writtenAt',
          ExpressionAttributeValues: { ':pk': pk, ':part': 'PART#' },
          ConsistentRead: true,
          ExclusiveStartKey,
        }),
      ),
    )) as { sk: string; writtenAt?: number }[];
    // Read after the chunks: a set named by then and written before the query is in both.
    const parts = ((await this.getItem(this.key(id, STATE_SK)))?.parts ?? {}) as Record<string, PartRef>;
    const named = new Set(Object.entries(parts).map(([field, ref]) => chunkSk(field, ref.set, 0).slice(0, -5)));
    const old = this.now() - ORPHAN_AGE_MS;
    const orphans = chunks.filter((c) => !named.has(c.sk.slice(0, -5)) && !((c.writtenAt ?? 0) >= old));
    await this.batchWrite(orphans.map((c) => ({ DeleteRequest: { Key: { pk, sk: c.sk } } })));
    return orphans.length;
  }

  private async deleteParts(id: string, parts: Record<string, PartRef>): Promise<void> {
    const keys = Object.entries(parts).flatMap(([field, ref]) =>
      Array.from({ length: ref.chunks }, (_, i) => this.key(id, chunkSk(field, ref.set, i))),
    );
    await this.batchWrite(keys.map((Key) => ({ DeleteRequest: { Key } })));
  }

  /** Every item of a Scan or Query, page after page. */
  private async allPages(
    page: (start: Record<string, unknown> | undefined) => Promise<{ Items?: Item[]; LastEvaluatedKey?: Item }>,
  ): Promise<Item[]> {
    const items: Item[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const out = await page(start);
      items.push(...(out.Items ?? []));
      start = out.LastEvaluatedKey;
    } while (start);
    return items;
  }

  private async batchWrite(requests: Record<string, unknown>[]): Promise<void> {
    await this.inBatches(requests, BATCH_WRITE, 'writes to', async (batch) => {
      const out = await this.client.send(new BatchWriteCommand({ RequestItems: { [this.tableName]: batch as never } }));
      return (out.UnprocessedItems?.[this.tableName] ?? []) as Record<string, unknown>[];
    });
  }

  private async batchGet(keys: Key[]): Promise<Item[]> {
    const items: Item[] = [];
    await this.inBatches(keys, BATCH_GET, 'reads of', async (batch) => {
      const out = await this.client.send(
        new BatchGetCommand({ RequestItems: { [this.tableName]: { Keys: batch, ConsistentRead: true } } }),
      );
      items.push(...(out.Responses?.[this.tableName] ?? []));
      return (out.UnprocessedKeys?.[this.tableName]?.Keys ?? []) as Key[];
    });
    return items;
  }

  /** `all` in batches of `size`; what DynamoDB leaves unprocessed (throttled) is sent again after a growing pause. */
  private async inBatches<T>(all: T[], size: number, what: string, send: (batch: T[]) => Promise<T[]>) {
    for (let i = 0; i < all.length; i += size) {
      let pending = all.slice(i, i + size);
      for (let attempt = 1; pending.length > 0; attempt++) {
        if (attempt > BATCH_ATTEMPTS)
          throw new PgferryError(
            `DynamoDB left ${pending.length} ${what} ${this.where} unprocessed ${BATCH_ATTEMPTS} times (throttled)`,
            { hint: "raise the table's capacity or use on-demand capacity, then re-run the command" },
          );
        if (attempt > 1) await pause(25 * 2 ** attempt);
        pending = await send(pending);
      }
    }
  }

  /** The state from its migration item and the chunks it names. */
  private async assemble(id: string, item: Item): Promise<MigrationState> {
    const state = JSON.parse(String(item.body)) as Record<string, unknown>;
    const parts = (item.parts ?? {}) as Record<string, PartRef>;
    const missing = Object.entries(parts).filter(([field, ref]) => !this.parts.has(partKey(id, field, ref.set)));
    const keys = missing.flatMap(([field, ref]) =>
      Array.from({ length: ref.chunks }, (_, i) => this.key(id, chunkSk(field, ref.set, i))),
    );
    const bySk = new Map((await this.batchGet(keys)).map((c) => [String(c.sk), String(c.data)]));
    for (const [field, ref] of missing) {
      let json = '';
      for (let i = 0; i < ref.chunks; i++) {
        const data = bySk.get(chunkSk(field, ref.set, i));
        if (data === undefined) throw new PartMissing(`chunk ${i + 1} of ${ref.chunks} of its ${field} is missing`);
        json += data;
      }
      if (sha256(json) !== ref.sha256) throw new Error(`its ${field} does not match its checksum`);
      this.remember(id, field, ref.set, json);
    }
    for (const [field, ref] of Object.entries(parts))
      state[field] = JSON.parse(this.parts.get(partKey(id, field, ref.set))!);
    const migration = state as unknown as MigrationState;
    if (migration.id !== id || typeof migration.version !== 'number' || !migration.config)
      throw new Error('not a migration');
    return migration;
  }

  /**
   * A part's chunks are never changed once written (a new value is a new set), so what was read or
   * written once is what DynamoDB holds for as long as a migration item names it: a read fetches only
   * the parts that changed, not the table list of 5,000 tables at every update.
   */
  private remember(id: string, field: string, set: string, json: string) {
    if (this.partBytes + json.length > PART_CACHE_CHARS) {
      this.parts.clear();
      this.partBytes = 0;
    }
    this.parts.set(partKey(id, field, set), json);
    this.partBytes += json.length;
  }
}

const partKey = (id: string, field: string, set: string) => `${id}#${field}#${set}`;
/** What the part cache of one store holds at most (characters of JSON) before it starts over. */
const PART_CACHE_CHARS = 64 * 1024 * 1024;

class PartMissing extends Error {
  override name = 'PartMissing';
}
