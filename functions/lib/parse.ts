import { InvalidInputError } from '@pgferry/core';
import type { z } from 'zod';

/** `event` as `schema` says, or an InvalidInputError naming the first bad field and who sends this event. */
export function parseEvent<T extends z.ZodType>(schema: T, event: unknown, what: string, hint: string): z.output<T> {
  const parsed = schema.safeParse(event);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  const field = issue.path.join('.') || 'event';
  throw new InvalidInputError(`${what}: ${field}: ${issue.message}`, { field, hint });
}
