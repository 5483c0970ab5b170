/**
 * The connection switch a migration's config (or plan) names in `switch`, built from its kind: what the
 * deployed tasks inject into the cutover and the rollback (functions/lib/aws-deps.ts).
 */
import { Route53Client } from '@aws-sdk/client-route-53';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { SSMClient } from '@aws-sdk/client-ssm';
import type { ConnectionSwitch, SwitchTarget } from '@pgferry/core';
import { Route53CnameSwitch } from './route53-cname';
import { SecretsManagerSwitch } from './secrets-manager';
import { SsmParameterSwitch } from './ssm-parameter';

/** Clients by kind, made only for the kind a migration uses (the tasks' container keeps them). */
export interface SwitchClients {
  secrets?: SecretsManagerClient;
  ssm?: SSMClient;
  route53?: Route53Client;
}

export function connectionSwitchFor(
  target: SwitchTarget | undefined,
  clients: SwitchClients = {},
): ConnectionSwitch | undefined {
  switch (target?.kind) {
    case undefined:
      return undefined;
    case 'secret':
      clients.secrets ??= new SecretsManagerClient({});
      return new SecretsManagerSwitch({ client: clients.secrets, secretId: target.secretArn });
    case 'ssm-parameter':
      clients.ssm ??= new SSMClient({});
      return new SsmParameterSwitch({
        client: clients.ssm,
        name: target.name,
        ...(target.kmsKeyArn ? { kmsKeyArn: target.kmsKeyArn } : {}),
      });
    case 'route53':
      clients.route53 ??= new Route53Client({});
      return new Route53CnameSwitch({
        client: clients.route53,
        hostedZoneId: target.hostedZoneId,
        recordName: target.recordName,
      });
  }
}
