"""A shoestring model directory loads in plain transformers, with shoestring hidden.

The child process runs ``python -S`` with only the venv's site-packages on ``sys.path`` (no
PYTHONPATH, no ``.pth`` files, so neither the editable install nor the worktree's ``src`` is
visible), checks that ``import shoestring`` fails there, and loads tokenizer and model with
``trust_remote_code=True``. Its logits must equal the in-shoestring model's.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _helpers import char_tokenizer
from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM
from shoestring.models.portable import MODELING_FILES
from shoestring.train.checkpoint import write_model_dir

SMALL = {"vocab_size": 0, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64}
VARIANTS = {
    # Llama-shaped: RoPE on the whole head, RMSNorm, SwiGLU
    "llama_like": {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "max_seq_len": 48},
    # every other code path the shipped files must carry: learned positions, LayerNorm, GELU,
    # low-rank q and kv, decoupled RoPE, a narrower v head, biases, RoPE scaling
    "deepseek_like": {
        "position": "rope",
        "qk_rope_head_dim": 8,
        "q_lora_rank": 16,
        "kv_lora_rank": 8,
        "v_head_dim": 8,
        "attention_bias": True,
        "rope_scaling": 2.0,
    },
    "nanogpt_like": {"position": "learned", "max_seq_len": 40},
}

CHILD = r"""
import importlib.util, json, sys
assert importlib.util.find_spec("shoestring") is None, "shoestring is still importable"
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out = {}
for name, path in json.loads(sys.argv[1]).items():
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    ids = tok("Question: 12+7=?", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    out[name] = {
        "module": type(model).__module__,
        "ids": ids.tolist(),
        "logits": logits.tolist(),
        "eos": [tok.eos_token_id, model.generation_config.eos_token_id],
        "model_max_length": tok.model_max_length,
    }
print(json.dumps(out))
"""


def _save_model_dirs(root: Path) -> dict[str, Path]:
    tok = char_tokenizer()
    tok_dir = root / "tokenizer"
    tok.save_pretrained(tok_dir)
    dirs = {}
    for i, (name, kw) in enumerate(VARIANTS.items()):
        torch.manual_seed(i)
        cfg = ShoestringGPTConfig(**{**SMALL, "vocab_size": len(tok), **kw})
        model = ShoestringGPTForCausalLM(cfg).eval()
        with torch.no_grad():  # move the norms off their all-ones init so they matter
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        dirs[name] = root / name / "model"
        dirs[name].parent.mkdir()
        write_model_dir(model, dirs[name], tok_dir)
    return dirs


def _plain_python_env(tmp: Path) -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment of a Python that sees site-packages but not shoestring."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    paths = [p for p in site.getsitepackages() if os.path.isdir(p) and "shoestring" not in p]
    boot = f"import sys; sys.path.extend({paths!r}); "
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp / "hf_modules"), HF_HUB_OFFLINE="1")
    assert src not in paths
    return [sys.executable, "-S", "-c", boot + "exec(sys.argv.pop(1))"], env


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _save_model_dirs(tmp_path_factory.mktemp("portable"))


def test_model_dir_carries_code_eos_and_context(model_dirs: dict[str, Path]) -> None:
    for name, path in model_dirs.items():
        cfg = json.loads((path / "config.json").read_text())
        gen = json.loads((path / "generation_config.json").read_text())
        tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
        assert cfg["auto_map"]["AutoModelForCausalLM"].startswith("modeling_shoestring_gpt.")
        assert cfg["eos_token_id"] == gen["eos_token_id"] == 2, name  # char_tokenizer's </s>
        assert tok_cfg["model_max_length"] == cfg["max_seq_len"], name
        assert gen["max_length"] == cfg["max_seq_len"], name  # transformers stops at the context
        for target in MODELING_FILES.values():
            text = (path / target).read_text()
            assert "\nfrom shoestring" not in text and "\nimport shoestring" not in text, target
    assert json.loads((model_dirs["deepseek_like"] / "config.json").read_text())[
        "rope_scaling"
    ] == {"rope_type": "linear", "factor": 2.0}


def test_model_dir_loads_without_shoestring_and_logits_match(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    argv, env = _plain_python_env(tmp_path)
    arg = json.dumps({k: str(v) for k, v in model_dirs.items()})
    proc = subprocess.run(
        [*argv, CHILD, arg],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, path in model_dirs.items():
        child = got[name]
        assert child["module"].startswith("transformers_modules."), child["module"]
        assert child["eos"] == [2, 2]
        model = ShoestringGPTForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            ref = model(torch.tensor(child["ids"])).logits
        torch.testing.assert_close(torch.tensor(child["logits"]), ref, rtol=1e-5, atol=1e-5)


def test_with_shoestring_installed_its_own_class_loads_the_directory(
    model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where shoestring is imported, the directory loads with shoestring's registered class,
    with or without trust_remote_code, so its engines and isinstance checks see their own type."""
    import transformers.dynamic_module_utils as dyn
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    path = model_dirs["llama_like"]
    for flag in (True, False):
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=flag)
        assert type(model) is ShoestringGPTForCausalLM, flag
