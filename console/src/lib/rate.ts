// Upload speed over a sliding window, and the time left at that speed.
export class RateMeter {
  private samples: { t: number; bytes: number }[] = [];

  constructor(private windowMs = 5000) {}

  /** Record the total bytes sent so far at time ``t`` (ms). */
  add(bytes: number, t: number): void {
    if (this.samples.length && bytes < this.samples[this.samples.length - 1].bytes) this.samples = []; // restarted
    this.samples.push({ t, bytes });
    while (this.samples.length > 2 && t - this.samples[0].t > this.windowMs) this.samples.shift();
  }

  /** Bytes per second over the window; null until two samples are apart in time. */
  rate(): number | null {
    if (this.samples.length < 2) return null;
    const first = this.samples[0];
    const last = this.samples[this.samples.length - 1];
    if (last.t <= first.t) return null;
    return ((last.bytes - first.bytes) * 1000) / (last.t - first.t);
  }

  /** Seconds left for ``total`` bytes at the current rate; null when unknown. */
  secondsLeft(total: number): number | null {
    const rate = this.rate();
    if (!rate || this.samples.length === 0) return null;
    return Math.max(0, (total - this.samples[this.samples.length - 1].bytes) / rate);
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function formatDuration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}
