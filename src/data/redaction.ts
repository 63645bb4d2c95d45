import type { FieldDef, Mask } from './fields.js';

function maskText(text: string, mask: Mask): string {
  switch (mask.kind) {
    case 'full':
      return '****';
    case 'email': {
      const at = text.lastIndexOf('@');
      if (at <= 0) return '****';
      return `${text[0]}***${text.slice(at)}`;
    }
    case 'phone': {
      const digits = text.replace(/\D/g, '');
      return `${'*'.repeat(Math.max(digits.length - 4, 3))}${digits.slice(-4)}`;
    }
    case 'partial': {
      const chars = [...text];
      if (chars.length <= mask.keepFirst + mask.keepLast) return '*'.repeat(Math.max(chars.length, 4));
      return `${chars.slice(0, mask.keepFirst).join('')}${'*'.repeat(3)}${mask.keepLast > 0 ? chars.slice(-mask.keepLast).join('') : ''}`;
    }
  }
}

/**
 * Redacts a `pii` value for a principal without `data.pii.view`: an email
 * becomes `j***@example.com`, a phone `*******1234`, others per the field's
 * mask. `sensitive` fields are not redacted (they are encrypted at rest but
 * visible to whoever may read the list).
 */
export function redact(field: FieldDef, value: unknown): unknown {
  if (value === null || value === undefined || field.classification !== 'pii') return value;
  // Whatever mask a list stored earlier: a boolean shows through any partial mask.
  if (field.type === 'boolean') return '****';
  return maskText(typeof value === 'string' ? value : JSON.stringify(value), field.mask ?? { kind: 'full' });
}
