// Status polling with back-off: fast right after something changed, slower while nothing
// does, and none at all once every job has ended.
export const RUNNING = new Set(['awaiting_upload', 'queued', 'preprocessing', 'scoring', 'ensembling']);
export const ACTIVE = new Set(['queued', 'preprocessing', 'scoring', 'ensembling']);

export const MIN_INTERVAL_MS = 1000;
export const MAX_INTERVAL_MS = 15000;

export function isActive(status: string): boolean {
  return ACTIVE.has(status);
}

/** The next polling delay: none when nothing is active, else doubled from the minimum
 * for each poll that saw no change (``unchangedPolls``), capped at the maximum. */
export function nextInterval(statuses: string[], unchangedPolls: number): number | false {
  if (!statuses.some(isActive)) return false;
  const doubled = MIN_INTERVAL_MS * 2 ** Math.max(0, unchangedPolls);
  return Math.min(MAX_INTERVAL_MS, doubled);
}

/** A fingerprint of what a poll saw, to count polls that changed nothing. */
export function snapshot(jobs: { id: string; status: string; stage?: string | null }[]): string {
  return jobs.map((j) => `${j.id}:${j.status}:${j.stage ?? ''}`).join('|');
}

/** Tracks unchanged polls across calls (one per query). */
export class BackOff {
  private last = '';
  private unchanged = 0;

  interval(jobs: { id: string; status: string; stage?: string | null }[]): number | false {
    const now = snapshot(jobs);
    if (now === this.last) this.unchanged += 1;
    else this.unchanged = 0;
    this.last = now;
    return nextInterval(
      jobs.map((j) => j.status),
      this.unchanged,
    );
  }
}
