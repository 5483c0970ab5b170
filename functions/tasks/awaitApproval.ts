/** The "Await cutover approval" state's Lambda function. */
import { taskHandler } from '../lib/task-handler';

export const handler = taskHandler('awaitApproval');
