// switch: the connection switch (Secrets Manager, SSM, Route 53) and the DMS path
export * from './dms';
export * from './switch/index';
