"""Use cases. Each runs in one UnitOfWork, never imports Flask, and raises app.errors."""
