/** The "Read the copy plan" state's Lambda function (the scaled-out bulk load's poll). */
import { taskHandler } from '../lib/task-handler';

export const handler = taskHandler('readCopyPlan');
