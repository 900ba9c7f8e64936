import { createElement } from 'react';
import { renderToStaticMarkup } from 'react-dom/server';
import { describe, expect, it } from 'vitest';
import { SeriesCard } from '../src/components/SeriesCard';

const series = {
  source_format: 'dicom',
  study_instance_uid: '1.2.3',
  series_instance_uid: '1.2.3.4',
  accession_number: 'ACC9',
  study_date: '20200415',
  patient_id: 'P002',
  series_description: 'AXIAL 1mm',
  slice_thickness_mm: 1,
  instances: 1,
  reason: 'the only axial CT series',
  candidates: [
    { uid: '1.2.3.4', description: 'AXIAL 1mm', modality: 'CT', slices: 1, axial: true, excluded: null, not_used_because: null },
    { uid: '1.2.3.9', description: 'SCOUT', modality: 'CT', slices: 1, axial: false, excluded: 'localizer', not_used_because: 'localizer' },
  ],
  single_slice_of_series: true,
  single_slice_note: 'one image of a series of 133',
};

describe('SeriesCard', () => {
  it('shows the identifiers read, the series not read and why, and flags a single slice', () => {
    const html = renderToStaticMarkup(createElement(SeriesCard, { series }));
    expect(html).toContain('1.2.3.4');
    expect(html).toContain('2020-04-15');
    expect(html).toContain('ACC9');
    expect(html).toContain('SCOUT');
    expect(html).toContain('localizer');
    expect(html).toContain('one image of a series of 133');
    expect(renderToStaticMarkup(createElement(SeriesCard, { series: { ...series, single_slice_of_series: false } }))).not.toContain(
      'single-slice-warning',
    );
  });
});
