"""The IO-binding runner on a real ORT session: same results as ``session.run``.

On this CPU machine the staging buffers are pageable (no libcudart) and outputs are bound to
host buffers; the GPU run (bench/gpu_check.sh) exercises pinned buffers and device outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.backends.onnxruntime.io_binding import IoBindingRunner


def test_io_binding_matches_a_plain_run_and_reuses_its_buffers(example_repo: Path) -> None:
    session = ort.InferenceSession(
        str(example_repo / "digits_mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    shapes = {"probabilities": (np.dtype(np.float32), (10,))}
    runner = IoBindingRunner(session, 0, shapes, batches=True)
    rng = np.random.default_rng(0)
    try:
        for rows in (4, 2, 16):  # shrink then grow: buffers are reused, then replaced
            batch = rng.random((rows, 64), dtype=np.float32)
            (bound,) = runner.run({"input": batch}, ["probabilities"])
            (plain,) = session.run(["probabilities"], {"input": batch})
            assert bound.shape == (rows, 10)
            np.testing.assert_allclose(bound, plain, rtol=1e-6)
    finally:
        runner.close()
