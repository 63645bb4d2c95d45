import { hash } from 'node:crypto';

/** Length of a chain hash (SHA-256). */
export const HASH_BYTES = 32;

/** `prev_hash` of the first event of a stream: 32 zero bytes. */
export const GENESIS_HASH: Buffer = Buffer.alloc(HASH_BYTES);

/**
 * The chain hash of event `seq`:
 *
 * ```
 * hash = SHA-256( seq ‖ prev_hash ‖ body )
 *   seq        8 bytes, unsigned big-endian
 *   prev_hash  32 bytes: the hash of event seq-1 (GENESIS_HASH for seq 1)
 *   body       the stored body: RFC 8785 canonical JSON of the event, UTF-8
 * ```
 *
 * The preimage is exactly 40 + len(body) bytes. Fixed-width fields before the
 * one variable field make the encoding unambiguous. Including `seq` means an
 * event cannot be moved to another position without its hash changing; the
 * body names the tenant, so it cannot be moved to another stream either.
 */
export function chainPreimage(seq: number, prevHash: Buffer, body: Buffer): Buffer {
  const pre = Buffer.allocUnsafe(8 + HASH_BYTES + body.length);
  if (!Number.isSafeInteger(seq) || seq < 0) throw new TypeError('seq must be a non-negative safe integer');
  pre.writeUInt32BE(Math.floor(seq / 0x1_0000_0000), 0);
  pre.writeUInt32BE(seq >>> 0, 4);
  prevHash.copy(pre, 8);
  body.copy(pre, 8 + HASH_BYTES);
  return pre;
}

export function chainHash(seq: number, prevHash: Buffer, body: Buffer): Buffer {
  if (prevHash.length !== HASH_BYTES) throw new TypeError('prev_hash must be 32 bytes');
  // Latin-1 text then a Buffer: cheaper in Node 24 than asking `hash` for a Buffer (which allocates a fresh one).
  return Buffer.from(hash('sha256', chainPreimage(seq, prevHash, body), 'binary'), 'latin1');
}
