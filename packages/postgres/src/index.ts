export * from './catalog';
export * from './critical';
export * from './db';
// dump (S3 dump stream)
export * from './dump-stream';
export * from './freeze';
export * from './inspect';
export * from './lag';
export * from './phases/index';
export * from './replication';
export * from './sequences';
export * from './switch';
export * from './tasks/index';
export * from './tools';
