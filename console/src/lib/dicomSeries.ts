// DICOM files picked together (not as a folder) are grouped per series in the browser
// (issue 20.2): the files of one SeriesInstanceUID become one study archive, so one job,
// instead of one single-slice job per file. Only the header is parsed (up to the pixel data).
import dicomParser from 'dicom-parser';
import type { LocalFile } from './zipFolder';

export interface SeriesHeader {
  seriesUid: string;
  description: string;
  patientId: string;
}

/** The series a DICOM Part-10 file belongs to; null for anything else (PNG, NIfTI, zip…). */
export function readSeriesHeader(bytes: Uint8Array): SeriesHeader | null {
  const magic = bytes.length >= 132 && String.fromCharCode(...bytes.subarray(128, 132)) === 'DICM';
  if (!magic) return null;
  try {
    const set = dicomParser.parseDicom(bytes, { untilTag: 'x7fe00010' });
    const seriesUid = (set.string('x0020000e') ?? '').trim();
    if (!seriesUid) return null;
    return {
      seriesUid,
      description: (set.string('x0008103e') ?? '').trim(),
      patientId: (set.string('x00100020') ?? '').trim(),
    };
  } catch {
    return null; // damaged: uploaded alone, the server says what is wrong with it
  }
}

export interface SeriesGroup {
  header: SeriesHeader;
  files: LocalFile[];
}

/** Loose files grouped by series (in order of first appearance); the rest left alone. */
export async function groupBySeries(files: LocalFile[]): Promise<{ series: SeriesGroup[]; other: LocalFile[] }> {
  const bySeries = new Map<string, SeriesGroup>();
  const other: LocalFile[] = [];
  for (const f of files) {
    const header = readSeriesHeader(new Uint8Array(await f.data.arrayBuffer()));
    if (!header) {
      other.push(f);
      continue;
    }
    const group = bySeries.get(header.seriesUid) ?? { header, files: [] };
    group.files.push(f);
    bySeries.set(header.seriesUid, group);
  }
  return { series: [...bySeries.values()], other };
}

/** The archive name of a series: its description (or the UID's tail), safe as a file name. */
export function seriesArchiveName(header: SeriesHeader): string {
  const base = header.description || `series-${header.seriesUid.split('.').slice(-2).join('.')}`;
  const safe = base.replace(/[^A-Za-z0-9._ -]+/g, '_').trim().slice(0, 80) || 'series';
  return header.patientId ? `${header.patientId.replace(/[^A-Za-z0-9._-]+/g, '_')} ${safe}.zip` : `${safe}.zip`;
}
