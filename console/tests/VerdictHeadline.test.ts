import { createElement } from 'react';
import { renderToStaticMarkup } from 'react-dom/server';
import { describe, expect, it } from 'vitest';
import { VerdictHeadline } from '../src/components/VerdictHeadline';

describe('VerdictHeadline', () => {
  it('renders the category before P(COVID), to two decimals', () => {
    const html = renderToStaticMarkup(
      createElement(VerdictHeadline, {
        result: {
          label: 'NonCOVID',
          probabilities: { NonCOVID: 0.6893, COVID: 0.3107 },
          findings: { category: 'indeterminate', pattern: 'indeterminate', prior_covid: 0.5, likelihood_ratio: 0.451 },
        },
      }),
    );
    expect(html).toContain('data-category="indeterminate"');
    expect(html.indexOf('Indeterminate')).toBeLessThan(html.indexOf('P(COVID)'));
    expect(html).toContain('>0.31<');
    expect(html).not.toContain('NonCOVID');
  });
});
