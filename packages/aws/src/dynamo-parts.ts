/**
 * How a migration's state is laid out over DynamoDB items. The migration item stays small (status,
 * phase, timestamps, LSNs, version); every field whose JSON is large (the table list, lag samples,
 * events, verify results) is a part of its own, cut into chunk items, so that a migration of thousands
 * of tables stays under DynamoDB's 400 KB item limit.
 */
import { createHash } from 'node:crypto';

/** The table's key and TTL attribute names; the stack defines the table from these. */
export const MIGRATION_TABLE_KEYS = {
  partitionKey: 'pk',
  sortKey: 'sk',
  /** Epoch seconds; DynamoDB deletes an item some time after it (leases). */
  timeToLive: 'expiresAt',
} as const;

/** DynamoDB's item size limit (attribute names and values, UTF-8). */
export const DYNAMO_ITEM_LIMIT_BYTES = 400 * 1024;

/**
 * A field whose JSON is longer goes to a part of its own. Small enough that the migration item, with
 * its few dozen fields, stays far under the limit; large enough that a status update writes one item.
 */
export const INLINE_FIELD_MAX_BYTES = 8 * 1024;

/** The text one chunk item holds, leaving room under the limit for its key and attribute names. */
export const CHUNK_BYTES = 300 * 1024;

export const migrationPk = (id: string) => `MIGRATION#${id}`;
export const STATE_SK = 'STATE';
export const LEASE_SK = 'LEASE';
export const CORRELATION_SK = 'CORRELATION';
/** A named plan's item: `PLAN#<name>` / `PLAN` (a plan name never starts with MIGRATION# or a correlation prefix). */
export const planPk = (name: string) => `PLAN#${name}`;
export const PLAN_SK = 'PLAN';
export const tokenSk = (step: string) => `TOKEN#${step}`;
/**
 * The whole lag series (core's lag-series.ts): an item per minute of samples (`LAG#RAW#<minute>`,
 * `samples` a list appended to) and, for minutes past the hour of full samples, an item with their
 * peak (`LAG#MIN#<minute>`). Apart from the migration item, which they would soon outgrow.
 */
export const LAG_PREFIX = 'LAG#';
export const lagRawSk = (bucket: string) => `LAG#RAW#${bucket}`;
export const lagThinnedSk = (bucket: string) => `LAG#MIN#${bucket}`;
/** `set` is new for every write of a part: a write that loses its version check can remove its own chunks only. */
export const chunkSk = (field: string, set: string, index: number) =>
  `PART#${field}#${set}#${String(index).padStart(5, '0')}`;

/** Where a part's chunks are, as the migration item records it. */
export interface PartRef {
  set: string;
  chunks: number;
  bytes: number;
  /** Of the JSON: a write whose part did not change keeps the chunks it has. */
  sha256: string;
}

export function utf8Bytes(text: string): number {
  return Buffer.byteLength(text, 'utf8');
}

export function sha256(text: string): string {
  return createHash('sha256').update(text).digest('base64url');
}

/** `text` cut into pieces of at most `maxBytes` of UTF-8 each, never inside a character. */
export function splitUtf8(text: string, maxBytes: number): string[] {
  const pieces: string[] = [];
  let start = 0;
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    // A surrogate pair is one 4-byte character: counted and kept together at its high half.
    const pair = code >= 0xd800 && code <= 0xdbff && i + 1 < text.length;
    const size = code < 0x80 ? 1 : code < 0x800 ? 2 : pair ? 4 : 3;
    if (bytes + size > maxBytes) {
      pieces.push(text.slice(start, i));
      start = i;
      bytes = 0;
    }
    bytes += size;
    if (pair) i++;
  }
  if (start < text.length || pieces.length === 0) pieces.push(text.slice(start));
  return pieces;
}

/** A state split into the migration item's body and its large parts (each as JSON). */
export interface SplitState {
  body: Record<string, unknown>;
  parts: Record<string, string>;
}

export function splitState(state: Record<string, unknown>, inlineMax = INLINE_FIELD_MAX_BYTES): SplitState {
  const body: Record<string, unknown> = {};
  const parts: Record<string, string> = {};
  for (const [key, value] of Object.entries(state)) {
    if (value === undefined) continue;
    const json = JSON.stringify(value);
    if (utf8Bytes(json) > inlineMax) parts[key] = json;
    else body[key] = value;
  }
  return { body, parts };
}
