/**
 * Crash-test hook. When `CUSTOS_FAILPOINT` names this point, the process kills
 * itself with SIGKILL right here — no cleanup, no `finally` — so tests can
 * prove that recovery copes with a crash at exactly that step. Unset in
 * production; the check is one string comparison.
 */
export function failpoint(name: string): void {
  if (process.env.CUSTOS_FAILPOINT === name) process.kill(process.pid, 'SIGKILL');
}
