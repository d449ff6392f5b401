"""Launches of the matrix worker, one per (backend, precision, mode), shared by its tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.matrix.cells import resume_methods
from tests.matrix.harness import KILL, Launch, make_matrix_data


@pytest.fixture(scope="session")
def matrix_data(tmp_path_factory) -> Path:
    return make_matrix_data(tmp_path_factory.mktemp("matrix-data"))


@pytest.fixture(scope="session")
def launches(matrix_data, tmp_path_factory):
    """``get(backend, precision, mode)``: that launch, run once per session.

    ``checks``: one uninterrupted launch (fixed-batch checks + the real stage).
    ``resume``: the real stage with ``MATRIX_KILL`` set, relaunched after each kill until it
    exits 0 — each of ``resume_methods(backend)`` is SIGKILLed once mid-epoch and resumed."""
    done: dict = {}

    def get(backend: str, precision: str, mode: str) -> Launch:
        key = (backend, precision, mode)
        if key not in done:
            out = tmp_path_factory.mktemp(f"{backend}-{precision}-{mode}")
            if mode == "checks":
                launch = Launch(matrix_data, out, backend, precision, "checks")
                launch.run()
            else:
                methods = resume_methods(backend)
                launch = Launch(matrix_data, out, backend, precision, "train", env=KILL,
                                methods=methods)
                launch.run_until_done(len(methods) + 1)
            done[key] = launch
        return done[key]

    return get
