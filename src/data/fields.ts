import { CustosError } from '../core/errors.js';

export const FIELD_TYPES = ['string', 'email', 'phone', 'number', 'boolean', 'date', 'timestamp', 'json'] as const;
export type FieldType = (typeof FIELD_TYPES)[number];
export const CLASSIFICATIONS = ['pii', 'sensitive', 'plain'] as const;
export type Classification = (typeof CLASSIFICATIONS)[number];

/** How a `pii` value is shown to a principal without `data.pii.view`. */
export type Mask = { kind: 'email' } | { kind: 'phone' } | { kind: 'partial'; keepFirst: number; keepLast: number } | { kind: 'full' };

export interface FieldDef {
  name: string;
  type: FieldType;
  classification: Classification;
  required: boolean;
  unique: boolean;
  /** Equality search on a protected field needs a blind index: on for `unique` fields and the standard ones. */
  indexed: boolean;
  mask: Mask | null;
  /** Standard fields are always present; computed ones are derived from EMAIL_ADDRESS_ and never written. */
  standard: boolean;
  computed: boolean;
}

export const EMAIL = 'EMAIL_ADDRESS_';
export const MOBILE = 'MOBILE_NUMBER_';
export const CUSTOMER_ID = 'CUSTOMER_ID_';
export const SHA256 = 'EMAIL_SHA256_HASH_';
export const MD5 = 'EMAIL_MD5_HASH_';
export const MATCH_KEYS = [CUSTOMER_ID, EMAIL, SHA256, MD5] as const;
export type MatchKey = (typeof MATCH_KEYS)[number];

/** The standard fields of a profile list, as in Responsys. */
export const STANDARD_FIELDS: readonly FieldDef[] = Object.freeze([
  { name: EMAIL, type: 'email', classification: 'pii', required: false, unique: true, indexed: true, mask: { kind: 'email' }, standard: true, computed: false },
  { name: MOBILE, type: 'phone', classification: 'pii', required: false, unique: false, indexed: true, mask: { kind: 'phone' }, standard: true, computed: false },
  { name: CUSTOMER_ID, type: 'string', classification: 'plain', required: false, unique: true, indexed: true, mask: null, standard: true, computed: false },
  { name: SHA256, type: 'string', classification: 'pii', required: false, unique: false, indexed: true, mask: { kind: 'full' }, standard: true, computed: true },
  { name: MD5, type: 'string', classification: 'pii', required: false, unique: false, indexed: true, mask: { kind: 'full' }, standard: true, computed: true },
] as FieldDef[]);

const NAME = /^[A-Z][A-Z0-9_]{0,63}$/;
const MAX_FIELDS = 200;
export const MAX_STRING = 4000;

function fail(why: string): never {
  throw new CustosError('validation_failed', why);
}

/** Checks one field definition from a request (copy, then check). */
export function checkFieldDef(input: unknown): FieldDef {
  const o = input as Record<string, unknown>;
  if (o === null || typeof o !== 'object') fail('a field must be an object');
  const allowed = new Set(['name', 'type', 'classification', 'required', 'unique', 'indexed', 'mask']);
  for (const k of Object.keys(o)) if (!allowed.has(k)) fail(`field: unknown member ${k}`);
  const name = o.name;
  if (typeof name !== 'string' || !NAME.test(name)) fail('field names are 1-64 upper-case letters, digits and underscores, starting with a letter');
  if (STANDARD_FIELDS.some((f) => f.name === name)) fail(`${name} is a standard field`);
  if (!FIELD_TYPES.includes(o.type as FieldType)) fail(`${name}: type must be one of ${FIELD_TYPES.join(', ')}`);
  if (!CLASSIFICATIONS.includes(o.classification as Classification)) fail(`${name}: classification must be pii, sensitive or plain`);
  const bool = (k: string) => {
    if (o[k] === undefined) return false;
    if (typeof o[k] !== 'boolean') fail(`${name}: ${k} must be true or false`);
    return o[k];
  };
  const type = o.type as FieldType;
  const classification = o.classification as Classification;
  const unique = bool('unique');
  let mask: Mask | null = null;
  if (classification === 'pii') mask = o.mask === undefined ? defaultMask(type) : checkMask(o.mask, name);
  else if (o.mask !== undefined) fail(`${name}: only pii fields have a mask`);
  // Any character of `true` or `false` tells which it is.
  if (type === 'boolean' && mask !== null && mask.kind !== 'full') fail(`${name}: a boolean pii field can only be fully masked`);
  if (type === 'json' && (unique || bool('indexed'))) fail(`${name}: json fields cannot be unique or indexed`);
  return { name, type, classification, required: bool('required'), unique, indexed: unique || bool('indexed'), mask, standard: false, computed: false };
}

