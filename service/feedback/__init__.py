"""Flagged mistakes: the store (``store``), its Alembic migrations, and the export to a labelled folder."""
