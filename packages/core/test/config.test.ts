import { describe, expect, it } from 'vitest';
import { InvalidInputError, objectNames, parseMigrationConfig, redactText, redactUrl, sqlPrefix } from '../src/index';

const ok = { id: 'm1', sourceUrl: 'postgres://u:p@db1:5432/app', targetUrl: 'postgres://u:p@db2:5432/app' };

function errorOf(input: unknown): InvalidInputError {
  try {
    parseMigrationConfig(input);
  } catch (err) {
    return err as InvalidInputError;
  }
  throw new Error('expected an InvalidInputError');
}

describe('migration config', () => {
  it('fills defaults: snapshot strategy, manual cutover', () => {
    const c = parseMigrationConfig(ok);
    expect(c.strategy).toBe('snapshot');
    expect(c.cutover).toBe('manual');
    expect(c.jobs).toBeGreaterThan(0);
  });

  it('names --source when the source URL is malformed', () => {
    const err = errorOf({ ...ok, sourceUrl: 'not a url' });
    expect(err).toBeInstanceOf(InvalidInputError);
    expect(err.message).toContain('--source');
    expect(err.field).toBe('sourceUrl');
  });

  it('rejects a URL of another scheme and one without a database, naming the field', () => {
    expect(errorOf({ ...ok, targetUrl: 'mysql://u:p@h/db' }).message).toMatch(/--target must start with postgres:\/\//);
    expect(errorOf({ ...ok, targetUrl: 'postgres://u:p@h:5432' }).message).toMatch(/--target names no database/);
  });

  it('rejects the same URL for source and target', () => {
    expect(errorOf({ ...ok, targetUrl: ok.sourceUrl }).message).toMatch(/same URL as --source/);
  });

  it('rejects an unknown strategy and a non-positive --jobs with the flag named', () => {
    expect(errorOf({ ...ok, strategy: 'magic' }).message).toMatch(/--strategy must be one of snapshot, native, dump/);
    expect(errorOf({ ...ok, jobs: 0 }).message).toMatch(/--jobs must be at least 1/);
  });

  it('rejects ids that would make invalid object names', () => {
    expect(errorOf({ ...ok, id: 'Bad-Id' }).message).toMatch(/id must be/);
  });

  it('derives every object name from the migration id', () => {
    expect(objectNames('m1')).toMatchObject({
      slot: 'pgferry_m1',
      publication: 'pgferry_m1',
      reverseSlot: 'pgferry_m1_rev',
    });
  });

  it('takes an AWS connection switch and names the field of a wrong one', () => {
    const arn = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop/app-db-AbCdEf';
    expect(parseMigrationConfig({ ...ok, switch: { kind: 'secret', secretArn: arn } }).switch).toEqual({
      kind: 'secret',
      secretArn: arn,
    });
    expect(parseMigrationConfig(ok).switch).toBeUndefined();
    const missing = errorOf({ ...ok, switch: { kind: 'ssm-parameter' } });
    expect(missing.field).toBe('switch.name');
    expect(missing.message).toContain('switch.name is required');
    expect(errorOf({ ...ok, switch: { kind: 'dns' } }).message).toContain(
      'switch.kind must be secret, ssm-parameter or route53',
    );
  });
});

describe('redaction', () => {
  it('hides the password of a URL and of libpq keyword strings', () => {
    expect(redactUrl('postgres://app:s3cr3t@db:5432/x')).toBe('postgres://app:***@db:5432/x');
    expect(redactText('connect failed: host=db password=s3cr3t user=u and postgresql://a:b@c/d')).toBe(
      'connect failed: host=db password=*** user=u and postgresql://a:***@c/d',
    );
  });

  it('hides quoted libpq passwords, also inside the SQL literal of a CREATE SUBSCRIPTION', () => {
    expect(redactText("host='db' password='se cr''et' user='u'")).toBe("host='db' password='***' user='u'");
    expect(redactText("host='db' password='a\\'b' dbname='x'")).toBe("host='db' password='***' dbname='x'");
    expect(
      redactText("CREATE SUBSCRIPTION s CONNECTION 'host=''db'' password=''hunter2pass'' user=''u''' PUBLICATION p"),
    ).toBe("CREATE SUBSCRIPTION s CONNECTION 'host=''db'' password=''***'' user=''u''' PUBLICATION p");
    // A quote in the password: conninfo escapes it (\'), the SQL literal then doubles both (E'…\\''…').
    expect(redactText("CONNECTION E'host=h password=''a\\\\''secretTail'' dbname=d' PUBLICATION p")).toBe(
      "CONNECTION E'host=h password=''***'' dbname=d' PUBLICATION p",
    );
    // Cut short (a hint keeps the first 120 characters): nothing of the password shows either.
    expect(redactText("CONNECTION 'host=''db'' password=''hunter2p")).not.toContain('hunter');
  });

  it('hides an unencoded @ in a URL password up to the last @ before the host', () => {
    expect(redactUrl('postgres://app:p@ss@word@db:5432/x')).toBe('postgres://app:***@db:5432/x');
    expect(redactText('cannot connect: postgresql://app:p@ss@db/x?sslmode=require')).toBe(
      'cannot connect: postgresql://app:***@db/x?sslmode=require',
    );
  });

  it('hides the password literals of SQL: roles, ENCRYPTED PASSWORD, servers and user mappings', () => {
    const cases = [
      "ALTER ROLE app PASSWORD 'hunter2'",
      "alter user app with encrypted password 'hunter2' valid until 'infinity'",
      "CREATE ROLE app LOGIN PASSWORD E'hun\\'ter2'",
      'CREATE USER app PASSWORD $pw$hunter2$pw$',
      "ALTER ROLE app PASSWORD 'SCRAM-SHA-256$4096:hunter2'",
      "CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'u', password 'hunter2')",
      "ALTER SERVER s OPTIONS (ADD password 'hunter2')",
      "SELECT dblink_connect('host=h password=hunter2 dbname=d')",
      "ALTER ROLE app PASSWORD 'hunter", // cut short
    ];
    for (const sql of cases) expect(redactText(sql), sql).not.toContain('hunter');
    expect(redactText("ALTER ROLE app PASSWORD 'hunter2' VALID UNTIL 'x'")).toBe(
      "ALTER ROLE app PASSWORD '***' VALID UNTIL 'x'",
    );
  });

  it("keeps only a short redacted prefix of another session's SQL", () => {
    const q = sqlPrefix("ALTER   ROLE app\n PASSWORD 'hunter2'; SELECT * FROM orders WHERE card = '4111111111111111'");
    expect(q).not.toContain('hunter2');
    expect(q).not.toContain('4111');
    expect(q.length).toBeLessThanOrEqual(41);
    expect(sqlPrefix('SELECT 1')).toBe('SELECT 1');
  });
});
