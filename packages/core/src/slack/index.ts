export * from './authorize';
export * from './commands';
export * from './message';
export * from './requests';
export * from './signature';
export * from './text';
export * from './updates';