/**
 * The mask of a `pii` field declared without one: emails and phones their own,
 * text its first character, and every other type (number, boolean, date,
 * timestamp, json) fully: the first character of `true`, `1975-…` or `4…`
 * says too much of the value.
 */
export function defaultMask(type: FieldType): Mask {
  return type === 'email' ? { kind: 'email' } : type === 'phone' ? { kind: 'phone' } : type === 'string' ? { kind: 'partial', keepFirst: 1, keepLast: 0 } : { kind: 'full' };
}

function checkMask(m: unknown, name: string): Mask {
  const o = m as Record<string, unknown>;
  if (o === null || typeof o !== 'object') fail(`${name}: mask must be an object`);
  if (o.kind === 'email' || o.kind === 'phone' || o.kind === 'full') return { kind: o.kind };
  if (o.kind === 'partial') {
    const n = (v: unknown) => (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 8 ? v : fail(`${name}: mask keepFirst/keepLast must be 0-8`));
    return { kind: 'partial', keepFirst: n(o.keepFirst), keepLast: n(o.keepLast) };
  }
  fail(`${name}: mask kind must be email, phone, partial or full`);
}

/** Checks a whole custom-field list and returns standard + custom fields. */
export function checkSchema(fields: unknown): FieldDef[] {
  if (!Array.isArray(fields) || fields.length > MAX_FIELDS) fail(`fields must be a list of at most ${MAX_FIELDS}`);
  const custom = fields.map(checkFieldDef);
  const names = new Set<string>();
  for (const f of custom) {
    if (names.has(f.name)) fail(`field ${f.name} is declared twice`);
    names.add(f.name);
  }
  return [...STANDARD_FIELDS, ...custom];
}

const EMAIL_RE = /^[^\s@]{1,64}@[^\s@]+\.[^\s@]+$/;
const PHONE_RE = /^\+?[0-9][0-9 ().-]{3,30}$/;
const DATE_RE = /^\d{4}-\d{2}-\d{2}$/;

/**
 * Checks and normalises one value for its field; returns the stored form
 * (`null` clears). Error messages never repeat the value: it may be personal data.
 */
export function checkValue(field: FieldDef, value: unknown): unknown {
  if (value === null || value === undefined) return null;
  switch (field.type) {
    case 'string':
      if (typeof value !== 'string' || value.length > MAX_STRING) fail(`${field.name}: must be text of at most ${MAX_STRING} characters`);
      return value;
    case 'email':
      if (typeof value !== 'string' || value.length > 254 || !EMAIL_RE.test(value.trim())) fail(`${field.name}: must be an email address`);
      return value.trim();
    case 'phone':
      if (typeof value !== 'string' || !PHONE_RE.test(value.trim())) fail(`${field.name}: must be a phone number`);
      return value.trim();
    case 'number':
      if (typeof value === 'string' && value.trim() !== '' && Number.isFinite(Number(value))) return Number(value);
      if (typeof value !== 'number' || !Number.isFinite(value)) fail(`${field.name}: must be a number`);
      return value;
    case 'boolean':
      if (value === 'true' || value === 'false') return value === 'true';
      if (typeof value !== 'boolean') fail(`${field.name}: must be true or false`);
      return value;
    case 'date':
      if (typeof value !== 'string' || !DATE_RE.test(value) || Number.isNaN(Date.parse(`${value}T00:00:00Z`))) fail(`${field.name}: must be a date (YYYY-MM-DD)`);
      return value;
    case 'timestamp': {
      if (typeof value !== 'string' || Number.isNaN(Date.parse(value))) fail(`${field.name}: must be an RFC 3339 timestamp`);
      return new Date(value).toISOString();
    }
    case 'json': {
      const text = JSON.stringify(value);
      if (text.length > 16_384) fail(`${field.name}: JSON values are limited to 16 KiB`);
      return value;
    }
  }
}

/** The text a protected value is encrypted as, and back. */
export function encodeProtected(value: unknown): string {
  return JSON.stringify(value);
}
export function decodeProtected(text: string): unknown {
  return JSON.parse(text) as unknown;
}
