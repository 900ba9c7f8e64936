import { describe, expect, it } from 'vitest';
import { formatBytes, formatDuration, RateMeter } from '../src/lib/rate';

describe('upload speed and time left', () => {
  it('measures bytes per second over the window', () => {
    const meter = new RateMeter(5000);
    expect(meter.rate()).toBeNull();
    meter.add(0, 0);
    meter.add(2_000_000, 1000);
    expect(meter.rate()).toBe(2_000_000);
    expect(meter.secondsLeft(10_000_000)).toBe(4);
  });

  it('forgets samples older than the window', () => {
    const meter = new RateMeter(2000);
    meter.add(0, 0);
    meter.add(1_000_000, 1000); // slow start
    meter.add(5_000_000, 3000);
    meter.add(9_000_000, 4000);
    expect(meter.rate()).toBe(4_000_000); // only the last two seconds count
  });

  it('starts over when the upload restarts from a lower offset', () => {
    const meter = new RateMeter();
    meter.add(5_000_000, 0);
    meter.add(6_000_000, 1000);
    meter.add(0, 2000);
    expect(meter.rate()).toBeNull();
  });

  it('formats sizes and durations for people', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(3.5 * 1024 * 1024)).toBe('3.5 MB');
    expect(formatDuration(42)).toBe('42 s');
    expect(formatDuration(125)).toBe('2 min 5 s');
    expect(formatDuration(3 * 3600 + 60)).toBe('3 h 1 min');
  });
});
