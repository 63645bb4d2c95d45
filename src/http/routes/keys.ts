import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { CustosError } from '../../core/errors.js';
import { MAX_DELETION_DAYS, MIN_DELETION_DAYS } from '../../crypto/key-service.js';
import { keyOperations } from '../../ops/key-operations.js';
import type { Runtime } from '../../runtime.js';
import { authOf, tenantOf } from '../plugins/tenant-binding.js';
import { Problems as AdminProblems, adminRoute } from './admin-schemas.js';

/** Key actions may also meet a destroyed key (410 `key_destroyed`). */
const Problems = { ...AdminProblems, 410: { $ref: 'Problem#' } } as const;

const KeyRing = Type.Object(
  {
    tenantId: Type.String(),
    mode: Type.Union([Type.Literal('provider'), Type.Literal('customer')], { description: '`customer`: key material the tenant imported' }),
    state: Type.String({ description: 'enabled, disabled, pending_deletion or destroyed' }),
    currentVersion: Type.Union([Type.Integer(), Type.Null()]),
    rotationPeriodDays: Type.Integer(),
    lastRotatedAt: Type.String(),
    nextRotationAt: Type.Union([Type.String(), Type.Null()]),
    deletionDueAt: Type.Union([Type.String(), Type.Null()]),
    versions: Type.Array(
      Type.Object({ version: Type.Integer(), origin: Type.String(), state: Type.String(), createdAt: Type.String(), retiredAt: Type.Union([Type.String(), Type.Null()]) }, { additionalProperties: false }),
    ),
  },
  { additionalProperties: false, description: 'The key ring: states and dates, never key material' },
);

const NewVersion = Type.Object({ version: Type.Integer(), rewrapped: Type.Integer({ description: 'Data keys rewrapped under the new version' }) }, { additionalProperties: false });

const ImportParameters = Type.Object(
  {
    tenantId: Type.String(),
    publicKeyPem: Type.String({ description: 'RSA-3072 public key (SPKI PEM) to wrap the 32 bytes of key material with' }),
    wrappingAlgorithm: Type.Literal('RSAES_OAEP_SHA_256'),
    keySpec: Type.Literal('AES_256'),
    expiresAt: Type.String(),
  },
  { additionalProperties: false },
);

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/**
 * The tenant's key ring (`keys.read` to see it, `keys.manage` to act on it).
 * Every action goes through `keyOperations` with the signed-in principal as
 * actor, so the tenant's stream records it before it happens, as it does for
 * operators' actions from the CLI.
 */
export function keyRoutes(app: FastifyInstance, rt: Runtime): void {
  app.get('/keys', adminRoute('keys.read', { tags: ['keys'], summary: "The tenant's key ring: mode, state, versions, rotation and deletion dates", response: { 200: KeyRing, ...Problems } }), async (request) =>
    rt.keys.describe(tenantOf(request).id),
  );

  app.post(
    '/keys/rotate',
    adminRoute('keys.manage', { tags: ['keys'], summary: 'Rotate a provider-managed key: a new version, every data key rewrapped (no data decrypted)', response: { 200: NewVersion, ...Problems } }),
    async (request) => keyOperations.rotate(rt, tenantOf(request).id, authOf(request)),
  );

  app.post(
    '/keys/import-params',
    adminRoute('keys.manage', { tags: ['keys'], summary: 'The single-use RSA-3072 key to wrap customer key material with (RSA-OAEP, SHA-256); valid 24 hours', response: { 200: ImportParameters, ...Problems } }),
    async (request) => {
      const t = tenantOf(request);
      const params = await rt.keys.importParameters(t.id);
      await rt.audit.record(t.id, { type: 'keys.import.params', outcome: 'success', actor: authOf(request), resource: { type: 'key-ring', id: t.id }, details: { expiresAt: params.expiresAt } });
      return params;
    },
  );

  app.post(
    '/keys/import',
    adminRoute('keys.manage', {
      tags: ['keys'],
      summary: 'Import customer key material; the key becomes customer-managed and every data key is rewrapped under it',
      body: Type.Object(
        { wrappedKeyMaterial: Type.String({ minLength: 4, maxLength: 1024, description: '32 bytes of key material wrapped with RSAES-OAEP-SHA-256 under the import key, base64' }) },
        { additionalProperties: false },
      ),
      response: { 200: NewVersion, ...Problems },
    }),
    async (request) => {
      const { wrappedKeyMaterial } = request.body as { wrappedKeyMaterial: string };
      if (!BASE64.test(wrappedKeyMaterial) || wrappedKeyMaterial.length % 4 !== 0) throw new CustosError('validation_failed', 'wrappedKeyMaterial must be base64');
      return keyOperations.importKeyMaterial(rt, tenantOf(request).id, Buffer.from(wrappedKeyMaterial, 'base64'), authOf(request));
    },
  );

  const stateChanges = [
    ['disable', 'Disable the customer-managed key: every read and write of encrypted data fails until it is enabled', (tenantId, auth) => keyOperations.disable(rt, tenantId, auth)],
    ['enable', 'Enable the key again', (tenantId, auth) => keyOperations.enable(rt, tenantId, auth)],
    ['cancel-deletion', 'Cancel a scheduled deletion (the key comes back disabled)', (tenantId, auth) => keyOperations.cancelDeletion(rt, tenantId, auth)],
  ] as const satisfies ReadonlyArray<readonly [string, string, (tenantId: string, auth: ReturnType<typeof authOf>) => Promise<void>]>;
  for (const [action, summary, act] of stateChanges) {
    app.post(`/keys/${action}`, adminRoute('keys.manage', { tags: ['keys'], summary, response: { 200: KeyRing, ...Problems } }), async (request) => {
      const tenantId = tenantOf(request).id;
      await act(tenantId, authOf(request));
      return rt.keys.describe(tenantId);
    });
  }

  app.post(
    '/keys/schedule-deletion',
    adminRoute('keys.manage', {
      tags: ['keys'],
      summary: `Schedule destruction of the customer-managed key in ${MIN_DELETION_DAYS}-${MAX_DELETION_DAYS} days (crypto-shredding; cancellable until then)`,
      body: Type.Object({ days: Type.Integer({ minimum: MIN_DELETION_DAYS, maximum: MAX_DELETION_DAYS }) }, { additionalProperties: false }),
      response: { 200: KeyRing, ...Problems },
    }),
    async (request) => {
      const tenantId = tenantOf(request).id;
      await keyOperations.scheduleDeletion(rt, tenantId, (request.body as { days: number }).days, authOf(request));
      return rt.keys.describe(tenantId);
    },
  );
}
