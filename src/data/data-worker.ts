// A data worker thread: renders export pages (decrypt, redact, format) and encodes new records of an import
// (encrypt, blind indexes, oHashes) for the thread that talks to storage. Started by DataWorkers; talks only to its parent.
import { parentPort } from 'node:worker_threads';
import { CustosError } from '../core/errors.js';
import { ObjectKeys } from '../crypto/field-cipher.js';
import { encodeColumns, type WorkerReply, type WorkerRequest } from './data-workers.js';
import { renderExportPage } from './export-format.js';

const port = parentPort;
if (!port) throw new Error('data-worker runs as a worker thread');
port.on('message', (m: WorkerRequest) => {
  let reply: WorkerReply;
  let transfer: ArrayBuffer[] = [];
  try {
    const keys = ObjectKeys.fromTransfer(m.keys);
    if (m.kind === 'render') reply = { id: m.id, text: renderExportPage(keys, m.shape, m.page) };
    else {
      const { encoded, transfer: buffers } = encodeColumns(keys, m.job);
      reply = { id: m.id, encoded };
      transfer = buffers;
    }
  } catch (err) {
    // A CustosError's code crosses as it is (decryption_failed makes the caller retry with fresh keys). Other
    // messages can quote the data (JSON.parse quotes its input), so only the error's name does.
    const what = m.kind === 'render' ? 'export page failed to render' : 'records failed to encode';
    reply = { id: m.id, error: err instanceof CustosError ? { code: err.code } : { message: `${what} (${err instanceof Error ? err.name : 'error'})` } };
  }
  port.postMessage(reply, transfer);
});
