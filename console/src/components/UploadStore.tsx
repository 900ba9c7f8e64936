// The console's uploads live here, above the pages (issue 20.8): one Uppy + tus instance per
// signed-in key, so opening a job page mid-upload keeps every upload running; the uploader
// only mounts its Dashboard onto it. While bytes are in flight the browser warns before the
// page is left. Cancelling (or removing) a file whose upload has not completed deletes its
// job, which awaits that upload (DELETE -> 204, issue 20.9): no orphan job is left.
//
// One job per file (POST /v1/jobs with an Idempotency-Key kept in localStorage until the upload
// completes), tus upload to /v1/uploads with the job id and the file's sha256 as metadata. tus
// keeps each upload's URL in localStorage (fingerprint = Uppy's file id, stable for the same
// file), so the same file added again, in this tab or a reopened one, resumes from the
// server's offset. A dropped folder is zipped into one study first, and DICOM files picked
// together into one study per series.
import { createContext, useContext, useEffect, useMemo, useState, type ReactNode } from 'react';
import { App as AntApp } from 'antd';
import { useQueryClient } from '@tanstack/react-query';
import Uppy, { type UppyFile } from '@uppy/core';
import Tus from '@uppy/tus';
import { ok } from '../api/client';
import { useApi } from '../api/context';
import { authHeaders } from '../lib/session';
import { fileKey, ResumeStore } from '../lib/resume';
import { sha256Hex } from '../lib/sha256';
import { groupBySeries, seriesArchiveName } from '../lib/dicomSeries';
import { groupByFolder, newest, zipFiles, type LocalFile } from '../lib/zipFolder';
import { ApiFailure } from '../lib/errors';
import { RateMeter } from '../lib/rate';
import { inFlight, progressLine } from '../lib/uploadProgress';

// Small enough that a closed tab loses little (each acknowledged chunk is an offset the
// server keeps), large enough to keep requests few.
export const CHUNK_SIZE = 4 * 1024 * 1024;

export type Meta = { job_id?: string; filename?: string; filetype?: string; sha256?: string; relativePath?: string | null };
export type Body = Record<string, never>;
export type ConsoleUppy = Uppy<Meta, Body>;

interface UploadState {
  uppy: ConsoleUppy;
  progress: string; // '' when nothing is being uploaded
  uploading: boolean;
}

const UploadContext = createContext<UploadState | null>(null);

export function useUploads(): UploadState {
  const value = useContext(UploadContext);
  if (!value) throw new Error('useUploads outside UploadProvider');
  return value;
}

function keyOf(file: UppyFile<Meta, Body>): string {
  const data = file.data as Blob & { lastModified?: number };
  return fileKey({
    name: file.name ?? 'study',
    size: file.size ?? data.size,
    type: file.type,
    lastModified: data.lastModified,
    relativePath: file.meta.relativePath ?? null,
  });
}

