/**
 * The "Wait for the dump upload" state's Lambda function: stores the step's token for the dump's S3
 * `Object Created` event (functions/events/dump-created.ts completes it), or completes it at once when
 * the object is already there.
 */
import { taskHandler } from '../lib/task-handler';

export const handler = taskHandler('awaitDumpUpload');
