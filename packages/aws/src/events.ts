/**
 * pgferry's own events on its EventBridge bus. PutEvents is not all-or-nothing: it answers 200 with
 * some entries failed (FailedEntryCount), so every entry is checked, the failed ones are sent again,
 * and those that still fail are reported by a typed error, never dropped.
 */
import { type EventBridgeClient, PutEventsCommand, type PutEventsRequestEntry } from '@aws-sdk/client-eventbridge';
import {
  EVENT_BUS_NAME,
  EVENT_SOURCE,
  type EventPublisher,
  errorMessage,
  eventDetailProblems,
  PgferryError,
  type PgferryEvent,
  redactedJson,
} from '@pgferry/core';

/** PutEvents takes at most 10 entries per call. */
export const PUT_EVENTS_BATCH = 10;

/** Some events could not be published: which (detail-type and migration) and why. */
export class EventPublishFailedError extends PgferryError {
  override name = 'EventPublishFailedError';
  constructor(
    message: string,
    readonly failures: { type: string; migrationId: string; reason: string }[],
    options: { cause?: unknown } = {},
  ) {
    super(message, options);
  }
}

export interface EventBridgePublisherOptions {
  busName?: string;
  /** Sends of one entry, the first included, before it is reported as failed. */
  attempts?: number;
  /** Waits between attempts (ms); injected so that tests do not sleep. */
  backoff?: (attempt: number) => Promise<void>;
}

const defaultBackoff = (attempt: number) => new Promise<void>((r) => setTimeout(r, 100 * 2 ** attempt));

interface Pending {
  event: PgferryEvent;
  entry: PutEventsRequestEntry;
  reason?: string;
}

export class EventBridgePublisher implements EventPublisher {
  private readonly busName: string;
  private readonly attempts: number;
  private readonly backoff: (attempt: number) => Promise<void>;

  constructor(
    private readonly client: EventBridgeClient,
    options: EventBridgePublisherOptions = {},
  ) {
    this.busName = options.busName ?? EVENT_BUS_NAME;
    this.attempts = options.attempts ?? 3;
    this.backoff = options.backoff ?? defaultBackoff;
  }

  async publish(events: PgferryEvent[]): Promise<void> {
    const pending = events.map((event) => this.entry(event));
    const failed: Pending[] = [];
    for (let i = 0; i < pending.length; i += PUT_EVENTS_BATCH) {
      failed.push(...(await this.sendBatch(pending.slice(i, i + PUT_EVENTS_BATCH))));
    }
    if (failed.length === 0) return;
    const failures = failed.map((p) => ({
      type: p.event.type,
      migrationId: p.event.detail.migrationId,
      reason: p.reason ?? 'unknown',
    }));
    throw new EventPublishFailedError(
      `${failed.length} of ${events.length} events could not be published on bus ${this.busName}: ${failures
        .map((f) => `${f.type} of ${f.migrationId} (${f.reason})`)
        .join('; ')}`,
      failures,
    );
  }

  /** The entry for one event, its detail checked against its documented schema and redacted. */
  private entry(event: PgferryEvent): Pending {
    const problems = eventDetailProblems(event.type, event.detail);
    if (problems.length)
      throw new EventPublishFailedError(
        `a "${event.type}" event does not match its schema (docs/events/): ${problems.join('; ')}`,
        [{ type: event.type, migrationId: String(event.detail?.migrationId), reason: 'invalid detail' }],
      );
    const at = typeof event.detail.at === 'string' ? new Date(event.detail.at) : undefined;
    return {
      event,
      entry: {
        EventBusName: this.busName,
        Source: EVENT_SOURCE,
        DetailType: event.type,
        Detail: redactedJson(event.detail),
        ...(at ? { Time: at } : {}),
      },
    };
  }

  /** Send one batch until every entry is in or out of attempts; resolves with the entries that failed. */
  private async sendBatch(batch: Pending[]): Promise<Pending[]> {
    let pending = batch;
    for (let attempt = 0; attempt < this.attempts && pending.length; attempt++) {
      if (attempt > 0) await this.backoff(attempt);
      let results: { ErrorCode?: string; ErrorMessage?: string }[];
      try {
        const out = await this.client.send(new PutEventsCommand({ Entries: pending.map((p) => p.entry) }));
        results = out.Entries ?? [];
      } catch (err) {
        // The SDK retried the call already; the whole batch failed this attempt.
        for (const p of pending) p.reason = errorMessage(err);
        continue;
      }
      // Result entries are in request order; an entry with an ErrorCode (or none at all) is not in.
      pending = pending.filter((p, i) => {
        const r = results[i];
        if (r && !r.ErrorCode) return false;
        p.reason = r ? `${r.ErrorCode}: ${r.ErrorMessage ?? ''}`.trim() : 'no result for the entry';
        return true;
      });
    }
    return pending;
  }
}
