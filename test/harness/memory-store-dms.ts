import type { MigrationStore } from '../../packages/core/src/index';

/**
 * The correlation and task-token part of a MigrationStore, in memory, for the DMS event tests. Same
 * semantics as the real stores: takeTaskToken removes and returns in one step, so of two duplicate
 * events only one gets the token.
 */
export class DmsMemoryStore
  implements Required<Pick<MigrationStore, 'correlate' | 'findCorrelation' | 'putTaskToken' | 'takeTaskToken'>>
{
  readonly correlations = new Map<string, string>();
  readonly tokens = new Map<string, string>();

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
