import { hash, verify, type Options } from '@node-rs/argon2';

/**
 * argon2id with the OWASP Password Storage Cheat Sheet's first configuration:
 * 19 MiB of memory, 2 iterations, 1 lane. The work runs on libuv's thread pool,
 * off the event loop. (`algorithm` 2 is Argon2id; the package's enum is a
 * `const enum`, which isolated modules cannot import.)
 */
export const ARGON2ID_OWASP: Readonly<Options> = Object.freeze({
  algorithm: 2,
  memoryCost: 19456,
  timeCost: 2,
  parallelism: 1,
  outputLen: 32,
});

/** Hashes a password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`). */
export function hashPassword(password: string): Promise<string> {
  return hash(password, ARGON2ID_OWASP);
}

/** Verifies a password against a PHC string; false on any mismatch or malformed hash. */
export async function verifyPassword(phc: string, password: string): Promise<boolean> {
  try {
    return await verify(phc, password);
  } catch {
    return false;
  }
}

let dummyHash: Promise<string> | undefined;

/**
 * Spends the time of one verification against a hash of nothing: called for an
 * unknown user so that "no such user" and "wrong password" take the same time.
 */
export async function verifyDummy(password: string): Promise<false> {
  dummyHash ??= hashPassword('custos-dummy-password-for-timing');
  await verifyPassword(await dummyHash, password);
  return false;
}
