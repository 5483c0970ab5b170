// The DynamoDB store and its table layout (helper `store`); task callbacks, events, secrets, TLS and
// the RDS target (helper `adapters`).
export * from './callbacks';
export * from './dynamo-parts';
export * from './dynamo-store';
export * from './events';
export * from './rds';
export * from './secrets';
export * from './tls';
