import { hash } from 'node:crypto';

/**
 * oHash normalisation of an email address, as Oracle Responsys does it: trim,
 * lower-case, and drop a `+alias` from the local part
 * (`  Jane.Doe+News@Example.COM ` → `jane.doe@example.com`). Nothing else is
 * changed (dots in the local part stay).
 */
export function normaliseEmail(email: string): string {
  const lower = email.trim().toLowerCase();
  const at = lower.lastIndexOf('@');
  if (at < 0) return lower;
  const local = lower.slice(0, at);
  const plus = local.indexOf('+');
  return `${plus >= 0 ? local.slice(0, plus) : local}${lower.slice(at)}`;
}

/**
 * The oHashes of an email: SHA-256 and MD5 of the normalised address, hex.
 * Known weakness, by design: they are unsalted, so anyone who holds an email
 * address can compute its oHash and find the matching record — which is what
 * makes them useful as match keys across systems, and why Custos treats them
 * as personal data (redacted and recorded like the email itself).
 */
export function ohashes(email: string): { sha256: string; md5: string } {
  const n = normaliseEmail(email);
  // One-shot crypto.hash: about twice as fast as createHash() for short inputs.
  return { sha256: hash('sha256', n, 'hex'), md5: hash('md5', n, 'hex') };
}
