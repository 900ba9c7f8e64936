// Uppy Dashboard + tus: one job per file (POST /v1/jobs with an Idempotency-Key kept in
// localStorage until the upload completes), tus upload to /v1/uploads with the job id and
// the file's sha256 as metadata. tus keeps each upload's URL in localStorage (fingerprint
// = Uppy's file id, stable for the same file), so a reopened console resumes the same upload
// from the server's offset. A dropped folder is zipped into one study first.
import { useEffect, useRef, useState } from 'react';
import { App as AntApp, Typography } from 'antd';
import { useQueryClient } from '@tanstack/react-query';
import Uppy, { type UppyFile } from '@uppy/core';
import Dashboard from '@uppy/dashboard';
import Tus from '@uppy/tus';
import '@uppy/core/css/style.min.css';
import '@uppy/dashboard/css/style.min.css';
import { ok } from '../api/client';
import { useApi } from '../api/context';
import { fileKey, ResumeStore } from '../lib/resume';
import { sha256Hex } from '../lib/sha256';
import { groupByFolder, newest, zipFiles, type LocalFile } from '../lib/zipFolder';
import { ApiFailure } from '../lib/errors';
import { formatBytes, formatDuration, RateMeter } from '../lib/rate';
import { authHeaders } from '../lib/session';

// Small enough that a closed tab loses little (each acknowledged chunk is an offset the
// server keeps), large enough to keep requests few.
export const CHUNK_SIZE = 4 * 1024 * 1024;

type Meta = { job_id?: string; filename?: string; filetype?: string; sha256?: string; relativePath?: string | null };
type Body = Record<string, never>;

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

/** Uppy's file list puts role-less wrapper divs between its role="list" and its items
 * (virtual list), which assistive technology reads as items outside any list: mark the
 * wrappers presentational (or drop the item role where there is no list at all). */
function fixListRoles(root: HTMLElement): void {
  root.querySelectorAll('[role="listitem"]').forEach((item) => {
    const list = item.closest('[role="list"]');
    if (!list) {
      item.removeAttribute('role');
      return;
    }
    for (let el = item.parentElement; el && el !== list; el = el.parentElement) {
      if (!el.getAttribute('role')) el.setAttribute('role', 'presentation');
    }
  });
}

