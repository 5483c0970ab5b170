/** `POST /slack/interactions`: the gate's "Approve cutover" and "Roll back" buttons. */
import { slackEndpointHandler } from '../lib/slack-deps';

export const handler = slackEndpointHandler('interactions');
