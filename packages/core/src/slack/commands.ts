/** `/pgferry …`: the slash command's text (what follows `/pgferry`) as a typed command, or what is wrong with it. */
import { MIGRATION_ID } from '../config';
import { PLAN_NAME } from '../plan';

export type SlackCommand =
  | { kind: 'start'; plan: string }
  | { kind: 'status'; id?: string }
  | { kind: 'approve'; id: string }
  | { kind: 'rollback'; id: string }
  | { kind: 'abort'; id: string }
  | { kind: 'resume'; id: string }
  | { kind: 'help' };

export type SlackCommandKind = SlackCommand['kind'];

/** Commands that change a migration; the others (status, help) only read. */
export const ACTING_COMMANDS: readonly SlackCommandKind[] = ['start', 'approve', 'rollback', 'abort', 'resume'];

export const SLACK_USAGE = [
  '`/pgferry start <plan>`: start a migration from a named plan',
  '`/pgferry status [id]`: one migration, or the list',
  '`/pgferry approve <id>`: approve the cutover of a migration waiting at the gate',
  '`/pgferry rollback <id>`: switch back to the source, losing nothing',
  '`/pgferry abort <id>`: stop a migration that has not cut over and remove what it made',
  '`/pgferry resume <id>`: go on with a migration whose execution stopped (status "Stopped (resumable)")',
  '`/pgferry help`: this list',
].join('\n');

export type ParsedSlackCommand = { ok: true; command: SlackCommand } | { ok: false; message: string };

const fail = (message: string): ParsedSlackCommand => ({ ok: false, message: `${message}\n\nUsage:\n${SLACK_USAGE}` });

/** Slack sends what the user typed: quoting backticks and `<…>` placeholders typed literally are common. */
const shown = (word: string) => `\`${word.replace(/`/g, "'").slice(0, 60)}\``;

export function parseSlackCommand(text: string): ParsedSlackCommand {
  // Slack may send non-breaking spaces from a pasted id.
  const words = text
    .replace(/\u00a0/g, ' ')
    .trim()
    .split(/\s+/)
    .filter(Boolean);
  const [verb, ...args] = words;
  if (!verb) return { ok: true, command: { kind: 'help' } };
  const name = verb.toLowerCase();
  const one = (what: string, placeholder: string, pattern: RegExp, rule: string): string | ParsedSlackCommand => {
    if (args.length === 0) return fail(`\`${name}\` needs ${what}: \`/pgferry ${name} <${placeholder}>\``);
    if (args.length > 1)
      return fail(
        `\`${name}\` takes one ${what.replace(/^an? /, '')}, got ${args.length}: ${args.map(shown).join(' ')}`,
      );
    const arg = args[0]!;
    if (!pattern.test(arg)) return fail(`${shown(arg)} is not ${what}: ${rule}`);
    return arg;
  };
  const idRule = 'a migration id is 1-24 characters of a-z, 0-9 and _, starting with a letter';
  switch (name) {
    case 'help':
      return args.length ? fail(`\`help\` takes nothing, got ${args.map(shown).join(' ')}`) : ok({ kind: 'help' });
    case 'start': {
      const plan = one(
        'a plan name',
        'plan',
        PLAN_NAME,
        'a plan name is 1-48 characters of a-z, 0-9 and -, starting with a letter',
      );
      return typeof plan === 'string' ? ok({ kind: 'start', plan }) : plan;
    }
    case 'status': {
      if (args.length === 0) return ok({ kind: 'status' });
      const id = one('a migration id', 'id', MIGRATION_ID, idRule);
      return typeof id === 'string' ? ok({ kind: 'status', id }) : id;
    }
    case 'approve':
    case 'rollback':
    case 'abort':
    case 'resume': {
      const id = one('a migration id', 'id', MIGRATION_ID, idRule);
      return typeof id === 'string' ? ok({ kind: name, id }) : id;
    }
    default:
      return fail(`unknown command ${shown(verb)}`);
  }
}

const ok = (command: SlackCommand): ParsedSlackCommand => ({ ok: true, command });
