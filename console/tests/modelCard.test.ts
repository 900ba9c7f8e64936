import { describe, expect, it } from 'vitest';
import { renderCard } from '../src/components/ModelCardPage';

describe('renderCard', () => {
  it('renders headings and tables of the card as HTML, through the sanitiser', () => {
    const seen: string[] = [];
    const html = renderCard('# Model card\n\n| set | AUC |\n|---|---|\n| P002 | 0.91 |\n', (h) => {
      seen.push(h);
      return h.replace(/<script[\s\S]*?<\/script>/g, '');
    });
    expect(html).toContain('<h1>Model card</h1>');
    expect(html).toContain('<table>');
    expect(html).toContain('<td>0.91</td>');
    expect(seen).toHaveLength(1);
    expect(renderCard('x <script>alert(1)</script>', (h) => h.replace(/<script[\s\S]*?<\/script>/g, ''))).not.toContain('<script>');
  });
});
