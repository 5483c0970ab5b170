import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'packages/*/test/**/*.test.ts'],
    globalSetup: ['test/harness/global-setup.ts'],
    testTimeout: 180_000,
    hookTimeout: 120_000,
    // Migrations are timing-sensitive (lag, drain, freeze); on a 2-core machine files run one at a time.
    fileParallelism: false,
    reporters: ['default'],
  },
});
