/**
 * The one catalogue of error codes. Every failure a client or an operator can
 * see carries one of these codes; HTTP answers map them to RFC 9457 problem
 * documents, the CLI to one line and a non-zero exit code.
 *
 * Codes are stable API: never rename one, only add. `docs/ERRORS.md` documents
 * each code and a test keeps the two in step.
 */
export const ERROR_CATALOGUE = {
  bad_request: { status: 400, title: 'The request is malformed' },
  validation_failed: { status: 400, title: 'The request failed validation' },
  invalid_tenant_name: { status: 400, title: 'Invalid tenant name' },
  invalid_edition: { status: 400, title: 'Unknown edition' },
  invalid_configuration: { status: 400, title: 'Invalid configuration' },
  audit_event_invalid: { status: 400, title: 'The activity event is invalid' },
  key_import_invalid: { status: 400, title: 'The imported key material is invalid' },
  password_rejected: { status: 400, title: "The new password does not meet the tenant's password policy" },
  authentication_required: { status: 401, title: 'Authentication is required' },
  invalid_credentials: { status: 401, title: 'Invalid credentials' },
  invalid_code: { status: 401, title: 'The verification code is wrong, used or expired' },
  forbidden: { status: 403, title: 'The principal may not perform this action' },
  ip_not_allowed: { status: 403, title: "The request's address is not on the tenant's allowlist" },
  csrf_invalid: { status: 403, title: 'The CSRF token is missing or wrong' },
  tenant_suspended: { status: 403, title: 'The tenant is suspended' },
  not_found: { status: 404, title: 'Not found' },
  tenant_not_found: { status: 404, title: 'Tenant not found' },
  conflict: { status: 409, title: 'The request conflicts with the current state' },
  tenant_exists: { status: 409, title: 'A tenant with this name already exists' },
  audit_chain_invalid: { status: 409, title: 'The activity stream fails verification' },
  export_limit_exceeded: { status: 422, title: 'Console exports are limited to 5,000 records' },
  payload_too_large: { status: 413, title: 'The request body is too large' },
  unsupported_media_type: { status: 415, title: 'Unsupported media type' },
  idempotency_key_reused: { status: 422, title: 'The Idempotency-Key was already used with a different request' },
  rate_limited: { status: 429, title: 'Too many requests' },
  key_disabled: { status: 423, title: "The tenant's key is disabled or scheduled for deletion" },
  key_destroyed: { status: 410, title: "The tenant's key has been destroyed; data encrypted under it is unrecoverable" },
  decryption_failed: { status: 500, title: 'Decryption failed' },
  master_key_mismatch: { status: 500, title: 'The master key file does not belong to this deployment' },
  internal_error: { status: 500, title: 'Internal error' },
  storage_unavailable: { status: 503, title: 'The storage backend is unavailable' },
  service_unavailable: { status: 503, title: 'The service is unavailable' },
  audit_unavailable: { status: 503, title: 'The activity stream could not record the action' },
} as const satisfies Record<string, { status: number; title: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

/** Extra, safe-to-disclose members of a problem document. */
export type ProblemExtensions = Record<string, unknown>;

/**
 * A failure with a catalogue code. `detail` is shown to clients: it must never
 * hold secrets, SQL, stack traces or data of another tenant.
 */
export class CustosError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly detail: string | undefined;
  readonly extensions: ProblemExtensions | undefined;

  constructor(code: ErrorCode, detail?: string, options?: { extensions?: ProblemExtensions; cause?: unknown }) {
    super(detail ?? ERROR_CATALOGUE[code].title, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CustosError';
    this.code = code;
    this.status = ERROR_CATALOGUE[code].status;
    this.detail = detail;
    this.extensions = options?.extensions;
  }
}

export function isCustosError(err: unknown): err is CustosError {
  return err instanceof CustosError;
}

/** An RFC 9457 problem document as Custos serialises it. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  code: ErrorCode;
  detail?: string;
  instance?: string;
  [extension: string]: unknown;
}

/** The problem `type` URI for a code: a URN, so no host is named or needed. */
export function problemType(code: ErrorCode): string {
  return `urn:custos:problem:${code}`;
}

export function toProblem(code: ErrorCode, detail?: string, extensions?: ProblemExtensions, instance?: string): Problem {
  const entry = ERROR_CATALOGUE[code];
  const problem: Problem = { ...extensions, type: problemType(code), title: entry.title, status: entry.status, code };
  if (detail !== undefined) problem.detail = detail;
  if (instance !== undefined) problem.instance = instance;
  return problem;
}