export function UploadProvider({ children }: { children: ReactNode }) {
  const { client, apiKey, auth } = useApi();
  const { message } = AntApp.useApp();
  const queryClient = useQueryClient();
  // A fixed id: Uppy's file ids (and so tus fingerprints) are the same in every tab.
  const uppy = useMemo(() => new Uppy<Meta, Body>({ id: 'covidct', autoProceed: false }), []);
  const [progress, setProgress] = useState('');
  const [uploading, setUploading] = useState(false);

  useEffect(() => {
    const store = new ResumeStore(localStorage);
    uppy.use(Tus, {
      endpoint: '/v1/uploads',
      headers: authHeaders(auth, 'POST'), // API key, or the session's CSRF token (tus PATCHes)
      chunkSize: CHUNK_SIZE,
      allowedMetaFields: ['job_id', 'filename', 'filetype', 'sha256'],
      removeFingerprintOnSuccess: true,
      retryDelays: [0, 1000, 3000, 5000],
      limit: 2,
    });

    // A folder becomes one zip per top folder.
    let zipping = false;
    const onAdded = async (files: UppyFile<Meta, Body>[]) => {
      if (zipping) return;
      const local: (LocalFile & { id: string })[] = files.map((f) => ({
        id: f.id,
        name: f.name ?? 'file',
        relativePath: f.meta.relativePath ?? null,
        data: f.data as Blob,
        lastModified: (f.data as File).lastModified,
      }));
      const { folders, single } = groupByFolder(local);
      if (folders.size === 0 && single.length < 2) return;
      zipping = true;
      try {
        const replace = async (name: string, members: LocalFile[]) => {
          const bytes = await zipFiles(members);
          members.forEach((m) => uppy.removeFile((m as LocalFile & { id: string }).id));
          const file = new File([bytes as BlobPart], name, { type: 'application/zip', lastModified: newest(members) });
          uppy.addFile({ name: file.name, type: file.type, data: file, source: 'folder-zip' });
        };
        for (const [folder, members] of folders) {
          message.info(`Zipping folder ${folder} (${members.length} files)…`);
          await replace(`${folder}.zip`, members);
        }
        // DICOM files picked together: one study (one job) per series, not one per file.
        const { series } = await groupBySeries(single);
        for (const { header, files: members } of series) {
          if (members.length < 2) continue;
          message.info(`${members.length} DICOM files of series ${header.description || header.seriesUid} become one study`);
          await replace(seriesArchiveName(header), members);
        }
      } catch (e) {
        message.error(`Could not zip the files: ${String(e)}`);
      } finally {
        zipping = false;
      }
    };
    uppy.on('files-added', onAdded);

    // Before tus starts: the sha256, and the job (created once per file, replayed after a
    // reload thanks to the stored Idempotency-Key). Reported as preprocessing, so the
    // Dashboard says what happens instead of "0 files selected".
    const prepare = async (fileIDs: string[]) => {
      for (const id of fileIDs) {
        const file = uppy.getFile(id);
        uppy.emit('preprocess-progress', file, { mode: 'indeterminate', message: 'Hashing and creating the job…' });
        const key = keyOf(file);
        const sha256 = await sha256Hex(file.data as Blob);
        let pending = store.begin(key);
        const create = () =>
          ok(
            client.POST('/v1/jobs', {
              params: { header: { 'idempotency-key': pending.idempotencyKey } },
              body: { external_id: file.name ?? null },
            }),
          );
        let job = await create();
        if (job.status !== 'awaiting_upload') {
          // That job already has its study (uploaded earlier): this is a new submission.
          store.finish(key);
          pending = store.begin(key);
          job = await create();
        }
        store.attachJob(key, job.id);
        void queryClient.invalidateQueries({ queryKey: ['jobs'] }); // the list shows it waiting
        uppy.setFileMeta(id, {
          job_id: job.id,
          filename: file.name ?? 'study',
          filetype: file.type || 'application/octet-stream',
          sha256,
        });
        uppy.emit('preprocess-complete', uppy.getFile(id));
      }
    };
    uppy.addPreProcessor(prepare);

    // Cancel (or remove) before the upload completed: the job waiting for it goes too.
    const onRemoved = (file: UppyFile<Meta, Body>) => {
      const jobId = file.meta.job_id;
      if (!jobId || file.progress.uploadComplete) return;
      store.finish(keyOf(file));
      void ok(client.DELETE('/v1/jobs/{job_id}', { params: { path: { job_id: jobId } } }).then((r) => ({ ...r, data: r.data ?? {} })))
        .catch(() => undefined) // already gone
        .finally(() => void queryClient.invalidateQueries({ queryKey: ['jobs'] }));
    };
    uppy.on('file-removed', onRemoved);

    const onSuccess = (file: UppyFile<Meta, Body> | undefined) => {
      if (file) store.finish(keyOf(file));
      void queryClient.invalidateQueries({ queryKey: ['jobs'] });
    };
    uppy.on('upload-success', onSuccess);
    const onUploadError = (file: UppyFile<Meta, Body> | undefined, error: Error) => {
      const text = error instanceof ApiFailure ? error.text : error?.message;
      message.error(`Upload of ${file?.name ?? 'a file'} failed: ${text}`);
    };
    uppy.on('upload-error', onUploadError);
    const onError = (error: Error) => message.error(error instanceof ApiFailure ? error.text : String(error?.message ?? error));
    uppy.on('error', onError);
    const onUpload = () => void queryClient.invalidateQueries({ queryKey: ['jobs'] });
    uppy.on('upload', onUpload);

    const meter = new RateMeter();
    const refresh = () => {
      const files = uppy.getFiles();
      setUploading(inFlight(files).length > 0);
      setProgress(progressLine(files, meter, performance.now()));
    };
    const onPause = () => setProgress('Paused');
    uppy.on('upload-progress', refresh);
    uppy.on('complete', refresh);
    uppy.on('cancel-all', refresh);
    uppy.on('pause-all', onPause);

    return () => {
      uppy.off('files-added', onAdded);
      uppy.removePreProcessor(prepare);
      uppy.off('file-removed', onRemoved);
      uppy.off('upload-success', onSuccess);
      uppy.off('upload-error', onUploadError);
      uppy.off('error', onError);
      uppy.off('upload', onUpload);
      uppy.off('upload-progress', refresh);
      uppy.off('complete', refresh);
      uppy.off('cancel-all', refresh);
      uppy.off('pause-all', onPause);
      // Signing out ends this provider: its uploads stop, the server keeps their offsets.
      uppy.pauseAll();
      const tus = uppy.getPlugin('Tus');
      if (tus) uppy.removePlugin(tus);
    };
  }, [uppy, apiKey, auth, client, message, queryClient]);

  // Leaving the page (reload, closing the tab, another site) would stop the upload.
  useEffect(() => {
    if (!uploading) return;
    const warn = (e: BeforeUnloadEvent) => {
      e.preventDefault();
      e.returnValue = ''; // older Chromium needs it set
    };
    window.addEventListener('beforeunload', warn);
    return () => window.removeEventListener('beforeunload', warn);
  }, [uploading]);

  const value = useMemo(() => ({ uppy, progress, uploading }), [uppy, progress, uploading]);
  return <UploadContext.Provider value={value}>{children}</UploadContext.Provider>;
}

/** The running uploads' single progress line, shown on every page. */
export function UploadProgressLine() {
  const { progress } = useUploads();
  return (
    <div role="status" aria-live="polite" data-testid="upload-speed" style={{ minHeight: 22 }}>
      {progress}
    </div>
  );
}
