"""The record store: SQLAlchemy tables, Alembic migrations and the repository."""
