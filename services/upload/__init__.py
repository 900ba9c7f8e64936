"""tus uploads: the tuspyserver router mounted by the gateway, and the upload-finished ingest."""
