import { describe, expect, it } from 'vitest';
import { verdictHeadline } from '../src/lib/verdict';

describe('verdictHeadline', () => {
  it('puts the v3 category first and explains P(COVID) from the ratio and the prior', () => {
    const h = verdictHeadline({
      label: 'COVID',
      probabilities: { NonCOVID: 0.187, COVID: 0.813 },
      findings: { category: 'covid', pattern: 'typical', prior_covid: 0.5, likelihood_ratio: 4.3434 },
    });
    expect(h.category).toBe('covid');
    expect(h.title).toBe('COVID-19 pneumonia');
    expect(h.explanation).toContain('P(COVID) 0.81');
    expect(h.explanation).toContain('likelihood ratio 4.34');
    expect(h.explanation).toContain('prior P(COVID) 0.50');
    expect(h.explanation).toContain('odds 4.34');
  });

  it('never headlines an indeterminate reading as NonCOVID', () => {
    const v3 = verdictHeadline({
      label: 'NonCOVID',
      probabilities: { NonCOVID: 0.689, COVID: 0.311 },
      findings: { category: 'indeterminate', pattern: 'indeterminate', prior_covid: 0.5, likelihood_ratio: 0.451 },
    });
    expect(v3.category).toBe('indeterminate');
    expect(v3.title).toMatch(/^Indeterminate/);
    expect(v3.title).not.toMatch(/NonCOVID/);
    // A v2 series result has only its pattern: the category it implies.
    const v2 = verdictHeadline({ label: 'NonCOVID', probabilities: { COVID: 0.31 }, findings: { pattern: 'indeterminate' } });
    expect(v2.category).toBe('indeterminate');
    expect(verdictHeadline({ label: 'NonCOVID', probabilities: { COVID: 0.04 }, findings: { pattern: 'negative' } }).category).toBe(
      'no_pneumonia',
    );
  });

  it('says a soft vote has no category', () => {
    const h = verdictHeadline({ label: 'NonCOVID', probabilities: { NonCOVID: 0.956, COVID: 0.044 }, findings: null });
    expect(h.category).toBeNull();
    expect(h.title).toBe('Does not lean to COVID-19 (slice vote, no CT pattern)');
    expect(h.explanation).toContain('0.04');
  });
});
