/** The "Wait for the DMS full load" state's Lambda function: it keeps the token; the DMS task's event completes it. */
import { taskHandler } from '../lib/task-handler';

export const handler = taskHandler('awaitDmsFullLoad');
