// store: the DynamoDB migration store and its table layout
export * from './dynamo-parts';
export * from './dynamo-store';
