"""The HTTP API: routers for ingest, status and review, the review page, and the uvicorn server."""
