/**
 * Local state: one JSON file per migration under .pgferry/, written atomically (temp file + rename)
 * with optimistic versioning, so `status`, `resume` and `rollback` work from another shell or after a
 * crash. Passwords live only in a separate 0600 secrets file, never in the state.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { appendFile, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import {
  alreadyExistsError,
  bucketed,
  bucketsToThin,
  checkCorrelationKey,
  checkMigrationId as checkId,
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
  MIGRATION_ID,
  type MigrationListing,
  MigrationNotFoundError,
  type MigrationPlan,
  type MigrationPlanInput,
  type MigrationSecrets,
  type MigrationState,
  type MigrationStore,
  mergeLagSeries,
  PgferryError,
  PLAN_NAME,
  parseMigrationPlan,
  peakOfBucket,
  readListing,
  redactedJson,
  refuseSecretsInState,
  StateConflictError,
  StateUnreadableError,
  storedPlan,
  versionConflictError,
} from '@pgferry/core';

/**
 * Every migration's correlation keys, in one file beside the migrations: its name starts with `_`, which
 * no migration id does, so it is never taken for one.
 */
const CORRELATIONS = '_correlations';

/** State as written: every string redacted once more, whatever a driver or another session put in a message. */
function stateJson(state: MigrationState): string {
  return redactedJson(state, 2);
}

function pidAlive(pid: number | undefined): boolean {
  if (!pid || !Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/** A claim's process is alive: one on another host cannot be checked from here, so it counts as alive. */
function claimAlive(held: { pid?: number; host?: string }): boolean {
  return held.host !== undefined && held.host !== hostname() ? true : pidAlive(held.pid);
}

/** The process that wrote `lock` is gone (or wrote no pid at all, a second ago or more). */
/**
 * An update's lock is held for milliseconds: one this old was left by a process that is gone, whatever
 * its pid now names (pids are reused, and in a container pgferry's is often a low one that lives on).
 */
const LOCK_STALE_MS = 60_000;

async function staleLock(lock: string): Promise<boolean> {
  const [text, info] = await Promise.all([readFile(lock, 'utf8').catch(() => ''), stat(lock).catch(() => undefined)]);
  if (!info) return false; // released meanwhile
  if (Date.now() - info.mtimeMs > LOCK_STALE_MS) return true;
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 0) return Date.now() - info.mtimeMs > 1000;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/** A lag bucket's file name (no `:` in file names): `raw-2026-12-06T10-04.jsonl`. */
const rawLagFile = (bucket: string) => `raw-${bucket.replace(':', '-')}.jsonl`;
const RAW_LAG_FILE = /^raw-(\d{4}-\d\d-\d\dT\d\d)-(\d\d)\.jsonl$/;
/** The thinned part of the series: one line per minute, appended. */
const THINNED_LAG_FILE = 'minutes.jsonl';

/** JSON lines; a line cut short by a crash is skipped. */
function jsonLines<T>(text: string): T[] {
  const out: T[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as T);
    } catch {
      // a partial last line
    }
  }
  return out;
}

/** The directories of `dir`'s path that do not exist, `dir` first, the outermost last. */
export function missingDirectories(dir: string): string[] {
  const missing: string[] = [];
  for (let p = dir; !existsSync(p); p = dirname(p)) {
    missing.push(p);
    if (dirname(p) === p) break;
  }
  return missing;
}

/**
 * mkdir -p: each missing directory made on its own. Node's recursive mkdir loops for ever where mkdir
 * answers ENOENT under a directory that exists (/proc: `--state-dir /proc/x` hung); this throws that.
 */
