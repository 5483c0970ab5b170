/** SSM Parameter Store over aws-sdk-client-mock, as far as the connection switch uses it. */
import {
  DescribeParametersCommand,
  GetParameterCommand,
  GetParameterHistoryCommand,
  LabelParameterVersionCommand,
  ParameterNotFound,
  PutParameterCommand,
  SSMClient,
  UnlabelParameterVersionCommand,
} from '@aws-sdk/client-ssm';
import { mockClient } from 'aws-sdk-client-mock';

export const PARAM = '/shop/prod/database-url';
export const KEY = 'arn:aws:kms:eu-west-1:123456789012:key/5b2a1c3d-0e4f-4a5b-8c6d-7e8f9a0b1c2d';

/**
 * SSM Parameter Store as far as the switch uses it: versions, labels, history, selectors.
 * `describedKeyId`: the KeyId DescribeParameters reports for a SecureString (as the parameter was made:
 * a key ARN, a key id or an alias).
 */
export function fakeSsm(type: 'String' | 'SecureString', value: string, describedKeyId = KEY) {
  const ssm = mockClient(SSMClient);
  const versions = [{ Version: 1, Value: value, Labels: [] as string[] }];
  const latest = () => versions[versions.length - 1]!;
  ssm.on(DescribeParametersCommand).callsFake((i) =>
    i.ParameterFilters?.[0]?.Values?.[0] === PARAM
      ? {
          Parameters: [
            {
              Name: PARAM,
              Type: type,
              ...(type === 'SecureString' ? { KeyId: describedKeyId } : {}),
              Version: latest().Version,
            },
          ],
        }
      : { Parameters: [] },
  );
  ssm.on(GetParameterCommand).callsFake((i) => {
    const [name, selector] = String(i.Name).split(/:(?=[^:/]*$)/);
    if (name !== PARAM) throw new ParameterNotFound({ message: 'not found', $metadata: {} });
    const v = selector ? versions.find((x) => String(x.Version) === selector || x.Labels.includes(selector)) : latest();
    if (!v) throw new ParameterNotFound({ message: 'no such version', $metadata: {} });
    return { Parameter: { Name: PARAM, Type: type, Value: v.Value, Version: v.Version } };
  });
  ssm.on(GetParameterHistoryCommand).callsFake(() => ({
    Parameters: versions.map((v) => ({ Name: PARAM, Type: type, Version: v.Version, Labels: [...v.Labels] })),
  }));
  ssm.on(LabelParameterVersionCommand).callsFake((i) => {
    for (const v of versions) v.Labels = v.Labels.filter((l) => !i.Labels.includes(l));
    versions.find((v) => v.Version === i.ParameterVersion)!.Labels.push(...i.Labels);
    return { ParameterVersion: i.ParameterVersion, InvalidLabels: [] };
  });
  ssm.on(UnlabelParameterVersionCommand).callsFake((i) => {
    const v = versions.find((x) => x.Version === i.ParameterVersion)!;
    v.Labels = v.Labels.filter((l) => !i.Labels.includes(l));
    return { RemovedLabels: i.Labels, InvalidLabels: [] };
  });
  ssm.on(PutParameterCommand).callsFake((i) => {
    if (!i.Overwrite) throw new Error('ParameterAlreadyExists');
    versions.push({ Version: latest().Version + 1, Value: i.Value, Labels: [] });
    return { Version: latest().Version, Tier: 'Standard' };
  });
  return { ssm, versions, latest, keyId: KEY };
}
