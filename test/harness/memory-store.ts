import {
  type MigrationListing,
  MigrationNotFoundError,
  type MigrationSecrets,
  type MigrationState,
  type MigrationStore,
  StateConflictError,
} from '../../packages/core/src/index';

/**
 * A MigrationStore in memory, with the optional correlation and task-token methods, for tests of the
 * AWS adapters. Same semantics as the real stores: takeTaskToken removes and returns in one step (of
 * two duplicate events only one gets the token), put checks the version it read.
 */
export class MemoryMigrationStore implements MigrationStore {
  readonly states = new Map<string, MigrationState>();
  readonly secretsById = new Map<string, MigrationSecrets>();
  readonly correlations = new Map<string, string>();
  readonly tokens = new Map<string, string>();

  async create(state: MigrationState, secrets: MigrationSecrets) {
    if (this.states.has(state.id)) throw new StateConflictError(`migration ${state.id} exists`);
    this.states.set(state.id, structuredClone(state));
    this.secretsById.set(state.id, { ...secrets });
  }
  async get(id: string) {
    const state = this.states.get(id);
    if (!state) throw new MigrationNotFoundError(`no migration ${id}`);
    return structuredClone(state);
  }
  async secrets(id: string) {
    const secrets = this.secretsById.get(id);
    if (!secrets) throw new MigrationNotFoundError(`no secrets for migration ${id}`);
    return { ...secrets };
  }
  async put(state: MigrationState) {
    const stored = await this.get(state.id);
    if (stored.version !== state.version) throw new StateConflictError(`migration ${state.id} changed meanwhile`);
    const next = { ...structuredClone(state), version: state.version + 1 };
    this.states.set(state.id, next);
    return structuredClone(next);
  }
  async list(): Promise<MigrationListing> {
    return { migrations: [...this.states.values()].map((s) => structuredClone(s)), unreadable: [] };
  }
  async correlate(key: string, migrationId: string) {
    this.correlations.set(key, migrationId);
  }
  async findCorrelation(key: string) {
    return this.correlations.get(key);
  }
  async putTaskToken(migrationId: string, step: string, token: string) {
    this.tokens.set(`${migrationId}#${step}`, token);
  }
  async takeTaskToken(migrationId: string, step: string) {
    const key = `${migrationId}#${step}`;
    const token = this.tokens.get(key);
    this.tokens.delete(key);
    return token;
  }
}
