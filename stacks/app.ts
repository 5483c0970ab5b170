import type { App } from 'sst/constructs';
import type { DeployConfig } from './config';
import { functionDefaults } from './network';
import { pgferryStack } from './Pgferry';

/** The whole app, for `sst deploy`, `npm run synth` and the stack tests alike. */
export function pgferryApp(app: App, config: DeployConfig) {
  app.setDefaultFunctionProps((stack) => functionDefaults(stack, config));
  const stack = pgferryStack(config);
  app.stack(stack);
  return stack;
}
