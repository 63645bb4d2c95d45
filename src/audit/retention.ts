import { CustosError } from '../core/errors.js';
import type { Edition } from '../core/validation.js';

/** Days an edition keeps its activity stream by default (the glossary's promise). */
export const EDITION_RETENTION_DAYS: Readonly<Record<Edition, number>> = Object.freeze({ standard: 32, enterprise: 184 });

/** Most a provider may raise a tenant's retention to. */
export const MAX_RETENTION_DAYS = 365;

/** The provider stream (operator actions) keeps a year. */
export const PROVIDER_RETENTION_DAYS = 365;

export const DAY_MS = 24 * 60 * 60 * 1000;

/** Default days for an edition; an unknown edition gets the standard one (the shorter promise is never exceeded by surprise). */
export function editionRetentionDays(edition: string): number {
  return edition in EDITION_RETENTION_DAYS ? EDITION_RETENTION_DAYS[edition as Edition] : EDITION_RETENTION_DAYS.standard;
}

/** Checks a provider's override: a whole number of days from the edition's default up to {@link MAX_RETENTION_DAYS}. */
export function checkRetentionDays(days: unknown, defaultDays: number): number {
  if (typeof days !== 'number' || !Number.isInteger(days) || days < defaultDays || days > MAX_RETENTION_DAYS) {
    throw new CustosError('validation_failed', `retention can be raised from the edition's ${defaultDays} days up to ${MAX_RETENTION_DAYS} days`);
  }
  return days;
}
