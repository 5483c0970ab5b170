import type { SSTConfig } from 'sst';
import { pgferryApp } from './stacks/app';
import { deployConfigFromEnv } from './stacks/config';

export default {
  config() {
    return { name: 'pgferry', region: process.env.AWS_REGION ?? 'us-east-1' };
  },
  stacks(app) {
    pgferryApp(app, deployConfigFromEnv());
  },
} satisfies SSTConfig;
