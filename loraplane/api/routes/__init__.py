"""One router per resource of the Tinker protocol; `app.create_app` includes them all under /api/v1."""
