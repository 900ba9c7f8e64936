"""FastAPI gateway: the /v1 REST API, tus uploads (mounted from services.upload), health."""
