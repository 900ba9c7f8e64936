// The one progress figure of all running uploads (issue 20.10): bytes sent of the total,
// speed and time left, in one line.
import { formatBytes, formatDuration, type RateMeter } from './rate';

export interface FileProgress {
  uploadStarted?: number | null;
  uploadComplete?: boolean;
  bytesUploaded?: number | false;
  bytesTotal?: number | null;
}

/** Files being uploaded now (started, not complete). */
export function inFlight<T extends { progress: FileProgress }>(files: T[]): T[] {
  return files.filter((f) => f.progress.uploadStarted && !f.progress.uploadComplete);
}

export function progressLine(files: { progress: FileProgress }[], meter: RateMeter, now: number): string {
  const running = inFlight(files);
  if (running.length === 0) return '';
  const sent = running.reduce((n, f) => n + (Number(f.progress.bytesUploaded) || 0), 0);
  const total = running.reduce((n, f) => n + (Number(f.progress.bytesTotal) || 0), 0);
  meter.add(sent, now);
  const rate = meter.rate();
  const left = meter.secondsLeft(total);
  const what = running.length === 1 ? '1 upload' : `${running.length} uploads`;
  const base = `${what}: ${formatBytes(sent)} of ${formatBytes(total)}`;
  return rate ? `${base} at ${formatBytes(rate)}/s, about ${formatDuration(left ?? 0)} left` : base;
}
