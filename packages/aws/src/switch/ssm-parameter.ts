/**
 * An SSM parameter the application reads its connection from (a URL, a host, or host:port). The switch
 * overwrites it, keeping its type and, for a SecureString, its KMS key (the key the parameter reports,
 * never another: a value re-encrypted under a key the application may not use would cut it off); the
 * restore writes back the value of the version labelled before the switch (read from the parameter: the
 * record holds no value) under the key it had then.
 */
import {
  DescribeParametersCommand,
  GetParameterCommand,
  GetParameterHistoryCommand,
  LabelParameterVersionCommand,
  type ParameterHistory,
  PutParameterCommand,
  type SSMClient,
  UnlabelParameterVersionCommand,
} from '@aws-sdk/client-ssm';
import {
  type ConnectionSwitch,
  ConnectionSwitchError,
  endpointParts,
  InvalidInputError,
  type ParameterSwitchRecord,
  type SwitchCheckProblem,
  type SwitchEndpoint,
  type SwitchRecord,
  type SwitchRestore,
  switchLabel,
} from '@pgferry/core';
import { AwsSwitchBase } from './aws-error';

/** What the parameter holds: the whole URL (credentials included), the host, or `host:port`. */
export type ParameterFormat = 'url' | 'host' | 'host-port';

export interface SsmParameterSwitchOptions {
  client: SSMClient;
  name: string;
  format?: ParameterFormat;
  /**
   * The customer-managed KMS key of a SecureString (the config's `switch.kmsKeyArn`, the key the
   * deployment grants): check() and switchTo() refuse a parameter reported under another key. Values
   * are always written under the key the parameter reports (PutParameter's KeyId).
   */
  kmsKeyArn?: string;
  now?: () => Date;
}

type ParameterType = ParameterSwitchRecord['type'];

export class SsmParameterSwitch extends AwsSwitchBase implements ConnectionSwitch {
  private readonly client: SSMClient;
  private readonly name: string;
  private readonly format: ParameterFormat;
  private readonly kmsKeyArn?: string;

  constructor(o: SsmParameterSwitchOptions) {
    super(`SSM parameter ${o.name}`, o.now);
    this.client = o.client;
    this.name = o.name;
    this.format = o.format ?? 'url';
    this.kmsKeyArn = o.kmsKeyArn;
  }

  async check(): Promise<SwitchCheckProblem[]> {
    try {
      const { type } = await this.meta();
      await this.get(this.name);
      if (type === 'StringList') {
        return [
          {
            resource: this.resource,
            message: `${this.resource} is a StringList`,
            hint: 'switch a String or SecureString parameter that holds one connection',
          },
        ];
      }
      const other = this.otherKey(await this.meta());
      return other ? [{ resource: this.resource, message: other.message, hint: other.hint ?? '' }] : [];
    } catch (err) {
      return this.unreadable(err, 'ssm:GetParameter/DescribeParameters');
    }
  }

  async switchTo(to: SwitchEndpoint, migrationId: string): Promise<ParameterSwitchRecord> {
    const value = this.valueFor(to);
    const meta = await this.meta();
    const { type, keyId } = meta;
    if (type === 'StringList') throw new ConnectionSwitchError(`${this.resource} is a StringList`, this.resource);
    // Under another key than the configured one: refused before anything is written (check() says so
    // before any freeze).
    const other = this.otherKey(meta);
    if (other) throw other;
    if (type !== 'SecureString' && this.format === 'url' && endpointParts(to.url).password !== undefined) {
      throw new InvalidInputError(`${this.resource} is a ${type}, and the URL to write carries a password`, {
        field: this.name,
        hint: 'make the parameter a SecureString, or switch a parameter that holds the host only (format host)',
      });
    }
    const label = switchLabel(migrationId);
    const current = await this.get(this.name);
    // Label what the application reads now before overwriting it, so that a retry after a crash finds it.
    let previousVersion = (await this.history()).find((h) => h.Labels?.includes(label))?.Version;
    if (previousVersion === undefined) {
      await this.send('ssm:LabelParameterVersion', () =>
        this.client.send(
          new LabelParameterVersionCommand({ Name: this.name, ParameterVersion: current.version, Labels: [label] }),
        ),
      );
      previousVersion = current.version;
    }
    const base = {
      kind: 'ssm-parameter' as const,
      resource: this.resource,
      migrationId,
      label,
      type,
      ...(keyId ? { keyId } : {}),
      warnings: [],
      previousVersion,
    };
    if (current.value === value) {
      return { ...base, at: this.now().toISOString(), changed: false, currentVersion: current.version };
    }
    const put = await this.put(value, type, keyId);
    return { ...base, at: this.now().toISOString(), changed: true, currentVersion: put };
  }

  async restore(record: SwitchRecord): Promise<SwitchRestore> {
    if (record.kind !== 'ssm-parameter') {
      throw new InvalidInputError(`a ${record.kind} switch record cannot restore ${this.resource}`, {
        field: 'record',
      });
    }
    const previous = await this.get(`${this.name}:${record.previousVersion}`);
    const current = await this.get(this.name);
    if (current.value === previous.value) {
      await this.unlabel(record);
      return {
        changed: false,
        summary: `${this.resource} already holds the value of version ${record.previousVersion}`,
      };
    }
    if (current.version !== record.currentVersion) {
      throw new ConnectionSwitchError(
        `${this.resource} was changed after the switch (version ${current.version}, the switch wrote ${record.currentVersion}); pgferry does not undo someone else's change`,
        this.resource,
        { hint: `check who changed it; to go back anyway, write the value of version ${record.previousVersion} again` },
      );
    }
    // Under the key it had before the switch (the record's), whatever the config names now.
    const version = await this.put(previous.value, record.type, record.keyId);
    await this.unlabel(record);
    return {
      changed: true,
      summary: `${this.resource} holds the value of version ${record.previousVersion} again (as version ${version})`,
    };
  }

