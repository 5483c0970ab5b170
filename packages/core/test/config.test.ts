import { describe, expect, it } from 'vitest';
import { InvalidInputError, objectNames, parseMigrationConfig, redactText, redactUrl } from '../src/index';

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
});
