/**
 * A live application stand-in: commits one INSERT after another through whatever URL the switch file
 * holds, reconnecting when its session is ended or made read-only. It remembers every acknowledged
 * write so the caller can check, exactly, that none was lost, and checks read-your-writes continuity
 * each time it lands on a different server.
 */
import { readFileSync } from 'node:fs';
import { connectionSettings } from '@pgferry/postgres';
import pg from 'pg';

export interface WriterOptions {
  /** File holding the URL to use (re-read on every reconnect)... */
  switchFile?: string;
  /** ...or a fixed URL. */
  url?: string;
  /** Table with (id bigserial primary key, writer text, payload text). */
  table?: string;
  name?: string;
  /** Pause between writes. */
  intervalMs?: number;
}

export interface WriterStats {
  acked: number;
  failedAttempts: number;
  reconnects: number;
  /** Longest time between two acknowledged writes. */
  maxPauseMs: number;
  /** When that longest pause ended (epoch ms; 0: no write yet). */
  maxPauseEndedAt: number;
  /** Acknowledged writes not visible after moving to another server (should be 0). */
  readYourWritesViolations: number;
  servers: string[];
  errors: Record<string, number>;
}

export class LiveWriter {
  readonly ackedWrites = new Map<number, string>();
  private running = false;
  private loop?: Promise<void>;
  private client?: pg.Client;
  private currentUrl?: string;
  private lastAckAt = 0;
  private lastAckId?: number;
  readonly stats: WriterStats = {
    acked: 0,
    failedAttempts: 0,
    reconnects: 0,
    maxPauseMs: 0,
    maxPauseEndedAt: 0,
    readYourWritesViolations: 0,
    servers: [],
    errors: {},
  };

  constructor(private readonly options: WriterOptions) {}

  private url(): string {
    if (this.options.switchFile) return readFileSync(this.options.switchFile, 'utf8').trim();
    if (this.options.url) return this.options.url;
    throw new Error('LiveWriter needs switchFile or url');
  }

  private async connect() {
    const url = this.url();
    // The application reads the URL as libpq would (sslmode=require: encrypted, not verified).
    const client = new pg.Client({
      ...(await connectionSettings(url)),
      application_name: `writer:${this.options.name ?? 'w'}`,
      connectionTimeoutMillis: 2000,
    });
    client.on('error', () => {});
    await client.connect();
    if (url !== this.currentUrl) {
      const port = new URL(url).port;
      this.stats.servers.push(port);
      // Read-your-writes across the switch: the last write acknowledged elsewhere must be here.
      if (this.lastAckId !== undefined) {
        const r = await client.query(`SELECT payload FROM ${this.table} WHERE id = $1`, [this.lastAckId]);
        if (r.rows[0]?.payload !== this.ackedWrites.get(this.lastAckId)) this.stats.readYourWritesViolations++;
      }
      this.currentUrl = url;
    }
    this.client = client;
  }

  private get table() {
    return this.options.table ?? 'writes';
  }

  start() {
    this.running = true;
    this.lastAckAt = Date.now();
    this.loop = (async () => {
      let seq = 0;
      while (this.running) {
        try {
          if (!this.client) await this.connect();
          const payload = `${this.options.name ?? 'w'}-${seq++}-${Date.now()}`;
          const r = await this.client!.query(
            `INSERT INTO ${this.table} (writer, payload) VALUES ($1, $2) RETURNING id`,
            [this.options.name ?? 'w', payload],
          );
          const id = Number(r.rows[0].id);
          const now = Date.now();
          if (now - this.lastAckAt > this.stats.maxPauseMs)
            Object.assign(this.stats, { maxPauseMs: now - this.lastAckAt, maxPauseEndedAt: now });
          this.lastAckAt = now;
          this.lastAckId = id;
          this.ackedWrites.set(id, payload);
          this.stats.acked++;
        } catch (err) {
          this.stats.failedAttempts++;
          const code = (err as { code?: string }).code ?? (err as Error).message.slice(0, 40);
          this.stats.errors[code] = (this.stats.errors[code] ?? 0) + 1;
          await this.client?.end().catch(() => {});
          this.client = undefined;
          this.stats.reconnects++;
          await new Promise((r) => setTimeout(r, 5));
        }
        if (this.options.intervalMs) await new Promise((r) => setTimeout(r, this.options.intervalMs));
      }
      await this.client?.end().catch(() => {});
    })();
  }

  async stop(): Promise<WriterStats> {
    this.running = false;
    await this.loop;
    return this.stats;
  }

  /** Acknowledged writes missing (or different) on the server at `url`. */
  async lostWrites(url: string): Promise<number[]> {
    const client = new pg.Client(await connectionSettings(url));
    await client.connect();
    try {
      const ids = [...this.ackedWrites.keys()];
      const r = await client.query<{ id: string; payload: string }>(
        `SELECT id, payload FROM ${this.table} WHERE id = ANY($1::bigint[])`,
        [ids],
      );
      const found = new Map(r.rows.map((row) => [Number(row.id), row.payload]));
      return ids.filter((id) => found.get(id) !== this.ackedWrites.get(id));
    } finally {
      await client.end();
    }
  }
}
