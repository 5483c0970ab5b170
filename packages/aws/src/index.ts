// dump (S3 artifacts)
export * from './artifacts';
