import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';

/**
 * Identifies this process well enough for crash recovery to tell whether the
 * process that started some work is still alive: host, pid, and (on Linux) the
 * process start time, so a recycled pid is not mistaken for the original.
 */
export function processIdentity(pid = process.pid): string {
  return `${hostname()}:${pid}:${processStartTime(pid) ?? '-'}`;
}

function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22 (starttime) counts from after the parenthesised command name, which may hold spaces.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19];
  } catch {
    return undefined;
  }
}

/**
 * Whether the process named by `identity` is certainly gone. Only decidable on
 * the same host; for another host the caller falls back to the age of the work.
 */
export function isProcessGone(identity: string): boolean | undefined {
  const [host, pidText, start] = identity.split(':');
  if (host !== hostname()) return undefined;
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0) return true;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return true;
  }
  const now = processStartTime(pid);
  return start !== '-' && now !== undefined && now !== start;
}
