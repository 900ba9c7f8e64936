import { describe, expect, it } from 'vitest';
import { groupBySeries, readSeriesHeader, seriesArchiveName } from '../src/lib/dicomSeries';

// A minimal DICOM Part-10 file: preamble, DICM, the meta group (explicit VR little endian)
// and a data set with the given UI/LO/CS string elements.
function element(group: number, el: number, vr: string, value: string): number[] {
  let bytes = [...new TextEncoder().encode(value)];
  if (bytes.length % 2) bytes.push(vr === 'UI' ? 0 : 0x20);
  return [group & 0xff, group >> 8, el & 0xff, el >> 8, vr.charCodeAt(0), vr.charCodeAt(1), bytes.length & 0xff, bytes.length >> 8, ...bytes];
}

function dicom(series: string, description: string, patient: string): Uint8Array {
  const meta = [...element(2, 0x10, 'UI', '1.2.840.10008.1.2.1')];
  const groupLength = [2, 0, 0, 0, 0x55, 0x4c, 4, 0, meta.length & 0xff, meta.length >> 8, 0, 0];
  const data = [
    ...element(8, 0x103e, 'LO', description),
    ...element(0x10, 0x20, 'LO', patient),
    ...element(0x20, 0x0e, 'UI', series),
  ];
  return new Uint8Array([...new Array(128).fill(0), 0x44, 0x49, 0x43, 0x4d, ...groupLength, ...meta, ...data]);
}

const file = (name: string, bytes: Uint8Array) => ({ name, data: new Blob([bytes as BlobPart]) });

describe('DICOM series grouping', () => {
  it('reads the series of a DICOM file and nothing of other files', () => {
    expect(readSeriesHeader(dicom('1.2.3.4', 'AXIAL 1mm', 'P002'))).toEqual({
      seriesUid: '1.2.3.4',
      description: 'AXIAL 1mm',
      patientId: 'P002',
    });
    expect(readSeriesHeader(new TextEncoder().encode('\x89PNG not dicom'))).toBeNull();
    expect(readSeriesHeader(new Uint8Array(200))).toBeNull();
  });

  it('puts the files of one series into one group, another series into another', async () => {
    const { series, other } = await groupBySeries([
      file('a.dcm', dicom('1.2.3.4', 'AXIAL', 'P002')),
      file('b.dcm', dicom('1.2.3.4', 'AXIAL', 'P002')),
      file('scout.dcm', dicom('1.2.3.9', 'SCOUT', 'P002')),
      file('c.dcm', dicom('1.2.3.4', 'AXIAL', 'P002')),
      file('x.png', new Uint8Array([0x89, 0x50])),
    ]);
    expect(series.map((s) => [s.header.seriesUid, s.files.map((f) => f.name)])).toEqual([
      ['1.2.3.4', ['a.dcm', 'b.dcm', 'c.dcm']],
      ['1.2.3.9', ['scout.dcm']],
    ]);
    expect(other.map((f) => f.name)).toEqual(['x.png']);
    expect(seriesArchiveName(series[0].header)).toBe('P002 AXIAL.zip');
    expect(seriesArchiveName({ seriesUid: '1.2.3.4', description: '', patientId: '' })).toBe('series-3.4.zip');
  });
});
