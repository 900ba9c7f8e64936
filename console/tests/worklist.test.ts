import { describe, expect, it } from 'vitest';
import { sortKey, sortOrder, studyDate } from '../src/lib/worklist';

describe('worklist', () => {
  it("turns the table's sorter into the API's sort key and back", () => {
    expect(sortKey('study_date', 'descend')).toBe('-study_date');
    expect(sortKey('category', 'ascend')).toBe('category');
    expect(sortKey('study_date', null)).toBe('-created_at');
    expect(sortKey('patient_id', 'ascend')).toBe('-created_at'); // not a server sort key
    expect(sortOrder('-study_date', 'study_date')).toBe('descend');
    expect(sortOrder('-study_date', 'status')).toBeNull();
  });

  it('reads a DICOM StudyDate', () => {
    expect(studyDate('20200415')).toBe('2020-04-15');
    expect(studyDate(null)).toBe('');
    expect(studyDate('2020')).toBe('2020');
  });
});
