import { generate } from 'selfsigned';

/**
 * A self-signed certificate for the embedded default: ECDSA P-256, SHA-256,
 * valid 825 days, for `localhost`, `127.0.0.1` and `::1`.
 */
export async function selfSignedCertificate(now = new Date()): Promise<{ cert: string; key: string; fingerprint: string }> {
  const notAfter = new Date(now.getTime() + 825 * 24 * 3600 * 1000);
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: now,
    notAfterDate: notAfter,
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      {
        name: 'subjectAltName',
        altNames: [
          { type: 2, value: 'localhost' },
          { type: 7, ip: '127.0.0.1' },
          { type: 7, ip: '::1' },
        ],
      },
    ],
  });
  return { cert: pems.cert, key: pems.private, fingerprint: pems.fingerprint };
}
