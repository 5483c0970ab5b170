import { describe, expect, it } from 'vitest';
import { createOutput } from '../src/output';

describe('output', () => {
  it('keeps every --json line valid JSON while it redacts passwords inside the messages', () => {
    const lines: string[] = [];
    const stream = { write: (s: string) => lines.push(s), isTTY: false } as unknown as NodeJS.WriteStream;
    const out = createOutput({ json: true, stream });
    out.log('cannot connect: host=db password=hunter2 dbname=app');
    out.result({ failure: "pid 7: ALTER ROLE app PASSWORD 'hunter2'", url: 'postgres://u:hunter2@db/app' }, '');
    out.error(new Error('connection to postgres://u:hunter2@db/app failed: password=hunter2'));
    expect(lines).toHaveLength(3);
    for (const line of lines) {
      expect(line).not.toContain('hunter2');
      expect(() => JSON.parse(line)).not.toThrow();
    }
    expect(JSON.parse(lines[0] as string).message).toBe('cannot connect: host=db password=*** dbname=app');
  });
});
