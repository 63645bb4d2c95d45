import { dictionary } from '@zxcvbn-ts/language-common';
import { CustosError } from '../core/errors.js';
import type { SecuritySettings } from './security-settings.js';

/** The common-password list of @zxcvbn-ts/language-common (about 49,000 entries), compared case-insensitively. */
const COMMON = new Set(dictionary['passwords-common'].map((p) => p.toLowerCase()));

const SPECIAL = /[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~]/;

/**
 * Checks a new password against the tenant's policy and returns the reasons
 * it is refused (empty: accepted). The password is taken exactly as given:
 * any Unicode, no trimming, no truncation, no case folding; length counts
 * code points.
 */
export function passwordProblems(password: string, policy: SecuritySettings['password'], username: string): string[] {
  const problems: string[] = [];
  const length = [...password].length;
  if (length < policy.minLength) problems.push(`must be at least ${policy.minLength} characters`);
  if (length > policy.maxLength) problems.push(`must be at most ${policy.maxLength} characters`);
  if (policy.requireLowercase && !/\p{Ll}/u.test(password)) problems.push('must contain a lower-case letter');
  if (policy.requireUppercase && !/\p{Lu}/u.test(password)) problems.push('must contain an upper-case letter');
  if (policy.requireDigit && !/[0-9]/.test(password)) problems.push('must contain a digit');
  if (policy.requireSpecial && !SPECIAL.test(password)) problems.push('must contain one of !"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~');
  if (policy.firstAndLastNonNumeric && (/^[0-9]/.test(password) || /[0-9]$/.test(password))) problems.push('must not start or end with a digit');
  const lower = password.toLowerCase();
  const user = username.toLowerCase();
  if (lower === user || lower === [...user].reverse().join('')) problems.push('must not be the username or the username reversed');
  if (COMMON.has(lower)) problems.push('is too common');
  return problems;
}

/**
 * Whether a password is well-formed Unicode (no unpaired UTF-16 surrogate).
 * argon2 hashes a password's UTF-8 bytes, and an unpaired surrogate has no
 * UTF-8 form: Node writes U+FFFD in its place, so "\uD800", "\uDBFF" and
 * "\uFFFD" would hash alike. Such a password is never set, and at sign-in it
 * fails like a wrong one (it cannot be the password as the user chose it).
 */
export function isWellFormedPassword(password: string): boolean {
  return password.isWellFormed();
}

/** Throws `validation_failed` for a value that is not a well-formed string, `password_rejected` listing every reason, or returns. */
export function checkPassword(password: unknown, policy: SecuritySettings['password'], username: string): string {
  if (typeof password !== 'string') throw new CustosError('validation_failed', 'password must be a string');
  if (!isWellFormedPassword(password)) throw new CustosError('validation_failed', 'password must be well-formed Unicode text: it contains an unpaired UTF-16 surrogate (half of a character)');
  const problems = passwordProblems(password, policy, username);
  if (problems.length > 0) throw new CustosError('password_rejected', `the password ${problems.join('; ')}`, { extensions: { reasons: problems } });
  return password;
}
