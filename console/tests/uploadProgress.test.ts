import { describe, expect, it } from 'vitest';
import { RateMeter } from '../src/lib/rate';
import { inFlight, progressLine } from '../src/lib/uploadProgress';

const MB = 1024 * 1024;

describe('progressLine', () => {
  it('is empty when nothing is being uploaded', () => {
    const done = { progress: { uploadStarted: 1, uploadComplete: true, bytesUploaded: MB, bytesTotal: MB } };
    const waiting = { progress: { uploadStarted: null, bytesUploaded: 0, bytesTotal: MB } };
    expect(inFlight([done, waiting])).toEqual([]);
    expect(progressLine([done, waiting], new RateMeter(), 0)).toBe('');
  });

  it('gives bytes of the total, speed and time left of all running uploads in one line', () => {
    const meter = new RateMeter();
    const file = (sent: number) => ({ progress: { uploadStarted: 1, uploadComplete: false, bytesUploaded: sent, bytesTotal: 10 * MB } });
    expect(progressLine([file(0)], meter, 0)).toBe('1 upload: 0 B of 10 MB');
    const line = progressLine([file(2 * MB), file(0)], meter, 1000);
    expect(line).toBe('2 uploads: 2.0 MB of 20 MB at 2.0 MB/s, about 9 s left');
  });
});
