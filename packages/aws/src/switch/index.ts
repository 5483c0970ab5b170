export * from './aws-error';
export * from './from-config';
export * from './route53-cname';
export * from './secrets-manager';
export * from './ssm-parameter';
