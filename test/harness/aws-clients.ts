/**
 * SDK clients for tests: a fixed region and dummy credentials, so that a request that escaped its
 * mock could never be signed for a real account. Every test mocks the instance it passes in.
 */
export const TEST_CLIENT_CONFIG = {
  region: 'eu-west-1',
  credentials: { accessKeyId: 'AKIATESTTESTTESTTEST', secretAccessKey: 'test-secret-not-real' },
} as const;
