// The upload panel: Uppy's Dashboard mounted onto the console's one Uppy instance
// (UploadStore), so leaving this page leaves every upload running.
import { useEffect, useRef } from 'react';
import { Typography } from 'antd';
import Dashboard from '@uppy/dashboard';
import '@uppy/core/css/style.min.css';
import '@uppy/dashboard/css/style.min.css';
import { useUploads } from './UploadStore';

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
  const { uppy } = useUploads();
  const target = useRef<HTMLDivElement>(null);

  useEffect(() => {
    if (!target.current) return;
    uppy.use(Dashboard, {
      inline: true,
      target: target.current,
      height: 320,
      width: '100%',
      // One progress figure: the line below (bytes, speed, time left) instead of Uppy's.
      hideProgressDetails: true,
      fileManagerSelectionType: 'both',
      proudlyDisplayPoweredByUppy: false,
      note: 'A folder of DICOM files (zipped here before upload), a zip or tar of DICOM files, a NIfTI file, or PNG/JPEG slices.',
    });

    const root = target.current;
    const observer = new MutationObserver(() => fixListRoles(root));
    observer.observe(root, { childList: true, subtree: true });

    return () => {
      observer.disconnect();
      const dashboard = uppy.getPlugin('Dashboard');
      if (dashboard) uppy.removePlugin(dashboard); // the uploads go on (UploadStore)
    };
  }, [uppy]);

  return (
    <>
      <Typography.Paragraph>
        Drop a study below, or browse: a zip or tar of DICOM files, a NIfTI file, PNG/JPEG slices, or a whole DICOM
        folder (zipped here before upload). Each file, or each DICOM series of files picked together, becomes one job. Uploads go on while you open other pages of the
        console; you can pause and resume, and if the tab is closed mid-upload, add the same file again and it continues
        where it stopped. Cancelling an upload deletes its job.
      </Typography.Paragraph>
      <div ref={target} data-testid="uploader" />
    </>
  );
}
