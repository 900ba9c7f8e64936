// The model card for clinicians (issue 20.6): the Markdown the gateway serves at /model-card
// (what the models were trained and tested on, where they fail), rendered and sanitised.
import { useMemo } from 'react';
import { Alert, Card, Spin } from 'antd';
import { useQuery } from '@tanstack/react-query';
import { marked } from 'marked';
import DOMPurify from 'dompurify';

/** Markdown -> safe HTML (the card is ours, but nothing unsanitised goes into the page). */
export function renderCard(markdown: string, purify: (html: string) => string = (h) => DOMPurify.sanitize(h)): string {
  return purify(marked.parse(markdown, { async: false, gfm: true }));
}

export function ModelCardPage() {
  const card = useQuery({
    queryKey: ['model-card'],
    queryFn: async () => {
      const response = await fetch('/model-card');
      if (!response.ok) throw new Error(`the model card could not be loaded (${response.status})`);
      return response.text();
    },
    staleTime: Infinity,
  });
  const html = useMemo(() => (card.data ? renderCard(card.data) : ''), [card.data]);
  if (card.isLoading) return <Spin aria-label="Loading the model card" />;
  if (card.error) return <Alert type="error" showIcon title={String((card.error as Error).message)} />;
  return (
    <Card>
      <p>
        <a href="#/">← Back</a> · <a href="/model-card">Plain text</a>
      </p>
      <article className="model-card" data-testid="model-card" dangerouslySetInnerHTML={{ __html: html }} />
    </Card>
  );
}
