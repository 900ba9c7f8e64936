import { describe, expect, it } from 'vitest';
import { fileKey, ResumeStore } from '../src/lib/resume';
import { groupByFolder, newest } from '../src/lib/zipFolder';

class MemoryStorage implements Storage {
  private items = new Map<string, string>();
  get length() {
    return this.items.size;
  }
  clear() {
    this.items.clear();
  }
  getItem(key: string) {
    return this.items.get(key) ?? null;
  }
  key(index: number) {
    return [...this.items.keys()][index] ?? null;
  }
  removeItem(key: string) {
    this.items.delete(key);
  }
  setItem(key: string, value: string) {
    this.items.set(key, value);
  }
}

describe('resume bookkeeping', () => {
  const file = { name: 'P002.zip', size: 32958626, type: 'application/zip', lastModified: 1700000000000 };

  it('gives the same file the same key, and another file another', () => {
    expect(fileKey(file)).toBe(fileKey({ ...file }));
    expect(fileKey(file)).not.toBe(fileKey({ ...file, size: 1 }));
    expect(fileKey(file)).not.toBe(fileKey({ ...file, lastModified: 1 }));
  });

  it('keeps one Idempotency-Key per file across reopenings until the upload finishes', () => {
    const storage = new MemoryStorage();
    let n = 0;
    const ids = () => `id-${++n}`;
    const first = new ResumeStore(storage, ids).begin(fileKey(file));
    expect(first.idempotencyKey).toBe('console-id-1');
    // A reopened console (a new store over the same localStorage) finds the same entry.
    const reopened = new ResumeStore(storage, ids);
    expect(reopened.begin(fileKey(file)).idempotencyKey).toBe('console-id-1');
    reopened.attachJob(fileKey(file), 'job-1');
    expect(reopened.get(fileKey(file))?.jobId).toBe('job-1');
    expect(reopened.pending()).toHaveLength(1);
    reopened.finish(fileKey(file));
    expect(reopened.get(fileKey(file))).toBeNull();
    // The same file uploaded again later is a new submission.
    expect(reopened.begin(fileKey(file)).idempotencyKey).toBe('console-id-2');
  });

  it('drops an entry it cannot read', () => {
    const storage = new MemoryStorage();
    storage.setItem('covidct.pending.x', '{not json');
    expect(new ResumeStore(storage).get('x')).toBeNull();
    expect(storage.length).toBe(0);
  });

  it('groups a dropped folder by its top directory and dates the zip by its newest member', () => {
    const blob = new Blob(['x']);
    const { folders, single } = groupByFolder([
      { name: 'IM1.dcm', relativePath: '/P002/IM1.dcm', data: blob, lastModified: 5 },
      { name: 'IM2.dcm', relativePath: 'P002/sub/IM2.dcm', data: blob, lastModified: 9 },
      { name: 'study.nii.gz', relativePath: null, data: blob },
    ]);
    expect([...folders.keys()]).toEqual(['P002']);
    expect(folders.get('P002')).toHaveLength(2);
    expect(single.map((f) => f.name)).toEqual(['study.nii.gz']);
    expect(newest(folders.get('P002')!)).toBe(9);
  });
});
