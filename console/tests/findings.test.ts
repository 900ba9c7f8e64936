import { describe, expect, it } from 'vitest';
import { categoryText, lesionSummary, patternSummary } from '../src/lib/findings';

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

describe('lesion summary (ensemble v3)', () => {
  const findings = {
    category: 'covid',
    pattern: 'typical',
    opacity_percent: 6.3,
    high_opacity_percent: 0.16,
    lesion_volume_ml: 246.5,
    lung_volume_ml: 3895,
    ggo_volume_ml: 241,
    consolidation_volume_ml: 5.5,
    severity_score: 7,
    zone_opacity_percent: { left_lower: 27.0, right_upper: 1.1, right_middle: 0.26, right_lower: 2.0, left_upper: 5.6, left_middle: 9.9 },
    zone_severity: { left_lower: 2, right_upper: 1, right_middle: 1, right_lower: 1, left_upper: 1, left_middle: 1 },
  };

  it('reads category, opacity, volumes and severity, zones in reading order with human names', () => {
    const s = lesionSummary(findings);
    expect(s?.category).toBe('covid');
    expect(s?.opacityPercent).toBe(6.3);
    expect(s?.highOpacityPercent).toBe(0.16);
    expect(s?.lesionMl).toBe(246.5);
    expect(s?.lungMl).toBe(3895);
    expect(s?.severityScore).toBe(7);
    expect(s?.zones.map((z) => z.name)).toEqual([
      'right upper',
      'right middle',
      'right lower',
      'left upper',
      'left middle',
      'left lower',
    ]);
    expect(s?.zones[5]).toEqual({ name: 'left lower', opacityPercent: 27.0, severity: 2 });
  });

  it('is null without lesion measurements (v2 findings, images)', () => {
    expect(lesionSummary(null)).toBeNull();
    expect(lesionSummary({ pattern: 'typical', ggo_share: 0.02 })).toBeNull();
  });

  it('names each category, and passes an unknown one through', () => {
    expect(categoryText('covid')).toBe('COVID-19 pneumonia');
    expect(categoryText('no_pneumonia')).toBe('No pneumonia');
    expect(categoryText('other_pneumonia')).toMatch(/^Other pneumonia/);
    expect(categoryText('indeterminate')).toMatch(/^Indeterminate/);
    expect(categoryText('something_new')).toBe('something_new');
  });
});
