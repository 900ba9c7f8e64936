// The RSNA CT pattern a whole-lung HU series was read as (ensemble v2), from the result's
// findings; null for studies decided by the slice soft vote (images, short series).
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
