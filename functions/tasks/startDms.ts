/** The "Start the DMS task" state's Lambda function. */
import { taskHandler } from '../lib/task-handler';

export const handler = taskHandler('startDms');
