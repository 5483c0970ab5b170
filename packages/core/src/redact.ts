/**
 * A postgres URL's user information, up to the last `@` before the host: a password may hold an
 * unencoded `@` (`p@ss@host` is user `…`, password `p@ss`), and a user name may too. The user name
 * (before the first `:`) stays; everything after it up to that last `@` is hidden.
 */
const URL_USERINFO = /(postgres(?:ql)?:\/\/)([^/?#\s]*)@/gi;

function hideUserinfo(_m: string, scheme: string, userinfo: string): string {
  const colon = userinfo.indexOf(':');
  return colon < 0 ? `${scheme}${userinfo}@` : `${scheme}${userinfo.slice(0, colon)}:***@`;
}

/** Replace the password of a postgres:// URL (and any `password=` keyword) with `***`. */
export function redactUrl(url: string): string {
  return url.replace(URL_USERINFO, hideUserinfo).replace(/(password=)[^&\s]*/gi, '$1***');
}

/**
 * An SQL string constant as PostgreSQL reads it: '…' (quotes doubled), E'…' (backslash escapes) or
 * $tag$…$tag$, each hidden to its end, or to the end of a text cut short.
 */
const SQL_LITERAL = /(E?'(?:[^'\\]|\\.|'')*(?:'|$)|\$([A-Za-z_]\w*)?\$[\s\S]*?(?:\$\2\$|$))/.source;

/**
 * SQL that carries a password as a literal: `CREATE/ALTER ROLE/USER … [ENCRYPTED] PASSWORD '…'` (also
 * the SCRAM verifier psql's \password sends), and the `password '…'` option of CREATE SERVER /
 * USER MAPPING / dblink's foreign-data wrappers (`OPTIONS (user 'u', password '…')`).
 */
const SQL_PASSWORD = new RegExp(`(\\bpassword\\s+)${SQL_LITERAL}`, 'gi');

/**
 * Redact every postgres URL and every `password=` keyword found anywhere in a text (error messages
 * from drivers and tools, SQL that carries a conninfo), and every password literal of SQL. A quoted
 * keyword value (`password='it''s'`, `password='a\'b'`, or inside an SQL literal, `password=''x''` and,
 * escaped, `password=''a\\''b''`) is hidden up to its closing quote, or to the end of a text cut short.
 */
export function redactText(text: string): string {
  return text
    .replace(URL_USERINFO, hideUserinfo)
    .replace(
      /(password\s*=\s*)(''(?:[^'\\]|\\\\''|\\.|'''')*(?:''|$)|'(?:[^'\\]|\\.|'')*(?:'|$)|[^&\s']*)/gi,
      (_m, key: string, value: string) =>
        value.startsWith("''") ? `${key}''***''` : value.startsWith("'") ? `${key}'***'` : `${key}***`,
    )
    .replace(SQL_PASSWORD, "$1'***'");
}

/**
 * `value` as JSON with every string redacted before it is quoted: redacting the JSON text instead
 * would let an unquoted `password=` value run on over the string's closing quote and break the line.
 */
export function redactedJson(value: unknown, space?: number): string {
  return JSON.stringify(value, (_key, v) => (typeof v === 'string' ? redactText(v) : v), space);
}

/** How much of another session's SQL pgferry keeps (to name it in a message): a short, redacted prefix. */
export const SQL_PREFIX_CHARS = 40;

/**
 * Another session's query text (pg_stat_activity.query), as pgferry may show or record it: whitespace
 * folded, passwords redacted, cut to a short prefix. The rest of someone else's SQL is none of the
 * migration's business, and may hold secrets no pattern knows.
 */
export function sqlPrefix(query: string | null | undefined): string {
  const text = redactText((query ?? '').replace(/\s+/g, ' ').trim());
  return text.length > SQL_PREFIX_CHARS ? `${text.slice(0, SQL_PREFIX_CHARS)}…` : text;
}
