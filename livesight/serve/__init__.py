"""`livesight serve`: the engine behind an HTTP API (FastAPI on uvicorn)."""
