import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * The module a worker thread runs, given the URL of its compiled `.js` file
 * (`new URL('./x-worker.js', import.meta.url)`): that file, or — running from
 * source (tests) — the TypeScript file beside it, started through a tiny ESM
 * loader that lets its `.js` import specifiers find the `.ts` sources (Node
 * strips the types itself).
 */
export function workerModuleUrl(js: URL): URL {
  if (existsSync(fileURLToPath(js))) return js;
  const ts = js.href.replace(/\.js$/, '.ts');
  const boot = `import { registerHooks } from 'node:module';
registerHooks({ resolve(s, c, next) { try { return next(s, c); } catch (e) { if (/^\\.\\.?\\//.test(s) && s.endsWith('.js')) return next(s.slice(0, -3) + '.ts', c); throw e; } } });
await import(${JSON.stringify(ts)});`;
  return new URL(`data:text/javascript,${encodeURIComponent(boot)}`);
}
