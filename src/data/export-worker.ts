// An export worker thread: renders pages of export lines (decrypt, redact, format) for the
// thread that reads them from storage. Started by ExportRenderer; talks only to its parent.
import { parentPort } from 'node:worker_threads';
import { CustosError } from '../core/errors.js';
import { ObjectKeys } from '../crypto/field-cipher.js';
import { renderExportPage } from './export-format.js';
import type { RenderReply, RenderRequest } from './export-renderer.js';

const port = parentPort;
if (!port) throw new Error('export-worker runs as a worker thread');
port.on('message', (m: RenderRequest) => {
  let reply: RenderReply;
  try {
    reply = { id: m.id, text: renderExportPage(ObjectKeys.fromTransfer(m.keys), m.shape, m.page) };
  } catch (err) {
    // A CustosError's code crosses as it is (decryption_failed makes the caller retry with fresh keys). Other
    // messages can quote the data (JSON.parse quotes its input), so only the error's name does.
    reply = { id: m.id, error: err instanceof CustosError ? { code: err.code } : { message: `export page failed to render (${err instanceof Error ? err.name : 'error'})` } };
  }
  port.postMessage(reply);
});
