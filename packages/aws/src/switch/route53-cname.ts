/**
 * A Route 53 CNAME the application connects through, with a low TTL. The switch UPSERTs it to the
 * target's host; in the same change batch (atomic) it writes a TXT record next to it holding what
 * the CNAME pointed at before, so that a retry after a crash still knows it.
 */
import {
  ChangeResourceRecordSetsCommand,
  GetChangeCommand,
  ListResourceRecordSetsCommand,
  type ResourceRecordSet,
  type Route53Client,
} from '@aws-sdk/client-route-53';
import {
  type CnameSwitchRecord,
  type ConnectionSwitch,
  ConnectionSwitchError,
  endpointParts,
  InvalidInputError,
  MAX_SWITCH_TTL_SECONDS,
  type SwitchCheckProblem,
  type SwitchEndpoint,
  type SwitchRecord,
  type SwitchRestore,
} from '@pgferry/core';
import { AwsSwitchBase } from './aws-error';

export interface Route53CnameSwitchOptions {
  client: Route53Client;
  hostedZoneId: string;
  /** The CNAME's name, e.g. `db.example.com`. */
  recordName: string;
  /** Longest TTL `check` accepts (seconds). */
  maxTtlSeconds?: number;
  /** How long `settle` waits for a change (a switch's or a restore's) to reach every Route 53 name server (INSYNC). */
  syncWaitMs?: number;
  syncPollMs?: number;
  sleep?: (ms: number) => Promise<void>;
  now?: () => Date;
}

const BREADCRUMB_TTL = 300;

type Change = { Action: 'UPSERT' | 'CREATE' | 'DELETE'; ResourceRecordSet: ResourceRecordSet };

export class Route53CnameSwitch extends AwsSwitchBase implements ConnectionSwitch {
  private readonly o: Required<Omit<Route53CnameSwitchOptions, 'client'>> & { client: Route53Client };
  private readonly name: string;

  constructor(o: Route53CnameSwitchOptions) {
    super(`CNAME ${fqdn(o.recordName)} in hosted zone ${o.hostedZoneId}`, o.now);
    this.o = {
      maxTtlSeconds: MAX_SWITCH_TTL_SECONDS,
      syncWaitMs: 120_000,
      syncPollMs: 5_000,
      sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
      now: () => new Date(),
      ...o,
    };
    this.name = fqdn(o.recordName);
  }

  async check(): Promise<SwitchCheckProblem[]> {
    try {
      const cname = await this.cname();
      const ttl = cname.TTL ?? 0;
      if (ttl > this.o.maxTtlSeconds) {
        return [
          {
            resource: this.resource,
            message: `${this.resource} has a TTL of ${ttl} s: resolvers may keep sending the application to the old server for ${ttl} s after the switch, while it is frozen`,
            hint: `lower the TTL to ${this.o.maxTtlSeconds} s or less, then wait the old TTL (${ttl} s) before the cutover`,
          },
        ];
      }
      return [];
    } catch (err) {
      return this.unreadable(err, 'route53:ListResourceRecordSets');
    }
  }

  async switchTo(to: SwitchEndpoint, migrationId: string): Promise<CnameSwitchRecord> {
    const host = fqdn(endpointParts(to.url, 'switch target').host);
    const cname = await this.cname();
    const ttl = cname.TTL ?? 0;
    const breadcrumb = this.breadcrumbName(migrationId);
    const crumb = await this.find(breadcrumb, 'TXT');
    const now = cname.ResourceRecords?.[0]?.Value ?? '';
    const previous = crumb ? parseCrumb(crumb, this.resource) : { value: now, ttl };
    const warnings =
      ttl > this.o.maxTtlSeconds
        ? [
            `${this.resource} has a TTL of ${ttl} s: clients may reach the old server for up to ${ttl} s after the switch`,
          ]
        : [];
    const base = {
      kind: 'route53-cname' as const,
      resource: this.resource,
      migrationId,
      hostedZoneId: this.o.hostedZoneId,
      recordName: this.name,
      previous,
      current: { value: host, ttl },
      breadcrumb,
      warnings,
    };
    if (sameHost(now, host)) {
      return { ...base, at: this.now().toISOString(), changed: false };
    }
    const changes: Change[] = [{ Action: 'UPSERT', ResourceRecordSet: cnameSet(this.name, host, ttl) }];
    // CREATE, not UPSERT: a breadcrumb that exists already holds the value from before the first switch.
    if (!crumb) changes.push({ Action: 'CREATE', ResourceRecordSet: crumbSet(breadcrumb, previous) });
    // Accepted once this returns; its propagation (INSYNC) is `settle`'s, after the write gap.
    const { id: changeId } = await this.submit(`pgferry ${migrationId}: switch to the target`, changes);
    return { ...base, at: this.now().toISOString(), changed: true, ...(changeId ? { changeId } : {}) };
  }

  /** Wait, bounded by syncWaitMs, for the switch's (or the restore's) change to be INSYNC; false when it was not in time. */
  async settle(record: SwitchRecord, restore?: SwitchRestore): Promise<boolean> {
    if (record.kind !== 'route53-cname') return true;
    const { changed, changeId } = restore ?? record;
    if (!changed) return true;
    return changeId ? this.insync(changeId, 'PENDING') : false;
  }

