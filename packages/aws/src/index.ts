// store: the DynamoDB migration store and its table layout
export * from './dynamo-parts';
export * from './dynamo-store';
// Adapters (helper `adapters`): task callbacks, events, secrets, TLS, the RDS target.
export * from './callbacks';
export * from './events';
export * from './rds';
export * from './secrets';
export * from './tls';
