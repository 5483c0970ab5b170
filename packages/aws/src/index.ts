// switch: the connection switch (Secrets Manager, SSM, Route 53) and the DMS path

// Adapters (helper `adapters`): task callbacks, events, secrets, TLS, the RDS target.
export * from './callbacks';
export * from './dms';
export * from './events';
export * from './rds';
export * from './secrets';
export * from './switch/index';
export * from './tls';
