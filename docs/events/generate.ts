/**
 * Writes docs/events/<name>.schema.json from the zod schemas in packages/core/src/events.ts:
 * `npx tsx docs/events/generate.ts`. test/aws-events.test.ts fails while the files differ.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { eventSchemaDocuments } from '../../packages/core/src/events';

for (const [file, text] of Object.entries(eventSchemaDocuments())) {
  writeFileSync(join(import.meta.dirname, file), text);
  console.log(`wrote docs/events/${file}`);
}
