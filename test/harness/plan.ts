import type { MigrationPlanInput } from '../../packages/core/src/index';

/** A valid plan named `name`: an existing target instance, manual cutover, an SSM parameter switched. */
export const samplePlan = (name: string): MigrationPlanInput => ({
  name,
  source: { secretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-source' },
  target: {
    kind: 'existing',
    instanceIdentifier: 'shop-17',
    secretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-target',
  },
  cutover: { policy: 'manual' },
  switch: { kind: 'ssm-parameter', name: '/shop/database-url' },
  approvers: { users: ['U024BE7LH'] },
});
