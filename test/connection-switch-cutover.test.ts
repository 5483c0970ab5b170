/**
 * The connection switch (config `switch`) inside the cutover's write gap and the rollback, on real
 * PostgreSQL pairs: a stand-in that keeps its value in the file the live writer reads (as an application
 * reads its secret), and the SSM parameter switch the deployed tasks build, over a mocked SSM.
 */
import { readFileSync } from 'node:fs';
import { LabelParameterVersionCommand, PutParameterCommand, SSMClient } from '@aws-sdk/client-ssm';
import { mockClient } from 'aws-sdk-client-mock';
import { afterEach, describe, expect, it } from 'vitest';
import { connectionSwitchFor } from '../packages/aws/src/index';
import { describeState } from '../packages/cli/src/output';
import { advance, rollbackMigration } from '../packages/cli/src/runner';
import type {
  ConnectionSwitch,
  ParameterSwitchRecord,
  SwitchEndpoint,
  SwitchRecord,
  SwitchRestore,
} from '../packages/core/src/index';
import { switchLabel } from '../packages/core/src/index';
import { writeSwitchFile } from '../packages/postgres/src/index';
import { fakeSsm, PARAM } from './harness/fake-ssm';
import { frozen, migrationFixture, newMigration } from './harness/migration';

const fixture = migrationFixture();

/**
 * A connection switch whose resource is the writer's switch file, versioned as an SSM parameter is.
 * `failAfterWrite`: the next switchTo writes and then throws (a lost answer, a timeout).
 */
class FileSwitch implements ConnectionSwitch {
  readonly resource = 'the test application connection';
  readonly versions: string[];
  readonly calls: { op: 'switchTo' | 'restore'; record?: SwitchRecord }[] = [];
  failAfterWrite = false;
  private before?: number;

  constructor(private readonly path: string) {
    this.versions = [this.read()];
  }

  private read() {
    return readFileSync(this.path, 'utf8').trim();
  }

  async check() {
    return [];
  }

  async switchTo(to: SwitchEndpoint, migrationId: string): Promise<ParameterSwitchRecord> {
    this.calls.push({ op: 'switchTo' });
    // As the AWS switches: what it replaces is kept in the resource before the write, once.
    this.before ??= this.versions.length;
    const changed = this.read() !== to.url;
    if (changed) {
      writeSwitchFile(this.path, to.url);
      this.versions.push(to.url);
    }
    if (this.failAfterWrite) {
      this.failAfterWrite = false;
      throw new Error('socket hang up (the write was made; its answer was lost)');
    }
    return {
      kind: 'ssm-parameter',
      resource: this.resource,
      migrationId,
      at: new Date().toISOString(),
      changed,
      warnings: [],
      previousVersion: this.before,
      currentVersion: this.versions.length,
      label: switchLabel(migrationId),
      type: 'SecureString',
    };
  }

  async restore(record: SwitchRecord): Promise<SwitchRestore> {
    this.calls.push({ op: 'restore', record });
    if (record.kind !== 'ssm-parameter') throw new Error('not my record');
    const previous = this.versions[record.previousVersion - 1]!;
    const changed = this.read() !== previous;
    if (changed) {
      writeSwitchFile(this.path, previous);
      this.versions.push(previous);
    }
    return { changed, summary: `${this.resource} points at version ${record.previousVersion} again` };
  }
}

afterEach(() => {
  mockClient(SSMClient).restore();
});

