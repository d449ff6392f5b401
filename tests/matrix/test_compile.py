"""``engine.compile`` on CPU: the method's forward runs through ``torch.compile`` (inductor) inside
the backend's setup, and the fixed-batch checks hold for the compiled method."""

from __future__ import annotations

import pytest

from tests.matrix.harness import Launch, checks_of, layout_problem, loss_problem

pytestmark = pytest.mark.matrix


def test_compiled_simsiam_trains_on_cpu(matrix_data, tmp_path):
    # inductor compiles in this process, not in a pool of compile workers it starts and waits
    # for: on a busy 2-core machine that pool is what a fresh clone's full run tripped over
    launch = Launch(matrix_data, tmp_path, "local", "fp32", "fixed",
                    env={"MATRIX_COMPILE": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"},
                    methods=["simsiam"])
    launch.run()
    checks = checks_of(launch, "simsiam")
    assert checks["compiled_graphs"] > 0, launch.output()
    assert loss_problem(checks) is None, loss_problem(checks)
    assert layout_problem(checks) is None, layout_problem(checks)