  /** Back where it was, the label has done its work: a later switch labels what is current then. */
  private async unlabel(record: ParameterSwitchRecord) {
    const labelled = (await this.history()).find((h) => h.Labels?.includes(record.label));
    if (!labelled) return;
    await this.send('ssm:UnlabelParameterVersion', () =>
      this.client.send(
        new UnlabelParameterVersionCommand({
          Name: this.name,
          ParameterVersion: labelled.Version!,
          Labels: [record.label],
        }),
      ),
    );
  }

  /**
   * The refusal when the parameter is a SecureString reported under a key that is not the configured
   * `switch.kmsKeyArn`. DescribeParameters reports the key as the parameter was written with it: a key
   * ARN, a bare key id, or an alias. A key ARN or id is compared with the configured ARN; an alias of the
   * AWS managed keys (alias/aws/...) is never a customer-managed key; any other alias cannot be resolved
   * without kms:DescribeKey and is taken as it is: check()'s decrypting read needs kms:Decrypt on the
   * alias's key, which the deployment grants on the configured key only, and every write uses the alias.
   */
  private otherKey(meta: { type: ParameterType; keyId?: string }): ConnectionSwitchError | undefined {
    const configured = this.kmsKeyArn;
    if (meta.type !== 'SecureString' || !configured || sameKey(meta.keyId, configured) !== false) return undefined;
    return new ConnectionSwitchError(
      `${this.resource} is encrypted under KMS key ${meta.keyId ?? '(none reported)'}, not the key switch.kmsKeyArn names (${configured})`,
      this.resource,
      {
        field: 'switch.kmsKeyArn',
        hint: `pgferry writes the parameter under the key it has, so that the application can still read it; set switch.kmsKeyArn (and the deployment's PGFERRY_SWITCH) to the ARN of the key ${meta.keyId ?? ''} is, or drop kmsKeyArn if it is the AWS managed key aws/ssm`,
      },
    );
  }

  private valueFor(to: SwitchEndpoint): string {
    const p = endpointParts(to.url, 'switch target');
    if (this.format === 'url') return to.url;
    return this.format === 'host' ? p.host : `${p.host}:${p.port}`;
  }

  private async put(value: string, type: ParameterType, keyId: string | undefined): Promise<number> {
    const out = await this.send('ssm:PutParameter', () =>
      this.client.send(
        new PutParameterCommand({
          Name: this.name,
          Value: value,
          Type: type,
          Overwrite: true,
          // Without it, an overwritten SecureString would move to the account's default key.
          ...(type === 'SecureString' && keyId ? { KeyId: keyId } : {}),
        }),
      ),
    );
    return out.Version!;
  }

  private async get(selector: string): Promise<{ value: string; version: number }> {
    const out = await this.send('ssm:GetParameter', () =>
      this.client.send(new GetParameterCommand({ Name: selector, WithDecryption: true })),
    );
    return { value: out.Parameter?.Value ?? '', version: out.Parameter?.Version ?? 0 };
  }

  /** Type and KMS key: GetParameter does not return the key. */
  private async meta(): Promise<{ type: ParameterType; keyId?: string }> {
    const out = await this.send('ssm:DescribeParameters', () =>
      this.client.send(
        new DescribeParametersCommand({ ParameterFilters: [{ Key: 'Name', Option: 'Equals', Values: [this.name] }] }),
      ),
    );
    const p = out.Parameters?.[0];
    if (!p) {
      throw new ConnectionSwitchError(`${this.resource} was not found`, this.resource, {
        hint: `check the name and the region; pgferry switches an existing parameter and never creates it`,
      });
    }
    return { type: (p.Type ?? 'String') as ParameterType, ...(p.KeyId ? { keyId: p.KeyId } : {}) };
  }

  /** Every version's number and labels (values are not decrypted: only the labels are needed). */
  private async history(): Promise<ParameterHistory[]> {
    const all: ParameterHistory[] = [];
    let NextToken: string | undefined;
    do {
      const out = await this.send('ssm:GetParameterHistory', () =>
        this.client.send(
          new GetParameterHistoryCommand({ Name: this.name, WithDecryption: false, MaxResults: 50, NextToken }),
        ),
      );
      all.push(...(out.Parameters ?? []));
      NextToken = out.NextToken;
    } while (NextToken);
    return all;
  }
}

/**
 * Whether the key DescribeParameters reports (a key ARN, a key id, or an alias) is the key `arn`: false
 * when it is shown to be another, undefined when it cannot be told (a customer alias).
 */
function sameKey(reported: string | undefined, arn: string): boolean | undefined {
  if (!reported) return false;
  if (reported === arn) return true;
  const alias = /^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:)?alias\/(.+)$/.exec(reported);
  // AWS managed keys (aws/ssm) are never a customer-managed key.
  if (alias) return alias[2]?.startsWith('aws/') ? false : undefined;
  if (reported.startsWith('arn:')) return false;
  return arn.endsWith(`:key/${reported}`);
}
