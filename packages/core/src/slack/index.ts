export * from './authorize';
export * from './commands';
export * from './message';
export * from './signature';
export * from './text';
