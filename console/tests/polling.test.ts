import { describe, expect, it } from 'vitest';
import { BackOff, MAX_INTERVAL_MS, MIN_INTERVAL_MS, nextInterval } from '../src/lib/polling';

describe('status polling back-off', () => {
  it('stops when no job is running', () => {
    expect(nextInterval(['succeeded', 'failed', 'cancelled'], 0)).toBe(false);
    expect(nextInterval([], 0)).toBe(false);
  });

  it('does not poll for a job that waits for its upload (the uploader refreshes the list)', () => {
    expect(nextInterval(['awaiting_upload'], 0)).toBe(false);
  });

  it('starts fast and doubles while nothing changes, up to the cap', () => {
    expect(nextInterval(['scoring'], 0)).toBe(MIN_INTERVAL_MS);
    expect(nextInterval(['scoring'], 1)).toBe(2 * MIN_INTERVAL_MS);
    expect(nextInterval(['scoring'], 2)).toBe(4 * MIN_INTERVAL_MS);
    expect(nextInterval(['queued'], 30)).toBe(MAX_INTERVAL_MS);
  });

  it('resets to fast when a poll sees a change', () => {
    const backOff = new BackOff();
    const running = [{ id: 'a', status: 'preprocessing', stage: 'reading' }];
    expect(backOff.interval(running)).toBe(MIN_INTERVAL_MS);
    expect(backOff.interval(running)).toBe(2 * MIN_INTERVAL_MS);
    expect(backOff.interval(running)).toBe(4 * MIN_INTERVAL_MS);
    expect(backOff.interval([{ id: 'a', status: 'scoring', stage: 'scoring' }])).toBe(MIN_INTERVAL_MS);
    expect(backOff.interval([{ id: 'a', status: 'succeeded', stage: null }])).toBe(false);
  });
});
