import { SingleBar, Presets } from 'cli-progress';

export interface Progress {
  update(done: number, total: number): void;
  stop(): void;
}

/**
 * A progress bar on standard error when it is a terminal; otherwise a line
 * every few seconds (and at the end), so logs of scheduled runs show progress
 * too. Standard output stays clean for `--json`.
 */
export function progressBar(label: string): Progress {
  if (process.stderr.isTTY) {
    const bar = new SingleBar({ format: `${label} [{bar}] {percentage}% {value}/{total} ETA {eta_formatted}`, stream: process.stderr, hideCursor: true }, Presets.shades_classic);
    let started = false;
    return {
      update(done, total) {
        if (!started) {
          bar.start(Math.max(total, done), done);
          started = true;
        }
        bar.setTotal(Math.max(total, done));
        bar.update(done);
      },
      stop() {
        if (started) bar.stop();
      },
    };
  }
  let last = 0;
  let latest: [number, number] = [0, 0];
  const line = () => process.stderr.write(`${label}: ${latest[0]}/${latest[1]}\n`);
  return {
    update(done, total) {
      latest = [done, total];
      const now = Date.now();
      if (now - last >= 2000) {
        last = now;
        line();
      }
    },
    stop() {
      line();
    },
  };
}
