"""Damaged files and a hostile environment: checkpoint manifests and fallback, named errors for
damaged model directories, one-line messages for read-only/full disks and refused pickles."""

from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from _helpers import TINY_TRAIN, char_tokenizer, prepare_synthetic, save_tiny_llama
from shoestring.errors import CorruptFileError, RefusedPickleError, UserError
from shoestring.failures import failure_message
from shoestring.train.checkpoint import (
    MANIFEST,
    load_checkpoint,
    load_newest_intact,
    save_checkpoint,
    verify_checkpoint,
)

TINY = TINY_TRAIN


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("data") / "synthetic")


def _garble(path: Path) -> None:
    """Overwrite the middle of a file with other bytes, keeping its size (a bit-rot stand-in)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes((b + 1) % 256 for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- checkpoints
def test_corrupt_newest_checkpoint_falls_back_and_matches_uninterrupted(
    prepared: Path, tmp_path: Path
) -> None:
    from shoestring.run_config import build_run_config
    from shoestring.rundir.directory import read_json
    from shoestring.train.config import TrainJobConfig
    from shoestring.train.run import run as train

    steps = ("train.max_steps=30", "train.save_every=10", "train.eval_every=10")
    cfg = build_run_config(overrides=[f"data.path={prepared}", *TINY, *steps])
    ref = train(TrainJobConfig.of(cfg, out=tmp_path, name="ref", quiet=True))

    def stop_at_20(step: int, _val: float) -> None:
        if step == 20:
            raise KeyboardInterrupt  # what Ctrl-C does: a checkpoint at step 20, then exit

    cfg = build_run_config(overrides=[f"data.path={prepared}", *TINY, *steps])
    with pytest.raises(KeyboardInterrupt):
        train(TrainJobConfig.of(cfg, out=tmp_path, name="cut", quiet=True), on_eval=stop_at_20)
    run = tmp_path / "cut"
    newest = run / "checkpoints" / "step_20"
    assert verify_checkpoint(newest) is None
    assert set(json.loads((newest / MANIFEST).read_text())["files"]) == {
        "model.safetensors",
        "state.pt",
    }
    _garble(newest / "model.safetensors")
    assert "SHA-256" in (verify_checkpoint(newest) or "")

    cfg = build_run_config(overrides=[f"data.path={prepared}", *TINY, *steps])
    train(TrainJobConfig.of(cfg, out=tmp_path, resume=run, quiet=True))
    log = (run / "log.txt").read_text()
    assert f"checkpoint {newest} is damaged: model.safetensors does not match its SHA-256" in log
    assert "falling back to step_10, the newest intact checkpoint (damaged: step_20)" in log
    assert "resumed from" in log and "step_10 at step 10" in log
    a, b = read_json(ref / "summary.json"), read_json(run / "summary.json")
    assert b["status"] == "finished" and b["steps"] == 30
    assert a["final_train_loss"] == b["final_train_loss"]
    assert a["final_val_loss"] == b["final_val_loss"]


def _two_checkpoints(root: Path) -> torch.nn.Module:
    model = torch.nn.Linear(4, 3)
    for step in (1, 2):
        with torch.no_grad():
            model.weight.fill_(float(step))
        save_checkpoint(root / f"step_{step}", model, {"step": step})
    return model


def test_damaged_checkpoint_without_manifest_is_named_and_skipped(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    model = _two_checkpoints(root)
    # a checkpoint from before manifests, cut short: found by loading it
    (root / "step_2" / MANIFEST).unlink()
    state = root / "step_2" / "state.pt"
    state.write_bytes(state.read_bytes()[:40])
    lines: list[str] = []
    path, st = load_newest_intact(root, lambda p: load_checkpoint(p, model), lines.append)
    assert path.name == "step_1" and st["step"] == 1
    assert float(model.weight.detach()[0, 0]) == 1.0
    assert "step_2" in lines[0] and "state.pt is damaged: not a readable torch file" in lines[0]
    assert "falling back to step_1" in lines[1]
    # every checkpoint damaged: one error that names each and why
    (root / "step_1" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"no intact checkpoint.*step_2 \(.*step_1 \(model"):
        load_newest_intact(root, lambda p: load_checkpoint(p, model), lines.append)


def test_grpo_resume_falls_back_past_a_damaged_checkpoint(tmp_path: Path) -> None:
    from shoestring.rl.grpo_checkpoint import load_grpo_checkpoint, save_grpo_checkpoint
    from shoestring.rundir.directory import RunDir

    rd = RunDir(tmp_path / "grpo", "grpo", echo=False)
    try:
        model = torch.nn.Linear(4, 3)
        for step in (1, 2):
            with torch.no_grad():
                model.weight.fill_(float(step))
            save_grpo_checkpoint(rd.checkpoints_dir, step, model, {"optimizer": {}}, keep=5)
        (rd.checkpoints_dir / "step_2" / "state.pt").write_bytes(b"not a torch file")
        with torch.no_grad():
            model.weight.zero_()
        ckpt, state = load_grpo_checkpoint(rd, model, torch.device("cpu"))
        assert ckpt.name == "step_1" and state["step"] == 1
        assert float(model.weight.detach()[0, 0]) == 1.0
        log = (rd.path / "log.txt").read_text()
        assert "step_2 is damaged: state.pt has 16 bytes, the manifest says" in log
    finally:
        rd.close()


# ----------------------------------------------------------------------------- model dirs
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("m") / "llama", char_tokenizer())


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_damaged_model_directories_get_named_errors(llama_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from shoestring.models.loading import load_model_and_tokenizer

    garbage = _copy(llama_dir, tmp_path / "garbage")
    (garbage / "model.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(CorruptFileError) as err:
        load_model_and_tokenizer(garbage, dtype="fp32")
    assert err.value.path == str(garbage / "model.safetensors")
    assert "not a readable safetensors file" in str(err.value)

    truncated = _copy(llama_dir, tmp_path / "truncated")
    weights = load_file(str(truncated / "model.safetensors"))
    (truncated / "model.safetensors").unlink()
    torch.save(weights, truncated / "pytorch_model.bin")
    blob = (truncated / "pytorch_model.bin").read_bytes()
    (truncated / "pytorch_model.bin").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptFileError) as err:
        load_model_and_tokenizer(truncated, dtype="fp32")
    assert err.value.path == str(truncated / "pytorch_model.bin")
    assert "not a readable torch file" in str(err.value)


# ----------------------------------------------------------------------------- one-line errors
def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from shoestring.cli import main

    rc = main(args)
    return rc, capsys.readouterr().err.strip()


def test_refused_pickle_is_one_line_without_the_weights_only_advice(
    llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    hostile = _copy(llama_dir, tmp_path / "hostile")
    weights: dict = dict(load_file(str(hostile / "model.safetensors")))
    (hostile / "model.safetensors").unlink()
    weights["payload"] = argparse.Namespace(run="code")  # not a tensor: weights_only refuses it
    torch.save(weights, hostile / "pytorch_model.bin")
    rc, err = _main(["generate", str(hostile), "--prompt", "1+1=", "--dtype", "fp32"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(hostile / "pytorch_model.bin") in err
    assert "refuses to unpickle" in err and "argparse.Namespace" in err
    assert "weights_only" not in err and "Traceback" not in err
    # a refused pickle that reached the CLI unnamed still never gets torch's advice
    raw = pickle.UnpicklingError("Weights only load failed. ... `weights_only` set to `False`")
    msg = failure_message(raw)
    assert msg is not None and "weights_only" not in msg and "False" not in msg
    assert isinstance(RefusedPickleError("x.pt", "os.system"), CorruptFileError)


def test_read_only_out_is_one_line(
    prepared: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ["train", "--data", str(prepared), "--name", "r"]
    for o in (*TINY, "train.max_steps=1"):
        args += ["--set", o]
    if os.geteuid() != 0:  # a real read-only directory (root writes through permissions)
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            rc, err = _main([*args, "--out", str(ro)], capsys)
        finally:
            ro.chmod(0o755)
        assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert str(ro / "r") in err and "permission denied" in err
    # a read-only file system, as the kernel reports it
    real_mkdir = Path.mkdir

    def read_only_mkdir(self: Path, *a: object, **k: object) -> None:
        if str(self).startswith(str(tmp_path / "rofs")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    rc, err = _main([*args, "--out", str(tmp_path / "rofs")], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{tmp_path / 'rofs'}" in err and "read-only file system" in err
    assert "another --out" in err
    # --debug shows the traceback as well as the line
    rc, err = _main(["--debug", *args, "--out", str(tmp_path / "rofs")], capsys)
    assert rc == 2 and "Traceback" in err and "read-only file system" in err.splitlines()[-1]


def test_full_disk_and_permission_messages_name_the_path() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoints/step_9")
    msg = failure_message(full)
    assert msg is not None and msg.startswith("/data/run/checkpoints/step_9: no space left")
    assert "--out" in msg
    denied = PermissionError(errno.EACCES, "Permission denied", "/runs/x/summary.json")
    assert "permission denied" in (failure_message(denied) or "")
    assert failure_message(KeyError("a bug")) is None  # bugs keep their traceback


def test_full_disk_during_a_checkpoint_is_named_and_cleaned_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    import shoestring.train.checkpoint as ckpt_mod

    def save_on_full_disk(*_a: object, **_k: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt_mod.torch, "save", save_on_full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9, 0))
    target = tmp_path / "checkpoints" / "step_3"
    with pytest.raises(OSError) as err:
        save_checkpoint(target, torch.nn.Linear(2, 2), {"step": 3})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    msg = failure_message(err.value) or ""
    assert msg.startswith(f"{target}: no space left on the device") and "--out" in msg
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no half-written temp left
