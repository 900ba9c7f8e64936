// A dropped folder (many files with a relative path) is zipped in the browser into one
// study archive: one job, one tus upload, one resumable offset, the same as `covidct
// submit DIR`. DICOM pixel data is usually compressed already, so entries are stored
// (level 0): fast, and the archive is hardly bigger.
import { zip, type Zippable } from 'fflate';

export interface LocalFile {
  name: string;
  relativePath?: string | null;
  data: Blob;
  lastModified?: number;
}

/** The newest member's time: the archive of the same folder is byte-identical each time,
 * so a reopened console finds and resumes its upload. */
export function newest(files: LocalFile[]): number {
  return files.reduce((m, f) => Math.max(m, f.lastModified ?? 0), 0) || 315532800000;
}

/** Files grouped by their top folder; files without a folder are left alone. */
export function groupByFolder(files: LocalFile[]): { folders: Map<string, LocalFile[]>; single: LocalFile[] } {
  const folders = new Map<string, LocalFile[]>();
  const single: LocalFile[] = [];
  for (const f of files) {
    const path = (f.relativePath ?? '').replace(/^\/+/, '');
    const slash = path.indexOf('/');
    if (slash > 0) {
      const top = path.slice(0, slash);
      folders.set(top, [...(folders.get(top) ?? []), f]);
    } else single.push(f);
  }
  return { folders, single };
}

export async function zipFiles(files: LocalFile[]): Promise<Uint8Array> {
  const entries: Zippable = {};
  for (const f of files) {
    const path = (f.relativePath || f.name).replace(/^\/+/, '');
    const mtime = new Date(Math.max(f.lastModified ?? 0, 315532800000)); // zip starts at 1980
    entries[path] = [new Uint8Array(await f.data.arrayBuffer()), { level: 0, mtime }];
  }
  return new Promise((resolve, reject) => {
    zip(entries, { level: 0 }, (err, out) => (err ? reject(err) : resolve(out)));
  });
}
