/** Replace the password of a postgres:// URL (and any `password=` keyword) with `***`. */
export function redactUrl(url: string): string {
  return url.replace(/^(postgres(?:ql)?:\/\/[^:/?#@]*:)[^@/?#]*@/i, '$1***@').replace(/(password=)[^&\s]*/gi, '$1***');
}

/** Redact every postgres URL found anywhere in a text (error messages from drivers and tools). */
export function redactText(text: string): string {
  return text
    .replace(/(postgres(?:ql)?:\/\/[^:/?#@\s]*:)[^@/?#\s]*@/gi, '$1***@')
    .replace(/(password=)[^&\s']*/gi, '$1***');
}
