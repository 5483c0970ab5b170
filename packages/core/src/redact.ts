/** Replace the password of a postgres:// URL (and any `password=` keyword) with `***`. */
export function redactUrl(url: string): string {
  return url.replace(/^(postgres(?:ql)?:\/\/[^:/?#@]*:)[^@/?#]*@/i, '$1***@').replace(/(password=)[^&\s]*/gi, '$1***');
}

/**
 * Redact every postgres URL and every `password=` keyword found anywhere in a text (error messages
 * from drivers and tools, SQL that carries a conninfo). A quoted keyword value (`password='it''s'`,
 * `password='a\'b'`, or inside an SQL literal, `password=''x''` and, escaped, `password=''a\\''b''`) is
 * hidden up to its closing quote, or to the end of a text cut short.
 */
export function redactText(text: string): string {
  return text
    .replace(/(postgres(?:ql)?:\/\/[^:/?#@\s]*:)[^@/?#\s]*@/gi, '$1***@')
    .replace(
      /(password\s*=\s*)(''(?:[^'\\]|\\\\''|\\.|'''')*(?:''|$)|'(?:[^'\\]|\\.|'')*(?:'|$)|[^&\s']*)/gi,
      (_m, key: string, value: string) =>
        value.startsWith("''") ? `${key}''***''` : value.startsWith("'") ? `${key}'***'` : `${key}***`,
    );
}
