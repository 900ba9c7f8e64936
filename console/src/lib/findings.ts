// What the job page shows of a result's findings: the RSNA CT pattern a whole-lung HU series
// was read as (ensembles v2 and v3), and under v3 the three-way category and the lesion
// measurements (opacity, volumes, severity per zone). Null for studies decided by the slice
// soft vote (images, short series).
export interface PatternSummary {
  pattern: string;
  reasons: string[];
  groundGlassPercent: number | null;
}

export function patternSummary(findings: Record<string, unknown> | null | undefined): PatternSummary | null {
  if (!findings || typeof findings.pattern !== 'string') return null;
  const reasons = Array.isArray(findings.pattern_reasons)
    ? findings.pattern_reasons.filter((r): r is string => typeof r === 'string')
    : [];
  const ggo = typeof findings.ggo_share === 'number' ? findings.ggo_share * 100 : null;
  return { pattern: findings.pattern, reasons, groundGlassPercent: ggo };
}

// The category in words a reader expects first; the raw value stays visible beside it.
export const CATEGORY_TEXT: Record<string, string> = {
  covid: 'COVID-19 pneumonia',
  other_pneumonia: 'Other pneumonia or lesion (not typical of COVID-19)',
  no_pneumonia: 'No pneumonia',
  indeterminate: 'Indeterminate (weak evidence)',
};

export function categoryText(category: string): string {
  return CATEGORY_TEXT[category] ?? category;
}

// Zones in reading order with their human names (the patient's sides).
export const ZONES: ReadonlyArray<readonly [string, string]> = [
  ['right_upper', 'right upper'],
  ['right_middle', 'right middle'],
  ['right_lower', 'right lower'],
  ['left_upper', 'left upper'],
  ['left_middle', 'left middle'],
  ['left_lower', 'left lower'],
];

export interface ZoneMeasure {
  name: string;
  opacityPercent: number;
  severity: number | null; // 0-4
}

export interface LesionSummary {
  category: string | null;
  opacityPercent: number;
  highOpacityPercent: number | null;
  lesionMl: number | null;
  lungMl: number | null;
  ggoMl: number | null;
  consolidationMl: number | null;
  severityScore: number | null; // 0-24
  zones: ZoneMeasure[];
}

const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

export function lesionSummary(findings: Record<string, unknown> | null | undefined): LesionSummary | null {
  const opacity = num(findings?.opacity_percent);
  if (!findings || opacity === null) return null;
  const zonePercent = (findings.zone_opacity_percent ?? {}) as Record<string, unknown>;
  const zoneSeverity = (findings.zone_severity ?? {}) as Record<string, unknown>;
  const zones = ZONES.filter(([key]) => num(zonePercent[key]) !== null).map(([key, name]) => ({
    name,
    opacityPercent: num(zonePercent[key]) as number,
    severity: num(zoneSeverity[key]),
  }));
  return {
    category: typeof findings.category === 'string' ? findings.category : null,
    opacityPercent: opacity,
    highOpacityPercent: num(findings.high_opacity_percent),
    lesionMl: num(findings.lesion_volume_ml),
    lungMl: num(findings.lung_volume_ml),
    ggoMl: num(findings.ggo_volume_ml),
    consolidationMl: num(findings.consolidation_volume_ml),
    severityScore: num(findings.severity_score),
    zones,
  };
}

// Overlay legend: the colours of services/gateway/slices.py LESION_COLOURS.
export const LESION_LEGEND: ReadonlyArray<readonly [string, string]> = [
  ['Ground glass', 'rgb(255, 191, 0)'],
  ['Consolidation', 'rgb(220, 38, 38)'],
];
