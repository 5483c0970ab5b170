export * from './config';
export * from './errors';
export * from './format';
export * from './lag';
export * from './model';
export * from './ports';
export * from './redact';
export * from './workflow/tasks';
