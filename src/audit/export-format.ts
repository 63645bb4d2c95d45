import type { AuditEvent } from './audit-types.js';

/**
 * One JSON Lines record: the stored body with `seq` put in front. The body is
 * canonical JSON of an object with at least one member, so this splices text
 * without parsing it (exports of big streams stay cheap).
 */
export function jsonlLine(seq: number, body: string): string {
  return `{"seq":${seq},${body.slice(1)}\n`;
}

export const CSV_COLUMNS = [
  'seq',
  'id',
  'time',
  'type',
  'outcome',
  'code',
  'tenant',
  'principal_type',
  'principal_id',
  'principal_name',
  'source_ip',
  'source_user_agent',
  'source_session_id',
  'request_id',
  'request_method',
  'request_path',
  'resource_type',
  'resource_id',
  'resource_name',
  'details',
  'change',
] as const;

/**
 * A CSV field per RFC 4180: quoted when it holds a quote, comma, CR or LF, with
 * quotes doubled. Text that a spreadsheet would run as a formula (leading `=`,
 * `+`, `-`, `@`, tab or CR) gets a leading `'`, as OWASP advises against CSV
 * injection: event fields such as user agents are attacker-controlled.
 */
export function csvField(value: string | number | undefined | null): string {
  if (value === undefined || value === null) return '';
  if (typeof value === 'number') return String(value);
  let s = value;
  if (/^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function csvHeader(): string {
  return `${CSV_COLUMNS.join(',')}\r\n`;
}

/** One CSV record (CRLF-terminated, as RFC 4180 says); nested objects as JSON text. */
export function csvLine(seq: number, body: string): string {
  const e = JSON.parse(body) as Omit<AuditEvent, 'seq'>;
  const fields = [
    seq,
    e.id,
    e.time,
    e.type,
    e.outcome,
    e.code,
    e.tenant,
    e.principal.type,
    e.principal.id,
    e.principal.name,
    e.source?.ip,
    e.source?.userAgent,
    e.source?.sessionId,
    e.request?.id,
    e.request?.method,
    e.request?.path,
    e.resource?.type,
    e.resource?.id,
    e.resource?.name,
    e.details === undefined ? undefined : JSON.stringify(e.details),
    e.change === undefined ? undefined : JSON.stringify(e.change),
  ];
  return `${fields.map(csvField).join(',')}\r\n`;
}
