/** `POST /slack/commands`: the `/pgferry` slash command, answered at once, its work handed to the worker. */
import { slackEndpointHandler } from '../lib/slack-deps';

export const handler = slackEndpointHandler('commands');
