export * from './catalog';
export * from './db';
