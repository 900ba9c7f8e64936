import { describe, expect, it } from 'vitest';
import { patternSummary } from '../src/lib/findings';

describe('pattern summary', () => {
  it('reads the pattern, its reasons and the ground-glass extent', () => {
    const summary = patternSummary({
      pattern: 'typical',
      pattern_reasons: ['ground glass 2.6% of the lungs', 'bilateral, peripheral, multifocal ground glass', 3],
      ggo_share: 0.0257,
    });
    expect(summary?.pattern).toBe('typical');
    expect(summary?.reasons).toEqual(['ground glass 2.6% of the lungs', 'bilateral, peripheral, multifocal ground glass']);
    expect(summary?.groundGlassPercent).toBeCloseTo(2.57, 2);
  });

  it('is null for results without a pattern (images, short series)', () => {
    expect(patternSummary(null)).toBeNull();
    expect(patternSummary(undefined)).toBeNull();
    expect(patternSummary({ ggo_share: 0.01 })).toBeNull();
  });
});
