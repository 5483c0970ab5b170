/**
 * The application's connection secret in Secrets Manager, in RDS's documented JSON shape
 * `{engine, host, port, username, password, dbname}`: the switch writes a new version pointing at
 * the target, the restore moves AWSCURRENT back to the version that was current before, unchanged.
 */
import { createHash } from 'node:crypto';
import {
  DescribeSecretCommand,
  GetSecretValueCommand,
  PutSecretValueCommand,
  type SecretsManagerClient,
  UpdateSecretVersionStageCommand,
} from '@aws-sdk/client-secrets-manager';
import {
  type ConnectionSwitch,
  ConnectionSwitchError,
  endpointParts,
  InvalidInputError,
  type SecretSwitchRecord,
  type SwitchCheckProblem,
  type SwitchEndpoint,
  type SwitchRecord,
  type SwitchRestore,
  switchLabel,
} from '@pgferry/core';
import { AwsSwitchBase } from './aws-error';

export interface SecretsManagerSwitchOptions {
  client: SecretsManagerClient;
  /** The secret's ARN or name, as the application reads it. */
  secretId: string;
  now?: () => Date;
}

const CURRENT = 'AWSCURRENT';
/** The fields a switch writes; every other field of the secret (engine, dbInstanceIdentifier, …) is kept. */
const POINTING = ['host', 'port', 'dbname', 'username', 'password'] as const;

type SecretJson = Record<string, unknown>;

export class SecretsManagerSwitch extends AwsSwitchBase implements ConnectionSwitch {
  private readonly client: SecretsManagerClient;
  private readonly secretId: string;

  constructor(o: SecretsManagerSwitchOptions) {
    super(`secret ${o.secretId}`, o.now);
    this.client = o.client;
    this.secretId = o.secretId;
  }

  async check(): Promise<SwitchCheckProblem[]> {
    try {
      const versions = await this.versions();
      const current = holder(versions, CURRENT);
      if (!current)
        return [this.problem('has no AWSCURRENT version', 'put the connection secret the application reads')];
      this.parse(await this.read(current));
      return [];
    } catch (err) {
      return this.unreadable(err, 'secretsmanager:DescribeSecret/GetSecretValue');
    }
  }

  async switchTo(to: SwitchEndpoint, migrationId: string): Promise<SecretSwitchRecord> {
    const target = endpointParts(to.url, 'switch target');
    const label = switchLabel(migrationId);
    const versions = await this.versions();
    const currentId = holder(versions, CURRENT);
    if (!currentId) throw new ConnectionSwitchError(`${this.resource} has no AWSCURRENT version`, this.resource);
    // Label what the application reads now before replacing it: Secrets Manager keeps a labelled version,
    // and a retry after a crash finds it here rather than taking pgferry's own version for the previous one.
    let previousId = holder(versions, label);
    if (!previousId) {
      await this.send('secretsmanager:UpdateSecretVersionStage', () =>
        this.client.send(
          new UpdateSecretVersionStageCommand({
            SecretId: this.secretId,
            VersionStage: label,
            MoveToVersionId: currentId,
          }),
        ),
      );
      previousId = currentId;
    }
    const current = this.parse(await this.read(currentId));
    const next: SecretJson = { ...current, host: target.host, port: target.port, dbname: target.dbname };
    if (target.username !== undefined) next.username = target.username;
    if (target.password !== undefined) next.password = target.password;
    const base = { kind: 'secrets-manager' as const, resource: this.resource, migrationId, label, warnings: [] };
    if (POINTING.every((k) => String(current[k] ?? '') === String(next[k] ?? ''))) {
      return {
        ...base,
        at: this.now().toISOString(),
        changed: false,
        previousVersionId: previousId,
        currentVersionId: currentId,
      };
    }
    const put = await this.send('secretsmanager:PutSecretValue', async () => {
      try {
        return await this.client.send(
          new PutSecretValueCommand({
            SecretId: this.secretId,
            SecretString: JSON.stringify(next),
            ClientRequestToken: versionToken(migrationId, next),
          }),
        );
      } catch (err) {
        if (err instanceof Error && err.name === 'ResourceExistsException') {
          throw new ConnectionSwitchError(
            `${this.resource} has a version from an earlier switch of ${migrationId} to the same server with other credentials`,
            this.resource,
            {
              cause: err,
              hint: `the target's credentials changed since that switch: update ${this.resource} by hand (the switch record still restores the version from before the switch)`,
            },
          );
        }
        throw err;
      }
    });
    const newId = put.VersionId!;
    // A version with this token that exists already (a second cutover after a rollback) is not made
    // current again by PutSecretValue: move the stage explicitly.
    if (!put.VersionStages?.includes(CURRENT)) {
      await this.moveCurrent(newId, currentId);
    }
    return {
      ...base,
      at: this.now().toISOString(),
      changed: true,
      previousVersionId: previousId,
      currentVersionId: newId,
    };
  }

