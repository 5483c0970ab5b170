export * from './config';
export * from './errors';
export * from './model';
export * from './redact';