describe('the connection switch in the cutover and the rollback', () => {
  it('does not undo a cutover whose switch wrote and then failed: the source stays read-only, status says so, and resume finishes the switch losing no write', async () => {
    const { pair, rt } = await fixture.setup('swfail', 300);
    const m = await newMigration(rt, pair, { cutover: 'auto', switchFile: undefined });
    const sw = new FileSwitch(rt.switchFile);
    rt.connectionSwitch = () => sw;
    const writer = fixture.writer(rt, 2);
    sw.failAfterWrite = true;

    const err = await advance(rt, m.id, { cutover: 'auto' }).then(
      () => new Error('expected the cutover to fail'),
      (e: Error) => e,
    );
    expect(err.name).toBe('CutoverFailedError');
    expect(err.message).toMatch(/connection switch of the test application connection did not finish: socket hang up/);
    expect(err.message).toMatch(/not undone \(the source stays read-only\)/);
    // The application follows the resource to the target; nothing may send it back to a writable source.
    expect(readFileSync(rt.switchFile, 'utf8').trim()).toBe(pair.targetUrl);
    expect(await frozen(pair, 'source')).toBe(true);
    const stopped = await rt.store.get(m.id);
    expect(stopped.status).toBe('running');
    expect(stopped.cutover?.switchStartedAt).toBeDefined();
    expect(stopped.cutover?.switchAt).toBeUndefined();
    expect(describeState(stopped)).toContain(`Run \`pgferry resume --id ${m.id}\` to finish the switch`);

    const resumed = await advance(rt, m.id, { cutover: 'auto' });
    expect(resumed.status).toBe('cut-over');
    expect(resumed.cutover?.switchAt).toBeDefined();
    expect(sw.calls.map((c) => c.op)).toEqual(['switchTo', 'switchTo']);
    // The record names the value from before the first, failed, attempt: the rollback restores that.
    expect(resumed.cutover?.switchRecord).toMatchObject({ kind: 'ssm-parameter', previousVersion: 1, changed: false });
    expect(await frozen(pair, 'source')).toBe(true);
    const stats = await writer.stop();
    expect(stats.servers.length).toBe(2);
    expect(await writer.lostWrites(pair.targetUrl)).toEqual([]);
  });

  it('restores exactly the value the cutover replaced when rolled back, from the record kept in the state, losing no write', async () => {
    const { pair, rt } = await fixture.setup('swback', 300);
    const m = await newMigration(rt, pair, { cutover: 'auto', switchFile: undefined });
    const sw = new FileSwitch(rt.switchFile);
    rt.connectionSwitch = () => sw;
    const writer = fixture.writer(rt, 2);
    const cut = await advance(rt, m.id, { cutover: 'auto' });
    expect(cut.status).toBe('cut-over');
    expect(readFileSync(rt.switchFile, 'utf8').trim()).toBe(pair.targetUrl);
    const record = cut.cutover?.switchRecord;
    expect(record).toMatchObject({ kind: 'ssm-parameter', previousVersion: 1, currentVersion: 2, changed: true });
    // The state keeps no password of either server.
    expect(JSON.stringify(cut)).not.toContain(new URL(pair.sourceUrl).password || '\u0000');

    const back = await rollbackMigration(rt, m.id);
    expect(back.status).toBe('rolled-back');
    expect(sw.calls.map((c) => c.op)).toEqual(['switchTo', 'restore']);
    expect(sw.calls[1]!.record).toEqual(record);
    expect(readFileSync(rt.switchFile, 'utf8').trim()).toBe(sw.versions[0]);
    expect(sw.versions[0]).toBe(pair.sourceUrl);
    expect(back.phases.rollback?.summary).toContain('points at version 1 again');
    const stats = await writer.stop();
    expect(stats.servers.length).toBe(3); // source, target, source again
    expect(await writer.lostWrites(pair.sourceUrl)).toEqual([]);
  });

  it('waits for the switch to propagate after the write gap, recording its own duration; a propagation that fails leaves the cutover done, with a warning', async () => {
    for (const outcome of ['propagates', 'fails'] as const) {
      const { pair, rt } = await fixture.setup(`swsettle${outcome === 'fails' ? 'f' : ''}`, 100);
      const m = await newMigration(rt, pair, { cutover: 'auto', switchFile: undefined });
      const sw = new FileSwitch(rt.switchFile);
      const seen: { switchAt?: string; writeGapMs?: number; targetWritable: boolean }[] = [];
      // As Route 53's INSYNC: asked once the change is accepted, answered after it reached every server.
      Object.assign(sw, {
        settle: async (record: SwitchRecord) => {
          expect(record.changed).toBe(true);
          const c = (await rt.store.get(m.id)).cutover;
          seen.push({
            switchAt: c?.switchAt,
            writeGapMs: c?.writeGapMs,
            targetWritable: !(await frozen(pair, 'target')),
          });
          if (outcome === 'fails') throw new Error('Rate exceeded');
          return true;
        },
      });
      rt.connectionSwitch = () => sw;
      const cut = await advance(rt, m.id, { cutover: 'auto' });
      expect(cut.status).toBe('cut-over');
      // Asked after the gap ended: the switch and the gap were recorded before it, the target took writes.
      expect(seen).toEqual([{ switchAt: expect.any(String), writeGapMs: expect.any(Number), targetWritable: true }]);
      expect(cut.cutover?.writeGapMs).toBe(seen[0]!.writeGapMs);
      expect(readFileSync(rt.switchFile, 'utf8').trim()).toBe(pair.targetUrl);
      expect(await frozen(pair, 'source')).toBe(true);
      if (outcome === 'propagates') {
        expect(cut.cutover?.switchPropagation).toEqual({ ms: expect.any(Number), done: true });
        expect((cut.warnings ?? []).filter((w) => w.includes('propagation'))).toEqual([]);
      } else {
        expect(cut.cutover?.switchPropagation).toEqual({ ms: expect.any(Number), done: false, error: 'Rate exceeded' });
        expect(cut.warnings).toContainEqual(
          expect.stringMatching(
            /^the switch of the test application connection is done, but its propagation was not confirmed after \d+ ms \(Rate exceeded\); .* the cutover stands$/,
          ),
        );
        expect(sw.calls.map((c) => c.op)).toEqual(['switchTo']);
      }
    }
  });

  it("waits for the switch back to propagate after the rollback's write gap, recording its own duration; a propagation that fails leaves the rollback done, with a warning", async () => {
    for (const outcome of ['propagates', 'fails'] as const) {
      const { pair, rt } = await fixture.setup(`swrbsettle${outcome === 'fails' ? 'f' : ''}`, 100);
      const m = await newMigration(rt, pair, { cutover: 'auto', switchFile: undefined });
      const sw = new FileSwitch(rt.switchFile);
      const seen: { switchAt?: string; writeGapMs?: number; sourceWritable: boolean; changed: boolean }[] = [];
      // As Route 53's INSYNC: asked once the change is accepted, answered after it reached every server.
      Object.assign(sw, {
        settle: async (_record: SwitchRecord, restore?: SwitchRestore) => {
          if (!restore) return true; // the cutover's
          const r = (await rt.store.get(m.id)).rollback;
          seen.push({
            switchAt: r?.switchAt,
            writeGapMs: r?.writeGapMs,
            sourceWritable: !(await frozen(pair, 'source')),
            changed: restore.changed,
          });
          if (outcome === 'fails') throw new Error('Rate exceeded');
          return true;
        },
      });
      rt.connectionSwitch = () => sw;
      expect((await advance(rt, m.id, { cutover: 'auto' })).status).toBe('cut-over');
      const back = await rollbackMigration(rt, m.id);
      expect(back.status).toBe('rolled-back');
      // Asked after the gap ended: the switch back and the gap were recorded before it, the source took writes.
      expect(seen).toEqual([
        { switchAt: expect.any(String), writeGapMs: expect.any(Number), sourceWritable: true, changed: true },
      ]);
      expect(back.rollback?.writeGapMs).toBe(seen[0]!.writeGapMs);
      expect(readFileSync(rt.switchFile, 'utf8').trim()).toBe(pair.sourceUrl);
      expect(await frozen(pair, 'target')).toBe(true);
      expect(sw.calls.map((c) => c.op)).toEqual(['switchTo', 'restore']);
      if (outcome === 'propagates') {
        expect(back.rollback?.switchPropagation).toEqual({ ms: expect.any(Number), done: true });
        expect((back.warnings ?? []).filter((w) => w.includes('propagation'))).toEqual([]);
      } else {
        expect(back.rollback?.switchPropagation).toEqual({
          ms: expect.any(Number),
          done: false,
          error: 'Rate exceeded',
        });
        expect(back.warnings).toContainEqual(
          expect.stringMatching(
            /^the switch back of the test application connection is done, but its propagation was not confirmed after \d+ ms \(Rate exceeded\); clients may reach the target \(read-only\) a while longer, the rollback stands$/,
          ),
        );
      }
    }
  });

  it('the deployed tasks build the switch the config names: an SSM parameter labelled, overwritten with the target, and put back by the rollback', async () => {
    const { pair, rt } = await fixture.setup('swssm', 100);
    const fake = fakeSsm('SecureString', pair.sourceUrl);
    const m = await newMigration(rt, pair, {
      cutover: 'auto',
      switchFile: undefined,
      switch: { kind: 'ssm-parameter', name: PARAM },
    });
    // As functions/lib/aws-deps.ts does, with the SSM client mocked.
    const clients = { ssm: new SSMClient({ region: 'eu-west-1' }) };
    rt.connectionSwitch = (config) => connectionSwitchFor(config.switch, clients);

    const cut = await advance(rt, m.id, { cutover: 'auto' });
    expect(cut.status).toBe('cut-over');
    expect(fake.ssm.commandCalls(LabelParameterVersionCommand).map((c) => c.args[0].input)).toEqual([
      { Name: PARAM, ParameterVersion: 1, Labels: [switchLabel(m.id)] },
    ]);
    expect(fake.ssm.commandCalls(PutParameterCommand).map((c) => c.args[0].input)).toEqual([
      { Name: PARAM, Value: pair.targetUrl, Type: 'SecureString', Overwrite: true, KeyId: fake.keyId },
    ]);
    expect(cut.cutover?.switchRecord).toMatchObject({ kind: 'ssm-parameter', previousVersion: 1, currentVersion: 2 });

    fake.ssm.resetHistory();
    const back = await rollbackMigration(rt, m.id);
    expect(back.status).toBe('rolled-back');
    expect(fake.ssm.commandCalls(PutParameterCommand).map((c) => c.args[0].input)).toEqual([
      { Name: PARAM, Value: pair.sourceUrl, Type: 'SecureString', Overwrite: true, KeyId: fake.keyId },
    ]);
    expect(fake.latest().Value).toBe(pair.sourceUrl);
  });

  it('refuses, before freezing anything, an SSM SecureString under another KMS key than switch.kmsKeyArn: resumable, nothing written', async () => {
    const { pair, rt } = await fixture.setup('swssmkey', 100);
    const KMS_KEY = 'arn:aws:kms:eu-west-1:123456789012:key/0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0';
    const fake = fakeSsm('SecureString', pair.sourceUrl);
    const m = await newMigration(rt, pair, {
      cutover: 'auto',
      switchFile: undefined,
      switch: { kind: 'ssm-parameter', name: PARAM, kmsKeyArn: KMS_KEY },
    });
    const clients = { ssm: new SSMClient({ region: 'eu-west-1' }) };
    rt.connectionSwitch = (config) => connectionSwitchFor(config.switch, clients);

    const err = await advance(rt, m.id, { cutover: 'auto' }).then(
      () => new Error('expected the cutover to be refused'),
      (e: Error & { hint?: string }) => e,
    );
    expect(err.name).toBe('CutoverFailedError');
    expect(err.message).toContain('nothing was frozen');
    expect(err.message).toContain(
      `SSM parameter ${PARAM} is encrypted under KMS key ${fake.keyId}, not the key switch.kmsKeyArn names (${KMS_KEY})`,
    );
    expect((err as { hint?: string }).hint).toContain('set switch.kmsKeyArn');
    expect(await frozen(pair, 'source')).toBe(false);
    expect(fake.ssm.commandCalls(LabelParameterVersionCommand)).toHaveLength(0);
    expect(fake.ssm.commandCalls(PutParameterCommand)).toHaveLength(0);
    const stopped = await rt.store.get(m.id);
    expect(stopped.status).toBe('running');
    expect(stopped.cutover?.switchStartedAt).toBeUndefined();
  });
});
