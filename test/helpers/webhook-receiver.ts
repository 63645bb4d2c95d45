import { createServer, type IncomingHttpHeaders } from 'node:http';

export interface ReceivedHook {
  headers: IncomingHttpHeaders;
  body: string;
}

/** A plain HTTP receiver on loopback that records every request and answers the queued statuses (then 200). */
export async function startWebhookReceiver(): Promise<{ url: string; received: ReceivedHook[]; respondWith: (...statuses: number[]) => void; close: () => Promise<void> }> {
  const received: ReceivedHook[] = [];
  const queue: number[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      received.push({ headers: req.headers, body });
      res.statusCode = queue.shift() ?? 200;
      res.end('ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}/hooks/custos`,
    received,
    respondWith: (...s) => queue.push(...s),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
