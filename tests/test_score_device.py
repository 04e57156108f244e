"""`score --device`: the torch path (alseg.fused on the device) gives the CPU path's scores."""

from __future__ import annotations

import numpy as np

from alseg.files.hdf5 import ScoresReader
from conftest import make_calibration, make_pool


class _TorchOnCpu(str):
    """A device torch accepts as "cpu" but that score treats as an accelerator: the device code path,
    testable without a GPU."""

    type = "test-accelerator"


def test_device_path_equals_cpu_path(tmp_path, ids40, monkeypatch):
    import alseg.device
    from alseg.stages.score import score

    pool = make_pool(tmp_path / "pool.h5", ids40)
    cal = make_calibration(tmp_path / "crc.json")
    names = ["entropy", "margin", "least-confidence", "contextual-diversity", "badge", "crc"]
    score(pool, strategies=names, out_path=tmp_path / "cpu.h5", calibration_path=cal, save_risk_maps=3)
    monkeypatch.setattr(alseg.device, "resolve_device", lambda name: _TorchOnCpu("cpu"))
    score(pool, strategies=names, out_path=tmp_path / "dev.h5", calibration_path=cal, save_risk_maps=3,
          device="cuda")
    with ScoresReader(tmp_path / "cpu.h5") as a, ScoresReader(tmp_path / "dev.h5") as b:
        assert a.score_names == b.score_names and a.embedding_names == b.embedding_names
        for name in a.score_names:
            np.testing.assert_allclose(b.score(name), a.score(name), rtol=1e-5, atol=1e-6, err_msg=name)
        for name in a.embedding_names:
            np.testing.assert_allclose(b.embedding(name), a.embedding(name), rtol=1e-4, atol=1e-5, err_msg=name)
        ids_a, maps_a = a.risk_maps()
        ids_b, maps_b = b.risk_maps()
        assert ids_a == ids_b and np.array_equal(maps_a, maps_b)
