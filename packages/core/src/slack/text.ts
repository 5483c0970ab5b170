import { redactText } from '../redact';

/**
 * User data (table names, summaries, messages) in Slack mrkdwn: `&`, `<` and `>` are the three
 * characters Slack asks to escape; left alone, `<!channel>` in a table name would notify a channel.
 * Redacted too: a Slack message leaves our systems.
 */
export function escapeMrkdwn(text: unknown): string {
  return redactText(String(text ?? ''))
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;');
}
