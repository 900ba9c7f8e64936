// Resume bookkeeping: which job a local file is being uploaded to, so a reopened console
// creates no second job (same Idempotency-Key -> the server returns the same job) and tus
// finds its upload URL by fingerprint. Kept in localStorage until the upload completes.
const PREFIX = 'covidct.pending.';

export interface PendingUpload {
  idempotencyKey: string;
  jobId?: string;
  startedAt: string;
}

/** A stable identity of a local file (no content read): name, size, type, mtime, path. */
export function fileKey(file: {
  name: string;
  size: number;
  type?: string;
  lastModified?: number;
  relativePath?: string | null;
}): string {
  return [file.relativePath || file.name, file.size, file.type || '', file.lastModified ?? 0].join('|');
}

export class ResumeStore {
  constructor(
    private storage: Storage,
    private newId: () => string = () => crypto.randomUUID(),
    private now: () => Date = () => new Date(),
  ) {}

  get(key: string): PendingUpload | null {
    const raw = this.storage.getItem(PREFIX + key);
    if (!raw) return null;
    try {
      return JSON.parse(raw) as PendingUpload;
    } catch {
      this.storage.removeItem(PREFIX + key);
      return null;
    }
  }

  /** The pending upload of this file, created (with a fresh Idempotency-Key) if none. */
  begin(key: string): PendingUpload {
    const existing = this.get(key);
    if (existing) return existing;
    const entry = { idempotencyKey: `console-${this.newId()}`, startedAt: this.now().toISOString() };
    this.storage.setItem(PREFIX + key, JSON.stringify(entry));
    return entry;
  }

  attachJob(key: string, jobId: string): void {
    const entry = this.begin(key);
    this.storage.setItem(PREFIX + key, JSON.stringify({ ...entry, jobId }));
  }

  /** The upload finished (or the job is gone): forget it, so the same file uploads anew. */
  finish(key: string): void {
    this.storage.removeItem(PREFIX + key);
  }

  pending(): [string, PendingUpload][] {
    const out: [string, PendingUpload][] = [];
    for (let i = 0; i < this.storage.length; i++) {
      const name = this.storage.key(i);
      if (name?.startsWith(PREFIX)) {
        const entry = this.get(name.slice(PREFIX.length));
        if (entry) out.push([name.slice(PREFIX.length), entry]);
      }
    }
    return out;
  }
}
