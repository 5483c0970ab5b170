/**
 * `npm run synth [-- --stage <stage>] [--out <dir>]`: writes the CloudFormation templates (and the
 * bundled functions and the worker image's build context beside them) without AWS credentials.
 * `sst build` cannot be used for that: without credentials it exits 0 having written nothing.
 */
import { readdirSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Aws } from 'aws-cdk-lib';
import { App } from 'sst/constructs';
import { initProject, useProject } from 'sst/project.js';
import { pgferryApp } from './app';
import { DEPLOY_ENV, type DeployConfig, deployConfigFromEnv } from './config';

/** The network `npm run synth` shows when none is configured: well-formed ids that exist nowhere. */
const EXAMPLE_NETWORK = {
  [DEPLOY_ENV.vpcId]: 'vpc-0123456789abcdef0',
  [DEPLOY_ENV.subnetIds]: 'subnet-0123456789abcdef0,subnet-0fedcba9876543210',
  [DEPLOY_ENV.securityGroupIds]: 'sg-0123456789abcdef0',
};

const { values } = parseArgs({ options: { stage: { type: 'string' }, out: { type: 'string' } } });
const stage = values.stage ?? 'synth';

// SST skips what needs an AWS session (its bootstrap stack, the sourcemap uploader) only under test.
process.env.NODE_ENV = 'test';
await initProject({ stage });
const { config, paths } = useProject();
const out = resolve(values.out ?? join(paths.root, '.synth', stage));

let deployConfig: DeployConfig;
if (process.env[DEPLOY_ENV.vpcId]) {
  deployConfig = deployConfigFromEnv();
} else {
  console.log(
    `${DEPLOY_ENV.vpcId} is not set: the templates name an example network (${EXAMPLE_NETWORK[DEPLOY_ENV.vpcId]}).`,
  );
  deployConfig = deployConfigFromEnv({ ...process.env, ...EXAMPLE_NETWORK });
}

const app = new App(
  {
    mode: 'deploy',
    stage,
    name: config.name,
    region: process.env.AWS_REGION ?? config.region ?? 'us-east-1',
    // Without credentials the account is left to CloudFormation (AWS::AccountId) unless given.
    account: process.env.CDK_DEFAULT_ACCOUNT ?? Aws.ACCOUNT_ID,
  },
  { outdir: out },
);
pgferryApp(app, deployConfig);
await app.finish();
app.synth();

for (const file of readdirSync(out).filter((f) => f.endsWith('.template.json'))) {
  console.log(relative(process.cwd(), join(out, file)));
}
