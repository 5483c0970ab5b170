// Adapters (helper `adapters`): task callbacks, events, secrets, TLS, the RDS target.
export * from './callbacks';
export * from './events';
export * from './rds';
export * from './secrets';
export * from './tls';
