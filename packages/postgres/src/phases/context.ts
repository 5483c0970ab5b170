import type { MigrationConfig, MigrationState } from '@pgferry/core';
import type { Db } from '../db';

/** What every phase gets: config with real URLs, open connections, the state and a way to persist it. */
export interface PhaseContext {
  config: MigrationConfig;
  source: Db;
  target: Db;
  state: MigrationState;
  /** Apply a change to the state and persist it (optimistic versioning lives in the store). */
  update(change: (state: MigrationState) => void): Promise<void>;
  log(message: string): void;
  /** Progress of long steps: rows and bytes copied so far. */
  progress?(p: Progress): void;
  /** Directory for artifacts (schema dumps, dump strategy data). */
  artifactDir: string;
}

export function sourceMajor(ctx: PhaseContext): Promise<number> {
  return ctx.source
    .one<{ v: number }>("SELECT current_setting('server_version_num')::int / 10000 AS v")
    .then((r) => r.v);
}
export function targetMajor(ctx: PhaseContext): Promise<number> {
  return ctx.target
    .one<{ v: number }>("SELECT current_setting('server_version_num')::int / 10000 AS v")
    .then((r) => r.v);
}

export interface Progress {
  step: string;
  done: number;
  total: number;
  unit: 'bytes' | 'rows' | 'tables';
  /** Rows so far and the estimate of all rows, where the step moves both bytes and rows. */
  rows?: number;
  rowsTotal?: number;
}
