"""Checkpoints are only ever read with torch.load(weights_only=True): a forged manifest unlocks nothing,
a pickle payload is refused in one line (infer, train's load_from, Pretrained init), alseg's own checkpoints
round-trip exactly, and mmengine runner checkpoints (older alseg run dirs, the model zoo) still load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from alseg.commands import app
from alseg.demo_data import CLASS_NAMES, make_demo_data
from alseg.errors import InputError
from alseg.files.checkpoint import read_checkpoint, sidecar_path, write_checkpoint
from alseg.files.hdf5 import sha256_file

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "demo_unet_tiny.py")
runner = CliRunner()


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path, how: str = "exec"):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _payload_checkpoint(path: Path, marker: Path, how: str = "exec") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": Payload(marker, how)}, path)
    return path


def _forge_train_manifest(ckpt: Path) -> None:
    """What the old trust check read: a train manifest listing the file with its true sha256."""
    doc = {"format": "alseg.manifest", "format_version": 1, "stage": "train",
           "outputs": [{"path": str(ckpt), "sha256": sha256_file(ckpt)}]}
    (ckpt.parent / "manifest.json").write_text(json.dumps(doc))


def _one_error_line(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    d = make_demo_data(root / "demo", n_images=12, size=32, seed=0, n_val=2, n_calib=2)
    labeled = root / "labeled.txt"
    labeled.write_text("".join(f"{i}\n" for i in (d.out_dir / "splits" / "pool.txt").read_text().split()[:4]))
    return dict(root=root, data=d.out_dir, labeled=labeled, ids=d.out_dir / "splits" / "val.txt")


@pytest.fixture(scope="module")
def model_in_memory(demo):
    from alseg import mm

    cfg = mm.load_config(CONFIG, data_root=demo["data"])
    from mmseg.registry import MODELS

    torch.manual_seed(0)
    return cfg, MODELS.build(cfg.model).eval()


# -------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("how, name", [("exec", "exec"), ("system", "posix.system")])
def test_payload_is_refused_even_with_a_forged_manifest(tmp_path, how, name):
    marker = tmp_path / "MARKER"
    ckpt = _payload_checkpoint(tmp_path / "w" / "checkpoint.pth", marker, how)
    _forge_train_manifest(ckpt)
    with pytest.raises(InputError, match=f"refused to load: it needs the Python global {name}") as info:
        read_checkpoint(ckpt)
    assert str(ckpt) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_infer_refuses_payload_checkpoint(demo, tmp_path):
    marker = tmp_path / "MARKER"
    ckpt = _payload_checkpoint(tmp_path / "w" / "checkpoint.pth", marker)
    _forge_train_manifest(ckpt)
    out = tmp_path / "pool.h5"
    r = runner.invoke(app, ["infer", CONFIG, "--checkpoint", str(ckpt), "--ids", str(demo["ids"]), "--out", str(out),
                            "--data-root", str(demo["data"]), "--device", "cpu", "--quiet"])
    assert r.exit_code == 1, r.output
    _one_error_line(r.stderr, str(ckpt), "exec", "weights_only=True")
    assert not marker.exists() and not out.exists() and not Path(f"{out}.partial").exists()


def test_train_load_from_payload_one_line_no_work_dir(demo, tmp_path):
    """The installed command line, as a user runs it: exit 1, one line naming the file, nothing written."""
    marker = tmp_path / "MARKER"
    evil = _payload_checkpoint(tmp_path / "evil.pth", marker)
    work_dir = tmp_path / "runs" / "w"
    r = subprocess.run(
        [sys.executable, "-m", "alseg.commands", "train", CONFIG, "--labeled", str(demo["labeled"]),
         "--out", str(work_dir), "--data-root", str(demo["data"]), "--device", "cpu", "--max-iters", "1",
         "--quiet", "--cfg-options", f"load_from={evil}"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 1, r.stderr
    _one_error_line(r.stderr, f"load_from: {evil}", "exec")
    assert r.stdout == ""
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_train_pretrained_payload_refused(demo, tmp_path):
    from alseg.stages.train import train

    marker = tmp_path / "MARKER"
    evil = _payload_checkpoint(tmp_path / "evil.pth", marker)
    with pytest.raises(InputError, match="model.backbone.init_cfg.checkpoint: .*evil.pth: refused to load"):
        train(CONFIG, labeled_path=demo["labeled"], work_dir=tmp_path / "w", data_root=demo["data"], device="cpu",
              max_iters=1, cfg_options={"model.backbone.init_cfg": {"_delete_": True, "type": "Pretrained", "checkpoint": str(evil)}})
    assert not marker.exists() and not (tmp_path / "w").exists()


def test_mmengine_style_loads_are_weights_only_even_when_the_environment_says_otherwise(tmp_path, monkeypatch):
    """mmengine calls torch.load without weights_only, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD would unpickle;
    inside allow_runner_checkpoints (where train runs mmengine) it does not."""
    import pickle

    from alseg.files.checkpoint import allow_runner_checkpoints

    marker = tmp_path / "MARKER"
    evil = _payload_checkpoint(tmp_path / "evil.pth", marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with allow_runner_checkpoints(), pytest.raises(pickle.UnpicklingError):
        torch.load(evil, map_location="cpu")
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1" and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_train_refuses_resume_and_missing_load_from(demo, tmp_path):
    from alseg.stages.train import train

    common = dict(labeled_path=demo["labeled"], work_dir=tmp_path / "w", data_root=demo["data"], device="cpu",
                  max_iters=1)
    with pytest.raises(InputError, match="load_from: .*nope.pth: checkpoint not found"):
        train(CONFIG, cfg_options={"load_from": str(tmp_path / "nope.pth")}, **common)
    with pytest.raises(InputError, match="resume=True"):
        train(CONFIG, cfg_options={"resume": True}, **common)
    assert not (tmp_path / "w").exists()


def test_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="junk.pth") as info:
        read_checkpoint(junk)
    assert "\n" not in str(info.value)
    listed = tmp_path / "list.pth"
    torch.save([torch.ones(1)], listed)
    with pytest.raises(InputError, match="not a checkpoint"):
        read_checkpoint(listed)


# ------------------------------------------------------------------------------------- alseg's own format


def test_own_checkpoint_round_trips_exactly(demo, model_in_memory, tmp_path):
    from alseg import dataset as D
    from alseg import mm

    cfg, model = model_in_memory
    palette = [[i, 2 * i, 3 * i] for i in range(len(CLASS_NAMES))]
    ckpt = write_checkpoint(tmp_path / "checkpoint.pth", model.state_dict(),
                            dataset_meta={"classes": tuple(CLASS_NAMES), "palette": palette}, iteration=7)
    plain = torch.load(ckpt, weights_only=True)  # no allowlist: nothing but str, int and tensors
    assert plain["format"] == "alseg.checkpoint" and plain["format_version"] == 1
    assert set(plain["state_dict"]) == set(model.state_dict())
    assert all(type(v) is torch.Tensor for v in plain["state_dict"].values())
    side = json.loads(sidecar_path(ckpt).read_text())
    assert side["weights_sha256"] == sha256_file(ckpt) and side["iteration"] == 7
    assert side["dataset_meta"] == {"classes": list(CLASS_NAMES), "palette": palette}

    loaded = mm.build_model(cfg, ckpt, torch.device("cpu"))
    assert loaded.dataset_meta["classes"] == list(CLASS_NAMES) and loaded.dataset_meta["palette"] == palette
    image_id = demo["ids"].read_text().split()[0]
    index = D.resolve(cfg, [image_id], "auto")
    batch = next(iter(D.test_loader(cfg, index, [image_id], with_labels=False, batch_size=1)))
    with torch.inference_mode():
        want = model.decode_head(model.extract_feat(model.data_preprocessor(batch, False)["inputs"]))
        got = loaded.decode_head(loaded.extract_feat(loaded.data_preprocessor(batch, False)["inputs"]))
    assert torch.equal(want, got)

    out = tmp_path / "pool.h5"
    r = runner.invoke(app, ["infer", CONFIG, "--checkpoint", str(ckpt), "--ids", str(demo["ids"]), "--out", str(out),
                            "--data-root", str(demo["data"]), "--device", "cpu", "--batch-size", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    with h5py.File(out, "r") as fh:
        row = [i.decode() for i in fh["ids"][:]].index(image_id)
        stored = fh["logits"][row]
    np.testing.assert_array_equal(stored, want[0].numpy().astype(np.float16))


def test_sidecar_must_describe_its_weights_and_version(model_in_memory, tmp_path):
    _, model = model_in_memory
    ckpt = write_checkpoint(tmp_path / "checkpoint.pth", model.state_dict(), dataset_meta={"classes": ["a"]})
    other = write_checkpoint(tmp_path / "other.pth", {"w": torch.zeros(1)})
    sidecar_path(ckpt).write_text(sidecar_path(other).read_text())
    with pytest.raises(InputError, match="sha256 differs"):
        read_checkpoint(ckpt)
    sidecar_path(ckpt).unlink()  # weights without their sidecar still load, without dataset_meta
    got = read_checkpoint(ckpt)
    assert got.kind == "alseg" and got.dataset_meta is None
    torch.save({"format": "alseg.checkpoint", "format_version": 99, "state_dict": {}}, tmp_path / "new.pth")
    with pytest.raises(InputError, match="newer alseg"):
        read_checkpoint(tmp_path / "new.pth")


# ------------------------------------------------------------------- mmengine runner checkpoints (old run dirs)


def _real_runner_checkpoint(work_dir: Path) -> Path:
    """What mmengine's Runner.save_checkpoint writes (older alseg ``train``): numpy and HistoryBuffer inside."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, inputs, mode="loss"):
            out = self.lin(inputs if torch.is_tensor(inputs) else torch.stack(inputs))
            return {"loss": out.pow(2).mean()} if mode == "loss" else out

    class Data(torch.utils.data.Dataset):
        metainfo = {"classes": tuple(CLASS_NAMES), "palette": [[1, 2, 3]] * len(CLASS_NAMES)}

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"inputs": torch.rand(2)}

    r = Runner(model=Toy(), work_dir=str(work_dir), train_cfg=dict(by_epoch=False, max_iters=2),
               train_dataloader=dict(dataset=Data(), sampler=dict(type="DefaultSampler", shuffle=False), batch_size=2,
                                     collate_fn=dict(type="default_collate")),
               optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1)), default_hooks=dict(checkpoint=None),
               randomness=dict(seed=0), log_level="WARNING")
    r.train()
    r.save_checkpoint(str(work_dir), "runner.pth", save_optimizer=False, save_param_scheduler=False, by_epoch=False)
    return work_dir / "runner.pth"


