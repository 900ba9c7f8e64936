// The verdict's headline (issue 20.5): the category first, in words, then P(COVID) with where
// it comes from. Ensemble v3 reports the category; a v2 series result has only its RSNA
// pattern (mapped to the category it implies); a soft-vote result (images, short series)
// says only whether the slice CNN's vote leans to COVID-19. An indeterminate pattern is
// never headlined "NonCOVID".
import { categoryText } from './findings';

export type Category = 'covid' | 'other_pneumonia' | 'no_pneumonia' | 'indeterminate';

export interface Headline {
  category: Category | null; // null: the soft vote, which has no category
  title: string;
  pCovid: number;
  explanation: string;
}

const PATTERN_CATEGORY: Record<string, Category> = {
  negative: 'no_pneumonia',
  atypical: 'other_pneumonia',
  indeterminate: 'indeterminate',
  typical: 'covid',
};

const CATEGORIES: ReadonlySet<string> = new Set(Object.values(PATTERN_CATEGORY));

/** Probabilities and ratios as a reader wants them: two decimals. */
export const two = (v: number): string => v.toFixed(2);

const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

export function verdictHeadline(result: {
  label: string;
  probabilities: Record<string, number>;
  findings?: Record<string, unknown> | null;
}): Headline {
  const f = result.findings ?? {};
  const pCovid = result.probabilities.COVID ?? 0;
  const pattern = typeof f.pattern === 'string' ? f.pattern : null;
  let category: Category | null = null;
  if (typeof f.category === 'string' && CATEGORIES.has(f.category)) category = f.category as Category;
  else if (pattern && pattern in PATTERN_CATEGORY) category = PATTERN_CATEGORY[pattern];

  const prior = num(f.prior_covid);
  const ratio = num(f.likelihood_ratio);
  let explanation: string;
  if (pattern && prior !== null && ratio !== null) {
    const odds = (prior / (1 - prior)) * ratio;
    explanation =
      `P(COVID) ${two(pCovid)} comes from the ${pattern} CT pattern: its likelihood ratio ${two(ratio)} ` +
      `times the prior odds ${two(prior / (1 - prior))} (prior P(COVID) ${two(prior)}) gives odds ${two(odds)}. ` +
      'At another prevalence the prior, and so P(COVID), differs.';
  } else if (pattern) {
    explanation = `P(COVID) ${two(pCovid)} comes from the ${pattern} CT pattern's likelihood ratio and the prior.`;
  } else {
    explanation =
      `P(COVID) ${two(pCovid)} is the slice CNN's vote over the slices; no CT pattern was read ` +
      '(an image upload or a short series), so there is no category.';
  }
  const title = category
    ? categoryText(category)
    : pCovid >= 0.5
      ? 'Leans to COVID-19 (slice vote, no CT pattern)'
      : 'Does not lean to COVID-19 (slice vote, no CT pattern)';
  return { category, title, pCovid, explanation };
}
