"""Serving: a saved ensemble behind Ray Serve and FastAPI, with a single upload page."""
