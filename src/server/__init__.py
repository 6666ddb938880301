"""FastAPI web UI and streaming API over the generation engine."""