  async restore(record: SwitchRecord): Promise<SwitchRestore> {
    if (record.kind !== 'secrets-manager') {
      throw new InvalidInputError(`a ${record.kind} switch record cannot restore ${this.resource}`, {
        field: 'record',
      });
    }
    const versions = await this.versions();
    const currentId = holder(versions, CURRENT);
    if (currentId === record.previousVersionId) {
      await this.unlabel(record, versions);
      return { changed: false, summary: `${this.resource} already reads version ${record.previousVersionId}` };
    }
    if (!versions[record.previousVersionId]) {
      throw new ConnectionSwitchError(
        `${this.resource} no longer has version ${record.previousVersionId}, the one current before the switch`,
        this.resource,
        { hint: 'restore the application connection by hand: put a version with the source server as AWSCURRENT' },
      );
    }
    if (currentId !== record.currentVersionId) {
      throw new ConnectionSwitchError(
        `${this.resource} was changed after the switch (AWSCURRENT is ${currentId}, the switch made ${record.currentVersionId}); pgferry does not undo someone else's change`,
        this.resource,
        {
          hint: `check who changed it (a rotation?); to go back anyway, move AWSCURRENT to version ${record.previousVersionId}`,
        },
      );
    }
    await this.moveCurrent(record.previousVersionId, currentId);
    await this.unlabel(record, versions);
    return { changed: true, summary: `${this.resource} reads version ${record.previousVersionId} again` };
  }

  /** Back where it was, the label has done its work: a later switch labels what is current then. */
  private async unlabel(record: SecretSwitchRecord, versions: Record<string, string[]>) {
    if (!versions[record.previousVersionId]?.includes(record.label)) return;
    await this.send('secretsmanager:UpdateSecretVersionStage', () =>
      this.client.send(
        new UpdateSecretVersionStageCommand({
          SecretId: this.secretId,
          VersionStage: record.label,
          RemoveFromVersionId: record.previousVersionId,
        }),
      ),
    );
  }

  private async moveCurrent(to: string, from: string | undefined) {
    await this.send('secretsmanager:UpdateSecretVersionStage', () =>
      this.client.send(
        new UpdateSecretVersionStageCommand({
          SecretId: this.secretId,
          VersionStage: CURRENT,
          MoveToVersionId: to,
          ...(from ? { RemoveFromVersionId: from } : {}),
        }),
      ),
    );
  }

  private async versions(): Promise<Record<string, string[]>> {
    const d = await this.send('secretsmanager:DescribeSecret', () =>
      this.client.send(new DescribeSecretCommand({ SecretId: this.secretId })),
    );
    return d.VersionIdsToStages ?? {};
  }

  private async read(versionId: string): Promise<string | undefined> {
    const v = await this.send('secretsmanager:GetSecretValue', () =>
      this.client.send(new GetSecretValueCommand({ SecretId: this.secretId, VersionId: versionId })),
    );
    return v.SecretString;
  }

  private parse(text: string | undefined): SecretJson {
    let value: unknown;
    try {
      value = JSON.parse(text ?? '');
    } catch {
      value = undefined;
    }
    if (!value || typeof value !== 'object' || Array.isArray(value)) {
      // Never quote the text: it is a secret.
      throw new ConnectionSwitchError(`${this.resource} does not hold a JSON object`, this.resource, {
        hint: 'the application secret must have the RDS shape {"engine","host","port","username","password","dbname"}',
      });
    }
    return value as SecretJson;
  }

  private problem(message: string, hint: string): SwitchCheckProblem {
    return { resource: this.resource, message: `${this.resource} ${message}`, hint };
  }
}

function holder(versions: Record<string, string[]>, stage: string): string | undefined {
  return Object.entries(versions).find(([, stages]) => stages.includes(stage))?.[0];
}

/**
 * The same switch gets the same ClientRequestToken, so Secrets Manager takes a retried PutSecretValue as
 * the one it already did. Derived from what the secret points at, never from the password: a version id
 * is readable by anyone who may describe the secret.
 */
function versionToken(migrationId: string, next: SecretJson): string {
  const pointing = JSON.stringify([migrationId, next.host, next.port, next.dbname, next.username]);
  return `pgferry-${createHash('sha256').update(pointing).digest('hex').slice(0, 40)}`;
}