export function makeDirectory(dir: string, mode = 0o700): void {
  for (const m of missingDirectories(dir).reverse()) {
    try {
      mkdirSync(m, { mode });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}

export class FileMigrationStore implements MigrationStore {
  constructor(readonly dir: string) {}

  /** Samples in each lag bucket this store wrote to (it is the one writer: the migration's claim). */
  private readonly bucketSizes = new Map<string, number>();

  /** A migration's file with `suffix` (`.json`, `.secrets.json`, `.lock`, `.run`), for a valid id only. */
  private path(id: string, suffix: string) {
    return join(this.dir, `${checkId(id)}${suffix}`);
  }
  private file(id: string) {
    return this.path(id, '.json');
  }
  private secretsFile(id: string) {
    return this.path(id, '.secrets.json');
  }

  /** State and secrets alike are readable by this user only: the state names servers, users and databases. */
  private async atomicWrite(path: string, data: string, mode = 0o600) {
    const tmp = `${path}.${process.pid}.${Date.now()}.tmp`;
    await writeFile(tmp, data, { mode });
    await rename(tmp, path);
  }

  /**
   * A lock file held for the read-compare-write of one update. It names its process: a lock left by a
   * process that is gone (killed, or exited on a signal in the middle of an update) is taken over.
   */
  private async withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.withLockFile(this.path(id, '.lock'), fn);
  }

  private async withLockFile<T>(lock: string, fn: () => Promise<T>): Promise<T> {
    for (let i = 0; ; i++) {
      try {
        const h = await open(lock, 'wx');
        await h.writeFile(String(process.pid));
        await h.close();
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        if (i > 500) {
          const pid = (await readFile(lock, 'utf8').catch(() => '')).trim();
          throw new StateConflictError(
            `the state is locked by ${lock}${pid ? ` (process ${pid})` : ''}, for longer than an update takes`,
            {
              field: '--state-dir',
              hint: `if no pgferry process is running on this state directory, that lock was left behind (its process id reused): remove the file, or wait ${LOCK_STALE_MS / 1000} s and it is taken over`,
            },
          );
        }
        if (i % 20 === 19 && (await staleLock(lock))) await rm(lock, { force: true });
        else await new Promise((r) => setTimeout(r, 10));
      }
    }
    try {
      return await fn();
    } finally {
      await rm(lock, { force: true });
    }
  }

  async create(state: MigrationState, secrets: MigrationSecrets): Promise<void> {
    checkId(state.id);
    refuseSecretsInState(state);
    makeDirectory(this.dir);
    await this.withLock(state.id, async () => {
      const exists = await readFile(this.file(state.id)).then(
        () => true,
        () => false,
      );
      // Checked before anything is written: an existing migration's secrets must not be replaced.
      if (exists) throw alreadyExistsError(state.id, this.dir);
      await this.atomicWrite(this.secretsFile(state.id), JSON.stringify(secrets));
      await this.atomicWrite(this.file(state.id), stateJson(state));
    });
  }

  /**
   * Claim migration `id` for this process until `release` is called: one command at a time works on a
   * migration (two resumes would each create a slot and copy into the same tables). A claim left by a
   * process that is gone is taken over; a live one is named.
   */
  async claim(id: string): Promise<() => Promise<void>> {
    makeDirectory(this.dir);
    const path = this.path(id, '.run');
    const mine = JSON.stringify({ pid: process.pid, host: hostname(), since: new Date().toISOString() });
    // Under the update lock, so that two commands finding the same dead claim cannot both take it over.
    await this.withLock(id, () => this.takeClaim(id, path, mine));
    return async () => {
      const now = await readFile(path, 'utf8').catch(() => '');
      if (now === mine) await rm(path, { force: true });
    };
  }

  /** Whether a live process holds migration `id`'s claim (one on another host counts as live). */
  async claimed(id: string): Promise<boolean> {
    const held = await readFile(this.path(id, '.run'), 'utf8')
      .then((t) => JSON.parse(t) as { pid?: number; host?: string })
      .catch(() => undefined);
    return held !== undefined && claimAlive(held);
  }

  private async takeClaim(id: string, path: string, mine: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await writeFile(path, mine, { flag: 'wx', mode: 0o600 });
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 2) throw err;
        const held = await readFile(path, 'utf8')
          .then((t) => JSON.parse(t) as { pid?: number; host?: string; since?: string })
          .catch(() => ({}) as { pid?: number; host?: string; since?: string });
        if (claimAlive(held))
          throw claimedError(
            id,
            `pid ${held.pid ?? '?'} on ${held.host ?? '?'}, since ${held.since ?? '?'}`,
            `A claim left on another host by a process that is gone can be removed: ${path}`,
          );
        await rm(path, { force: true }); // its process is gone
      }
    }
  }

  /** Replace a migration's connection secrets (new passwords for the same servers). */
  async updateSecrets(id: string, secrets: MigrationSecrets): Promise<void> {
    await this.get(id);
    await this.withLock(id, () => this.atomicWrite(this.secretsFile(id), JSON.stringify(secrets)));
  }

  async removeSecrets(id: string): Promise<void> {
    await rm(this.secretsFile(id), { force: true });
  }

  async get(id: string): Promise<MigrationState> {
    const file = this.file(id);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        throw new MigrationNotFoundError(`no migration ${id} in ${this.dir}`, {
          field: '--id',
          hint: 'run `pgferry status` to list migrations',
        });
      }
      // Not a raw EACCES/ENOTDIR/EISDIR: which file, and what to do.
      throw new StateUnreadableError(
        `cannot read the state file ${file} of migration ${id} (${code ?? errorMessage(err)})`,
        {
          cause: err,
          field: '--state-dir',
          migrationId: id,
          hint:
            code === 'EACCES' || code === 'EPERM'
              ? 'state files are readable by their owner only (0600): run pgferry as the user that started the migration'
              : '--state-dir must be the directory pgferry keeps its state files in (default .pgferry)',
        },
      );
    }
    try {
      const state = JSON.parse(text) as MigrationState;
      if (state?.id !== id || typeof state.version !== 'number' || !state.config) throw new Error('not a migration');
      return state;
    } catch (err) {
      // pgferry replaces the file whole (temp file + rename): this one was changed or damaged by hand.
      throw new StateUnreadableError(`the state file ${file} of migration ${id} is unreadable (${errorMessage(err)})`, {
        cause: err,
        field: '--id',
        migrationId: id,
        hint: `restore ${file} from a backup; its objects on the servers are named pgferry_${id}, and \`pgferry status\` lists it as unreadable until then`,
      });
    }
  }

  async secrets(id: string): Promise<MigrationSecrets> {
    try {
      return JSON.parse(await readFile(this.secretsFile(id), 'utf8')) as MigrationSecrets;
    } catch {
      throw new MigrationNotFoundError(`the connection secrets of migration ${id} are missing from ${this.dir}`, {
        field: '--id',
      });
    }
  }

  async put(state: MigrationState): Promise<MigrationState> {
    return this.withLock(state.id, async () => {
      const current = await this.get(state.id);
      if (current.version !== state.version) throw versionConflictError(state.id, current.version, state.version);
      const next = { ...state, version: state.version + 1, updatedAt: new Date().toISOString() };
      await this.atomicWrite(this.file(state.id), stateJson(next));
      return next;
    });
  }

  /**
   * Point correlation `key` at migration `id`. A key held by another migration that is not over is
   * refused; one whose migration is over (or gone) is taken over, as a target instance may be reused.
   */
  async correlate(key: string, id: string): Promise<void> {
    checkCorrelationKey(key);
    await this.get(id);
    const file = join(this.dir, `${CORRELATIONS}.json`);
    await this.withLockFile(join(this.dir, `${CORRELATIONS}.lock`), async () => {
      const keys = await this.readCorrelations();
      const owner = keys[key];
      if (owner === id) return;
      if (owner !== undefined) {
        const status = await this.get(owner).then(
          (s) => s.status,
          () => undefined, // gone, or unreadable: it cannot be acting on events
        );
        if (status && !FINISHED_STATUSES.includes(status)) throw correlationTakenError(key, owner, id);
      }
      await this.atomicWrite(file, JSON.stringify({ ...keys, [key]: id }, null, 2));
    });
  }

  async findCorrelation(key: string): Promise<string | undefined> {
    return (await this.readCorrelations())[checkCorrelationKey(key)];
  }

  private async readCorrelations(): Promise<Record<string, string>> {
    const file = join(this.dir, `${CORRELATIONS}.json`);
    const text = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return '{}';
      throw err;
    });
    try {
      return JSON.parse(text) as Record<string, string>;
    } catch (err) {
      throw new PgferryError(`the correlation file ${file} is unreadable (${errorMessage(err)})`, {
        cause: err,
        hint: `events cannot find their migrations until it is repaired or removed (\`pgferry status\` still lists them)`,
      });
    }
  }

  /** A callback step's task token, in a 0600 file of the migration's (a token completes its step). */
  async putTaskToken(id: string, step: string, token: string): Promise<void> {
    checkTaskStep(step);
    checkTaskToken(token);
    await this.get(id);
    await this.withLock(id, async () => {
      const tokens = await this.readTokens(id);
      await this.atomicWrite(this.path(id, '.tokens.json'), JSON.stringify({ ...tokens, [step]: token }));
    });
  }

  /** Read and removed under the migration's lock file: of two takers, in any processes, one gets the token. */
  async takeTaskToken(id: string, step: string): Promise<string | undefined> {
    checkTaskStep(step);
    // No token was ever filed (or the migration is unknown): nothing to lock for.
    if (!(await stat(this.path(id, '.tokens.json')).catch(() => undefined))) return undefined;
    return this.withLock(id, async () => {
      const { [step]: token, ...rest } = await this.readTokens(id);
      if (token !== undefined) await this.atomicWrite(this.path(id, '.tokens.json'), JSON.stringify(rest));
      return token;
    });
  }

  private async readTokens(id: string): Promise<Record<string, string>> {
    const text = await readFile(this.path(id, '.tokens.json'), 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return '{}';
      throw err;
    });
    return JSON.parse(text) as Record<string, string>;
  }

  /**
   * The whole lag series, in `<id>.lag/`: a JSON-lines file per minute of samples, and `minutes.jsonl`
   * with one line per minute thinned (lag-series.ts). Appended, never rewritten.
   */
  private lagDir(id: string) {
    return this.path(id, '.lag');
  }

  async appendLag(id: string, samples: LagSample[]): Promise<void> {
    const dir = this.lagDir(id);
    makeDirectory(dir);
    let opened = false;
    const { buckets, newestAt } = bucketed(samples);
    for (const [bucket, list] of buckets) {
      const file = join(dir, rawLagFile(bucket));
      const key = `${id}/${bucket}`;
      let size = this.bucketSizes.get(key);
      if (size === undefined) {
        const text = await readFile(file, 'utf8').catch(() => undefined);
        if (text === undefined) opened = true;
        size = text === undefined ? 0 : jsonLines(text).length;
      }
      const room = list.slice(0, Math.max(0, LAG_SERIES.maxPerBucket - size));
      if (room.length) await appendFile(file, room.map((p) => `${JSON.stringify(p)}\n`).join(''), { mode: 0o600 });
      this.bucketSizes.set(key, size + room.length);
    }
    if (opened && newestAt) await this.thinLag(id, newestAt);
  }

  /** Buckets more than the hour of full samples older than `newestAt`, each replaced by its peak. */
  private async thinLag(id: string, newestAt: string): Promise<void> {
    const dir = this.lagDir(id);
    const raw = new Map<string, string>();
    for (const f of await readdir(dir)) {
      const m = RAW_LAG_FILE.exec(f);
      if (m) raw.set(`${m[1]}:${m[2]}`, f);
    }
    for (const bucket of bucketsToThin([...raw.keys()].sort(), newestAt)) {
      const file = join(dir, raw.get(bucket)!);
      const samples = jsonLines<LagSample>(await readFile(file, 'utf8'));
      // Written before the bucket goes: a crash in between leaves both, which the reader merges.
      if (samples.length)
        await appendFile(join(dir, THINNED_LAG_FILE), `${JSON.stringify(peakOfBucket(samples))}\n`, { mode: 0o600 });
      await rm(file, { force: true });
      this.bucketSizes.delete(`${id}/${bucket}`);
    }
  }

  async lagSeries(id: string): Promise<LagSample[]> {
    const dir = this.lagDir(id);
    const files = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [] as string[];
      throw err;
    });
    const read = (f: string) => readFile(join(dir, f), 'utf8').then((t) => jsonLines<LagSample>(t));
    const thinned = files.includes(THINNED_LAG_FILE) ? await read(THINNED_LAG_FILE) : [];
    const raw = await Promise.all(files.filter((f) => RAW_LAG_FILE.test(f)).map(read));
    return mergeLagSeries(thinned, ...raw);
  }

  /** Named plans, one 0600 file each under `plans/`, replaced whole (temp file + rename). */
  private planFile(name: string) {
    return join(this.dir, 'plans', `${checkPlanName(name)}.json`);
  }

  async putPlan(input: MigrationPlanInput): Promise<MigrationPlan> {
    const plan = parseMigrationPlan(input);
    makeDirectory(join(this.dir, 'plans'));
    await this.atomicWrite(this.planFile(plan.name), `${JSON.stringify(plan, null, 2)}\n`);
    return plan;
  }

  async getPlan(name: string): Promise<MigrationPlan | undefined> {
    const file = this.planFile(name);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new InvalidInputError(`the stored plan ${name} in ${file} is not JSON (${errorMessage(err)})`, {
        field: 'plan',
        hint: 'fix the plan and store it again with `pgferry plan put FILE`',
      });
    }
    return storedPlan(name, value, file);
  }

  async listPlans(): Promise<MigrationPlan[]> {
    const files = await readdir(join(this.dir, 'plans')).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [] as string[];
      throw err;
    });
    const names = files
      .filter((f) => f.endsWith('.json'))
      .map((f) => f.slice(0, -5))
      .filter((n) => PLAN_NAME.test(n))
      .sort();
    const plans = await Promise.all(names.map((n) => this.getPlan(n)));
    return plans.filter((p): p is MigrationPlan => p !== undefined);
  }

  async list(): Promise<MigrationListing> {
    const files = await readdir(this.dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [] as string[];
      throw err;
    });
    const ids = files.filter((f) => f.endsWith('.json') && !f.endsWith('.secrets.json')).map((f) => f.slice(0, -5));
    // Not pgferry's (a report written here, say): skipped.
    return readListing(
      ids.filter((id) => MIGRATION_ID.test(id)),
      (id) => this.get(id),
    );
  }
}
