"""The HTTP API (FastAPI): thin routes over the services in `shared.services`."""