  async restore(record: SwitchRecord): Promise<SwitchRestore> {
    if (record.kind !== 'route53-cname') {
      throw new InvalidInputError(`a ${record.kind} switch record cannot restore ${this.resource}`, {
        field: 'record',
      });
    }
    const cname = await this.cname();
    const now = cname.ResourceRecords?.[0]?.Value ?? '';
    const crumb = await this.find(record.breadcrumb, 'TXT');
    const back = sameHost(now, record.previous.value) && (cname.TTL ?? 0) === record.previous.ttl;
    if (!back && !sameHost(now, record.current.value)) {
      throw new ConnectionSwitchError(
        `${this.resource} was changed after the switch (it points at ${now}, the switch wrote ${record.current.value}); pgferry does not undo someone else's change`,
        this.resource,
        { hint: `check who changed it; to go back anyway, point it at ${record.previous.value} again` },
      );
    }
    const changes: Change[] = [];
    if (!back) {
      changes.push({
        Action: 'UPSERT',
        ResourceRecordSet: cnameSet(this.name, record.previous.value, record.previous.ttl),
      });
    }
    // DELETE must name the record exactly as it is.
    if (crumb) changes.push({ Action: 'DELETE', ResourceRecordSet: crumb });
    if (changes.length === 0) return { changed: false, summary: `${this.resource} points at ${record.previous.value}` };
    // Accepted once this returns; its propagation (INSYNC) is `settle`'s, after the rollback's write gap.
    const { id: changeId } = await this.submit(`pgferry ${record.migrationId}: restore the source`, changes);
    return {
      changed: !back,
      summary: `${this.resource} points at ${record.previous.value}${back ? '' : ' again'}`,
      ...(changeId && !back ? { changeId } : {}),
    };
  }

  private breadcrumbName(migrationId: string): string {
    return `_pgferry-before-${migrationId.replace(/_/g, '-')}.${this.name}`;
  }

  /** Submit a change batch; Route 53 has accepted it once this returns. Its change id, to follow to INSYNC. */
  private async submit(comment: string, changes: Change[]): Promise<{ id?: string; status?: string }> {
    const out = await this.send('route53:ChangeResourceRecordSets', () =>
      this.o.client.send(
        new ChangeResourceRecordSetsCommand({
          HostedZoneId: this.o.hostedZoneId,
          ChangeBatch: { Comment: comment, Changes: changes },
        }),
      ),
    );
    return { id: out.ChangeInfo?.Id, status: out.ChangeInfo?.Status };
  }

  /** Poll GetChange until INSYNC, for at most syncWaitMs. */
  private async insync(id: string, status: string | undefined): Promise<boolean> {
    const deadline = Date.now() + this.o.syncWaitMs;
    while (status !== 'INSYNC' && Date.now() < deadline) {
      await this.o.sleep(this.o.syncPollMs);
      const got = await this.send('route53:GetChange', () => this.o.client.send(new GetChangeCommand({ Id: id })));
      status = got.ChangeInfo?.Status;
    }
    return status === 'INSYNC';
  }

  private async cname(): Promise<ResourceRecordSet> {
    const set = await this.find(this.name, 'CNAME');
    if (!set) {
      throw new ConnectionSwitchError(`${this.resource} does not exist`, this.resource, {
        hint: 'create the CNAME the application connects through (pointing at the source, TTL 60 s or less) before the migration',
      });
    }
    if (set.AliasTarget || set.SetIdentifier || (set.ResourceRecords?.length ?? 0) !== 1) {
      throw new ConnectionSwitchError(
        `${this.resource} is an alias, weighted, latency or multi-value record: pgferry switches a plain CNAME only`,
        this.resource,
        { hint: 'point the application at a plain CNAME with one value' },
      );
    }
    return set;
  }

  private async find(name: string, type: 'CNAME' | 'TXT'): Promise<ResourceRecordSet | undefined> {
    const out = await this.send('route53:ListResourceRecordSets', () =>
      this.o.client.send(
        new ListResourceRecordSetsCommand({
          HostedZoneId: this.o.hostedZoneId,
          StartRecordName: name,
          StartRecordType: type,
          MaxItems: 1,
        }),
      ),
    );
    const set = out.ResourceRecordSets?.[0];
    return set && fqdn(set.Name ?? '') === name && set.Type === type ? set : undefined;
  }
}

function fqdn(name: string): string {
  const n = name.trim().toLowerCase();
  return n.endsWith('.') ? n : `${n}.`;
}

function sameHost(a: string, b: string): boolean {
  return a !== '' && fqdn(a) === fqdn(b);
}

function cnameSet(name: string, value: string, ttl: number): ResourceRecordSet {
  return { Name: name, Type: 'CNAME', TTL: ttl, ResourceRecords: [{ Value: value }] };
}

function crumbSet(name: string, previous: { value: string; ttl: number }): ResourceRecordSet {
  return {
    Name: name,
    Type: 'TXT',
    TTL: BREADCRUMB_TTL,
    ResourceRecords: [{ Value: `"${previous.value}" "${previous.ttl}"` }],
  };
}

function parseCrumb(set: ResourceRecordSet, resource: string): { value: string; ttl: number } {
  const m = /^"([^"]+)" "(\d+)"$/.exec(set.ResourceRecords?.[0]?.Value ?? '');
  if (!m) {
    throw new ConnectionSwitchError(
      `${set.Name} (pgferry's record of the CNAME's previous value) is not in pgferry's format`,
      resource,
      {
        hint: `delete ${set.Name} only if the CNAME still points at the source, then run the cutover again`,
      },
    );
  }
  return { value: m[1]!, ttl: Number(m[2]) };
}
