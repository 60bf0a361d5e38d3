"""Shared test settings: one torch thread, fixed seeds."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.pg import fresh_database, require_postgres

torch.set_num_threads(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store on each back end: a SQLite file, and a throw-away PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'vigil.db'}"
        return
    require_postgres()
    with fresh_database() as url:
        yield url
