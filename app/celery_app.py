"""Entry module for the Celery CLI: `celery -A app.celery_app worker` / `beat`. Import builds the app."""

from .worker import build

celery = build()
