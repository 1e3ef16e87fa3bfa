"""Safe checkpoint loading: official files, state_dicts, hostile and corrupt files."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from sw.checkpoint import load_model, read_torch_zip
from sw.checkpoint.official import write_official_checkpoint
from sw.errors import CheckpointError, UnsafeCheckpointError
from sw.models import YoloModel, builtin_config, to_deploy


def _zip_checkpoint(path: Path, pickle_bytes: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A file with torch's zip layout around an arbitrary pickle."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/version", "3\n")
        for key, raw in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", raw)
    return path


class _SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


def _getattr_import(marker: Path) -> bytes:
    # Hand-written protocol-0 pickle: getattr(__import__('os'), 'system')('touch <marker>')
    return (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(Vtouch "
            + str(marker).encode() + b"\ntR.")


def _subprocess_popen(marker: Path) -> bytes:
    # Hand-written protocol-0 pickle: subprocess.Popen(['touch', marker]).wait()-free variant
    return b"csubprocess\ncall\n((lp0\nVtouch\np1\naV" + str(marker).encode() + b"\np2\natR."


def _system_after_model_class(marker: Path) -> bytes:
    # A plausible checkpoint dict: 'model' calls an allowed global, then 'evil' calls posix.system.
    cmd = f"touch {marker}".encode()
    return (b"\x80\x02}q\x00(X\x05\x00\x00\x00modelq\x01ccollections\nOrderedDict\nq\x02)Rq\x03"
            b"X\x04\x00\x00\x00evilq\x04cposix\nsystem\nq\x05X" + len(cmd).to_bytes(4, "little") + cmd
            + b"q\x06\x85q\x07Rq\x08u.")


# Each builds the pickle bytes of a payload that touches `marker` when unpickled by plain pickle.
PAYLOADS = {
    "os.system via __reduce__": lambda m: pickle.dumps({"model": _SystemCall(m)}, protocol=2),
    "builtins.eval via __reduce__": lambda m: pickle.dumps({"model": _EvalCall(m)}, protocol=2),
    "getattr(__import__('os'), 'system')": _getattr_import,
    "subprocess.call, protocol 0": _subprocess_popen,
    "posix.system after an allowed global": _system_after_model_class,
}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_payloads_really_run_under_plain_pickle(kind, tmp_path):
    """Guards against a vacuous refusal test: every payload does act when unpickled normally."""
    marker = tmp_path / "ran"
    pickle.loads(PAYLOADS[kind](marker))
    assert marker.exists()


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_hostile_pickles_are_refused_without_side_effects(kind, tmp_path):
    marker = tmp_path / "pwned"
    path = _zip_checkpoint(tmp_path / "evil.pt", PAYLOADS[kind](marker))
    with pytest.raises(UnsafeCheckpointError, match="refused: the pickle asks for") as info:
        load_model(path)
    assert str(path) in str(info.value)
    assert not marker.exists(), "the hostile payload ran"


def test_hostile_torch_save_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _SystemCall(marker), "w": torch.zeros(3)}, path)
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        load_model(path)
    assert not marker.exists()


def test_official_yolov5n_loads(yolov5n):
    assert sum(p.numel() for p in yolov5n.parameters()) == 1_872_157
    assert yolov5n.names[0] == "person" and len(yolov5n.names) == 80
    assert yolov5n.stride.tolist() == [8.0, 16.0, 32.0]
    assert all(m.eps == 1e-3 for m in yolov5n.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_plain_state_dict_is_inferred_and_equal(yolov5n, tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(yolov5n.state_dict(), path)
    loaded = load_model(path)
    assert loaded.kind == "state_dict"
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), yolov5n(x))


def test_unknown_state_dict_asks_for_cfg(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="matches no built-in model"):
        load_model(path)


@pytest.mark.slow  # writing the generated YOLOv7 checkpoint takes about 20 s
def test_generated_yolov7_round_trip(yolov7_generated_path):
    obj = read_torch_zip(yolov7_generated_path)
    assert set(obj) >= {"model", "epoch", "optimizer", "ema"}
    rec = obj["model"]
    assert rec.qualname == "models.yolo.Model"
    assert rec.state["yaml"] == builtin_config("yolov7-training")
    assert rec.state["names"][0] == "person"
    modules = rec.state["_modules"]["model"].state["_modules"]
    assert modules["102"].qualname == "models.common.RepConv"
    assert modules["105"].qualname == "models.yolo.IDetect"
    assert obj["model"].state["_modules"]["model"].state["_modules"]["0"].state["_modules"]["conv"] \
        .state["_parameters"]["weight"].dtype == torch.float16
    model = load_model(yolov7_generated_path).model
    assert type(model.detect).__name__ == "IDetect"
    assert len(to_deploy(model).conv_layers()) == 92


def test_deploy_form_round_trip(tmp_path):
    model = to_deploy(YoloModel(builtin_config("yolov7-tiny-training"))).eval()
    path = tmp_path / "deploy.pt"
    write_official_checkpoint(model, path)
    loaded = load_model(path).model
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.half().float()(x))


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_file_gives_clear_error(yolov5n_path, tmp_path, cut):
    raw = yolov5n_path.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_model(path)


def test_random_bytes_and_missing_file(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_model(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pt")


def test_storage_overrun_is_caught(tmp_path):
    t = torch.arange(10, dtype=torch.float32)
    buf = io.BytesIO()
    torch.save(t, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src:
        names = src.namelist()
        pkl = src.read([n for n in names if n.endswith("data.pkl")][0])
        key = [n for n in names if "/data/" in n][0].rsplit("/", 1)[1]
        raw = src.read([n for n in names if "/data/" in n][0])
    path = _zip_checkpoint(tmp_path / "short.pt", pkl, {key: raw[:16]})
    with pytest.raises(CheckpointError):
        read_torch_zip(path)


def test_corrupted_tensor_shape_is_named(yolov5n, tmp_path):
    sd = dict(yolov5n.state_dict())
    sd["model.0.conv.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError):
        load_model(path, cfg="yolov5n")
