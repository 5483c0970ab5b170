// The S3 dump path: upload, verified download, the Object Created event.
export * from './artifacts';
// Task callbacks, events, secrets, TLS, the RDS target.
export * from './callbacks';
// The store as a deployment builds it (table from the environment, credentials from Secrets Manager).
export * from './deployed';
// The DMS path and the connection switch (Secrets Manager, SSM, Route 53).
export * from './dms';
export * from './dms-replication';
// The DynamoDB migration store and its table layout.
export * from './dynamo-parts';
export * from './dynamo-store';
export * from './events';
export * from './rds';
export * from './secrets';
// Slack: secrets, the replay cache and message record, the Web API, the work behind commands and buttons.
export * from './slack';
// A migration started in AWS from a named plan (Slack's /pgferry start, the CLI's pgferry start).
export * from './start';
export * from './switch/index';
export * from './tls';