def test_old_run_dir_checkpoint_loads(demo, model_in_memory, tmp_path):
    """An mmengine runner checkpoint (numpy, HistoryBuffer) loads under weights_only=True + the allowlist."""
    from alseg import mm

    cfg, model = model_in_memory
    real = _real_runner_checkpoint(tmp_path / "mm")
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(real))
    assert {"numpy.ndarray", "mmengine.logging.history_buffer.HistoryBuffer", "builtins.getattr"} <= unsafe
    with pytest.raises(Exception):
        torch.load(real, weights_only=True)  # torch's default refuses it
    got = read_checkpoint(real)
    assert got.kind == "mmengine" and set(got.state_dict) == {"lin.weight", "lin.bias"}
    assert got.dataset_meta["classes"] == list(CLASS_NAMES)

    # an old alseg run dir: the same runner content around the demo model's weights (the test trusts this file)
    ckpt_doc = torch.load(real, weights_only=False)
    ckpt_doc["state_dict"] = model.state_dict()
    old = tmp_path / "old" / "train" / "checkpoint.pth"
    old.parent.mkdir(parents=True)
    torch.save(ckpt_doc, old)
    loaded = mm.build_model(cfg, old, torch.device("cpu"))
    assert loaded.dataset_meta["classes"] == list(CLASS_NAMES)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    r = runner.invoke(app, ["infer", CONFIG, "--checkpoint", str(old), "--ids", str(demo["ids"]), "--out",
                            str(tmp_path / "pool.h5"), "--data-root", str(demo["data"]), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output


def test_train_pretrained_and_load_from_runner_checkpoints(demo, tmp_path):
    """Weights from Pretrained init (a runner checkpoint with numpy and HistoryBuffer) reach the model through
    mmengine's own loader; with lr=0 they are what train writes. Its output is alseg's plain format."""
    from mmengine.logging import HistoryBuffer
    from mmseg.registry import MODELS

    from alseg import mm
    from alseg.stages.train import train

    cfg = mm.load_config(CONFIG)
    torch.manual_seed(123)
    backbone = MODELS.build(cfg.model.backbone)
    history = HistoryBuffer()
    history.update(1.0)
    pretrained = tmp_path / "backbone.pth"
    torch.save({"meta": {"seed": np.int64(3), "hist": np.arange(3)}, "state_dict": backbone.state_dict(),
                "message_hub": {"log_scalars": {"train/loss": history}}}, pretrained)
    frozen = {"optim_wrapper.optimizer.lr": 0.0, "param_scheduler": []}
    result = train(CONFIG, labeled_path=demo["labeled"], work_dir=tmp_path / "w", data_root=demo["data"],
                   device="cpu", max_iters=1, batch_size=2,
                   cfg_options={"model.backbone.init_cfg": {"_delete_": True, "type": "Pretrained",
                                                           "checkpoint": str(pretrained)},
                                **frozen})
    written = torch.load(result.checkpoint_path, weights_only=True)["state_dict"]
    for k, v in backbone.state_dict().items():
        if k.endswith(".weight") and "conv" in k:
            assert torch.equal(written[f"backbone.{k}"], v), k
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert {Path(o["path"]).name for o in manifest["outputs"]} >= {"checkpoint.pth", "checkpoint.json"}
    side = json.loads(sidecar_path(result.checkpoint_path).read_text())
    assert side["dataset_meta"]["classes"] == list(CLASS_NAMES) and side["iteration"] == 1

    # load_from: an older run dir's runner checkpoint, read by mmengine under the same allowlist
    old = tmp_path / "old.pth"
    torch.save({"meta": {"seed": np.int64(3), "dataset_meta": {"classes": tuple(CLASS_NAMES)}}, "state_dict": written,
                "message_hub": {"log_scalars": {"train/loss": history}}}, old)
    train(CONFIG, labeled_path=demo["labeled"], work_dir=tmp_path / "w2", data_root=demo["data"], device="cpu",
          max_iters=1, batch_size=2, cfg_options={"load_from": str(old), **frozen})
    again = torch.load(tmp_path / "w2" / "checkpoint.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], written[k]) for k in written if k.endswith(".weight"))
