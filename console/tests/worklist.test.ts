import { describe, expect, it } from 'vitest';
import { dateRange, sortKey, sortOrder, studyDate } from '../src/lib/worklist';

describe('worklist', () => {
  it("turns the table's sorter into the API's sort key and back", () => {
    expect(sortKey('study_date', 'descend')).toBe('-study_date');
    expect(sortKey('category', 'ascend')).toBe('category');
    expect(sortKey('study_date', null)).toBe('-created_at');
    expect(sortKey('patient_id', 'ascend')).toBe('patient_id');
    expect(sortKey('accession_number', 'descend')).toBe('-accession_number');
    expect(sortKey('patient_name', 'ascend')).toBe('-created_at'); // not a server sort key
    expect(sortOrder('-study_date', 'study_date')).toBe('descend');
    expect(sortOrder('-study_date', 'status')).toBeNull();
  });

  it('sends a study-date range the right way round, either end open', () => {
    expect(dateRange('2020-01-01', '2020-12-31')).toEqual({ study_date_from: '2020-01-01', study_date_to: '2020-12-31' });
    expect(dateRange('2020-12-31', '2020-01-01')).toEqual({ study_date_from: '2020-01-01', study_date_to: '2020-12-31' });
    expect(dateRange('', '2020-12-31')).toEqual({ study_date_to: '2020-12-31' });
    expect(dateRange('2020-1-1', '')).toEqual({}); // half-typed: not sent
  });

  it('reads a DICOM StudyDate', () => {
    expect(studyDate('20200415')).toBe('2020-04-15');
    expect(studyDate(null)).toBe('');
    expect(studyDate('2020')).toBe('2020');
  });
});
