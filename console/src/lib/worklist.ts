// The job list as a worklist (issue 20.11): what the table's sorter and filters send to
// GET /v1/jobs (sorted, filtered, searched and paged on the server), and how a DICOM date reads.
export type SortField = 'created_at' | 'study_date' | 'status' | 'category' | 'patient_id' | 'accession_number';
export type SortKey = SortField | `-${SortField}`;
const FIELDS: ReadonlySet<string> = new Set(['created_at', 'study_date', 'status', 'category', 'patient_id', 'accession_number']);

export const DEFAULT_SORT: SortKey = '-created_at';

/** antd's sorter (column key, 'ascend' | 'descend' | null) -> the API's sort key. */
export function sortKey(field: unknown, order: 'ascend' | 'descend' | null | undefined): SortKey {
  if (typeof field !== 'string' || !FIELDS.has(field) || !order) return DEFAULT_SORT;
  return (order === 'descend' ? `-${field}` : field) as SortKey;
}

/** The order a column shows for the current sort key. */
export function sortOrder(sort: SortKey, field: SortField): 'ascend' | 'descend' | null {
  if (sort === field) return 'ascend';
  if (sort === `-${field}`) return 'descend';
  return null;
}

/** DICOM StudyDate YYYYMMDD -> YYYY-MM-DD (anything else as it is). */
export function studyDate(value: string | null | undefined): string {
  if (!value) return '';
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(value);
  return m ? `${m[1]}-${m[2]}-${m[3]}` : value;
}

export const CATEGORY_OPTIONS = [
  { value: 'covid', label: 'COVID-19 pneumonia' },
  { value: 'other_pneumonia', label: 'Other pneumonia' },
  { value: 'no_pneumonia', label: 'No pneumonia' },
  { value: 'indeterminate', label: 'Indeterminate' },
  { value: 'noncovid', label: 'Not COVID-19 (slice vote)' },
] as const;

/** A study-date range as the API takes it (ISO dates, either end open): a reversed range is
 * put the right way round rather than silently matching nothing. */
export function dateRange(from: string, to: string): { study_date_from?: string; study_date_to?: string } {
  const iso = (v: string) => (/^\d{4}-\d{2}-\d{2}$/.test(v) ? v : undefined);
  let [a, b] = [iso(from), iso(to)];
  if (a && b && a > b) [a, b] = [b, a];
  return { ...(a && { study_date_from: a }), ...(b && { study_date_to: b }) };
}
