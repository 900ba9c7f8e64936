"""tus uploads: the tuspyserver router and the upload-finished ingest; mounted beside the
gateway by :mod:`services.asgi`."""