export function Uploader() {
  const { client, apiKey, auth } = useApi();
  const { message } = AntApp.useApp();
  const queryClient = useQueryClient();
  const target = useRef<HTMLDivElement>(null);
  const [progress, setProgress] = useState<string>('');

  useEffect(() => {
    if (!target.current) return;
    const store = new ResumeStore(localStorage);
    // A fixed id: Uppy's file ids (and so tus fingerprints) are the same in every tab.
    const uppy = new Uppy<Meta, Body>({ id: 'covidct', autoProceed: false });
    uppy.use(Dashboard, {
      inline: true,
      target: target.current,
      height: 320,
      width: '100%',
      hideProgressDetails: false,
      fileManagerSelectionType: 'both',
      proudlyDisplayPoweredByUppy: false,
      note: 'A folder of DICOM files (zipped here before upload), a zip or tar of DICOM files, a NIfTI file, or PNG/JPEG slices.',
    });
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
    uppy.on('files-added', async (files) => {
      if (zipping) return;
      const local: (LocalFile & { id: string })[] = files.map((f) => ({
        id: f.id,
        name: f.name ?? 'file',
        relativePath: f.meta.relativePath ?? null,
        data: f.data as Blob,
        lastModified: (f.data as File).lastModified,
      }));
      const { folders } = groupByFolder(local);
      if (folders.size === 0) return;
      zipping = true;
      try {
        for (const [folder, members] of folders) {
          message.info(`Zipping folder ${folder} (${members.length} files)…`);
          const bytes = await zipFiles(members);
          members.forEach((m) => uppy.removeFile((m as LocalFile & { id: string }).id));
          const file = new File([bytes as BlobPart], `${folder}.zip`, { type: 'application/zip', lastModified: newest(members) });
          uppy.addFile({ name: file.name, type: file.type, data: file, source: 'folder-zip' });
        }
      } catch (e) {
        message.error(`Could not zip the folder: ${String(e)}`);
      } finally {
        zipping = false;
      }
    });

    // Before tus starts: the sha256, and the job (created once per file, replayed after a
    // reload thanks to the stored Idempotency-Key).
    uppy.addPreProcessor(async (fileIDs) => {
      for (const id of fileIDs) {
        const file = uppy.getFile(id);
        const key = keyOf(file);
        const sha256 = await sha256Hex(file.data as Blob);
        let pending = store.begin(key);
        let job = await ok(
          client.POST('/v1/jobs', {
            params: { header: { 'idempotency-key': pending.idempotencyKey } },
            body: { external_id: file.name ?? null },
          }),
        );
        if (job.status !== 'awaiting_upload') {
          // That job already has its study (uploaded earlier): this is a new submission.
          store.finish(key);
          pending = store.begin(key);
          job = await ok(
            client.POST('/v1/jobs', {
              params: { header: { 'idempotency-key': pending.idempotencyKey } },
              body: { external_id: file.name ?? null },
            }),
          );
        }
        store.attachJob(key, job.id);
        void queryClient.invalidateQueries({ queryKey: ['jobs'] }); // the list shows it waiting
        uppy.setFileMeta(id, {
          job_id: job.id,
          filename: file.name ?? 'study',
          filetype: file.type || 'application/octet-stream',
          sha256,
        });
      }
    });

    uppy.on('upload-success', (file) => {
      if (file) store.finish(keyOf(file));
      void queryClient.invalidateQueries({ queryKey: ['jobs'] });
    });
    uppy.on('upload-error', (file, error) => {
      const text = error instanceof ApiFailure ? error.text : error?.message;
      message.error(`Upload of ${file?.name ?? 'a file'} failed: ${text}`);
    });
    uppy.on('error', (error) => {
      message.error(error instanceof ApiFailure ? error.text : String(error?.message ?? error));
    });
    uppy.on('upload', () => void queryClient.invalidateQueries({ queryKey: ['jobs'] }));

    // Speed and time left of the whole batch (Uppy's bar shows the bytes and its own ETA).
    const meter = new RateMeter();
    uppy.on('upload-progress', () => {
      const files = uppy.getFiles().filter((f) => f.progress.uploadStarted && !f.progress.uploadComplete);
      const sent = files.reduce((n, f) => n + (f.progress.bytesUploaded || 0), 0);
      const total = files.reduce((n, f) => n + (Number(f.progress.bytesTotal) || 0), 0);
      meter.add(sent, performance.now());
      const rate = meter.rate();
      const left = meter.secondsLeft(total);
      setProgress(
        total > 0 && rate
          ? `${formatBytes(sent)} of ${formatBytes(total)} at ${formatBytes(rate)}/s, about ${formatDuration(left ?? 0)} left`
          : '',
      );
    });
    uppy.on('complete', () => setProgress(''));
    uppy.on('pause-all', () => setProgress('Paused'));

    const root = target.current;
    const observer = new MutationObserver(() => fixListRoles(root));
    observer.observe(root, { childList: true, subtree: true });

    return () => {
      observer.disconnect();
      uppy.destroy();
    };
  }, [apiKey, auth, client, message, queryClient]);

  return (
    <>
      <Typography.Paragraph>
        Drop a study below, or browse: a zip or tar of DICOM files, a NIfTI file, PNG/JPEG slices, or a whole DICOM
        folder (zipped here before upload). Each file becomes one job. You can pause and resume; if the tab is closed
        mid-upload, add the same file again and it continues where it stopped.
      </Typography.Paragraph>
      <div ref={target} data-testid="uploader" />
      <div role="status" aria-live="polite" data-testid="upload-speed" style={{ minHeight: 22, marginTop: 8 }}>
        {progress}
      </div>
    </>
  );
}
