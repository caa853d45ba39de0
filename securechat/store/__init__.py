"""Storage: one interface (``IStore``), two backends (SQLite and PostgreSQL)."""
