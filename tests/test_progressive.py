"""``shoestring progressive``: validation between stages, rollback on regression, resume.

The trainer and evaluator are injected: a fake trainer whose "training" breaks the model when
the learning rate is high makes a stage fail on purpose, and the real evaluator (or a scripted
one) has to notice. One test runs the real GRPO trainer end to end on a tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from _helpers import char_tokenizer, save_tiny_llama
from shoestring.config import ConfigError
from shoestring.rl import progressive
from shoestring.rl.curriculum_eval import EvalResult, ValidationEvaluator, eval_result
from shoestring.rl.progressive_config import (
    ProgressiveConfig,
    ValidationConfig,
    load_stages_file,
    stage_grpo_config,
)
from shoestring.rl.trainer import GRPOTrainer
from shoestring.rundir.directory import read_json, read_metrics

# Eight fixed problems a tiny model can memorise: the validation set of the "real" tests.
PROBLEMS = [
    {"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
    for a, b in [(1, 2), (3, 4), (5, 1), (2, 7), (6, 3), (4, 4), (8, 1), (9, 0)]
]


def _tokenizer() -> PreTrainedTokenizerFast:
    return char_tokenizer()


@pytest.fixture(scope="module")
def memorised_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama trained until it answers all eight PROBLEMS (so a broken copy scores 0)."""
    out = tmp_path_factory.mktemp("model") / "base"
    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg)
    texts = [f"Question: {p['question']}\nAnswer: #### {p['answer'].split()[-1]}" for p in PROBLEMS]
    enc = tok(texts, padding=True, return_tensors="pt")
    ids = torch.cat([enc["input_ids"], torch.full((len(texts), 1), 0)], dim=1)
    mask = torch.cat([enc["attention_mask"], torch.zeros(len(texts), 1, dtype=torch.long)], 1)
    lengths = enc["attention_mask"].sum(1)
    ids[torch.arange(len(texts)), lengths] = tok.eos_token_id  # right padding: EOS after text
    mask[torch.arange(len(texts)), lengths] = 1
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(400):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


class BreakingTrainer:
    """Stands in for GRPO: copies the start model; above ``breaking_lr`` it adds weight noise
    that destroys the model, as a too-high learning rate can. Records every call."""

    def __init__(self, breaking_lr: float = 1e-5, interrupt_on: str | None = None) -> None:
        self.breaking_lr = breaking_lr
        self.interrupt_on = interrupt_on
        self.calls: list[dict[str, Any]] = []

    def __call__(self, cfg: Any) -> Path:
        out, name = Path(cfg.output_dir).parent, Path(cfg.output_dir).name
        resume_dir = Path(cfg.resume) if cfg.resume else None
        self.calls.append(
            {
                "name": name,
                "lr": cfg.learning_rate,
                "start": cfg.model_name_or_path,
                "resume_dir": resume_dir,
                "dataset": cfg.dataset,
                "retention_penalty": cfg.retention_penalty,
                "retention_reference": cfg.retention_reference,
            }
        )
        run_dir = Path(resume_dir) if resume_dir else out / name
        run_dir.mkdir(parents=True, exist_ok=True)
        if name == self.interrupt_on:
            (run_dir / "checkpoints" / "step_1").mkdir(parents=True, exist_ok=True)
            (run_dir / "summary.json").write_text(json.dumps({"status": "interrupted"}))
            self.interrupt_on = None  # the next call (the resume) finishes
            raise KeyboardInterrupt
        model = LlamaForCausalLM.from_pretrained(cfg.model_name_or_path)
        if cfg.learning_rate > self.breaking_lr:
            torch.manual_seed(1)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))
        model.save_pretrained(run_dir / "model")
        _tokenizer().save_pretrained(run_dir / "model")
        summary = {"status": "finished", "kind": "grpo", "steps": 3, "train_seconds": 0.1}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return run_dir


class ScriptedEvaluator:
    """Returns accuracies from a script keyed by label (the base model is '00-base')."""

    def __init__(self, script: dict[str, int], n: int = 100) -> None:
        self.script, self.n, self.seen = script, n, []

    def __call__(self, model_dir: Path, label: str) -> EvalResult:
        self.seen.append((label, str(model_dir)))
        k = self.script[label]
        return eval_result([i < k for i in range(self.n)])


def _cfg(model: Path, **kw: Any) -> ProgressiveConfig:
    base: dict[str, Any] = {
        "model": str(model),
        "grpo": {"learning_rate": 1e-4, "num_generations": 2, "per_device_train_batch_size": 2},
        "stages": [
            {"name": "easy", "dataset": "synthetic:1", "max_steps": 3, "learning_rate": 1e-6},
            {"name": "hard", "dataset": "synthetic:2", "max_steps": 3},
            {"name": "harder", "dataset": "synthetic:3", "max_steps": 3, "learning_rate": 1e-6},
        ],
    }
    base.update(kw)
    from shoestring.config import apply_dict

    return apply_dict(ProgressiveConfig(), base).check()


def _run(
    cfg: ProgressiveConfig,
    *,
    out: Path | None = None,
    name: str = "",
    resume: Path | None = None,
    quiet: bool = True,
    **seams: Any,
) -> Path:
    """``progressive.run`` with the placement the CLI's --out, --name, --resume and -q set."""
    if out is not None:
        cfg.output.dir = str(out)
    cfg.output.name, cfg.output.quiet = name, quiet
    cfg.resume = str(resume) if resume else ""
    return progressive.run(cfg, **seams)


def _real_evaluator(run_dir_hint: Path | None = None) -> ValidationEvaluator:
    return ValidationEvaluator(
        ValidationConfig(n=len(PROBLEMS), max_new_tokens=12),
        problems=PROBLEMS,
        progress=False,
        records_dir=run_dir_hint,
    )


def test_failing_stage_is_rolled_back_and_retried_with_lower_lr(memorised_model, tmp_path):
    """The acceptance test: stage 2's lr breaks the model, the real evaluator sees accuracy fall
    from 8/8 to 0/8, the stage is rolled back, and the retry at half the lr is accepted."""
    trainer = BreakingTrainer(breaking_lr=2e-5)
    cfg = _cfg(
        memorised_model,
        retry_lr_factor=0.1,
        max_retries=2,
        retention_penalty=0.01,
        validation={"n": len(PROBLEMS)},
    )
    run = _run(
        cfg,
        out=tmp_path,
        name="curr",
        trainer=trainer,
        evaluator=_real_evaluator(),
    )
    s = read_json(run / "summary.json")
    assert s["kind"] == "progressive" and s["status"] == "finished"
    assert s["base_eval"]["correct"] == 8 and s["base_eval"]["n"] == 8
    assert [r["label"] for r in s["stages"]] == [
        "01-easy",
        "02-hard",
        "02-hard-retry1",
        "03-harder",
    ]
    assert [r["status"] for r in s["stages"]] == ["accepted", "rolled_back", "accepted", "accepted"]
    failed, retry = s["stages"][1], s["stages"][2]
    assert failed["eval"]["correct"] == 0 and failed["rolled_back"]
    assert failed["drop_points"] == pytest.approx(100.0)
    assert failed["p_vs_start"] == pytest.approx(2 * 0.5**8)  # McNemar: 8 discordant pairs
    assert s["rollbacks"] == 1
    # the protocol every model was scored under: auto -> qa for a tokenizer without a template
    assert s["protocol"]["name"] == "qa" and s["protocol_key"].startswith("qa@")
    assert s["validation"]["protocol"] == "auto"
    # the retry started from the pre-stage model (stage 1's), not the broken one, at lr x0.1
    assert trainer.calls[1]["lr"] == pytest.approx(1e-4)
    assert trainer.calls[2]["lr"] == pytest.approx(1e-5)
    assert retry["learning_rate"] == pytest.approx(1e-5)
    assert trainer.calls[2]["start"] == trainer.calls[1]["start"]
    assert trainer.calls[1]["start"] == str(tmp_path / "curr" / "stages" / "01-easy" / "model")
    # every stage starts from the best model; ties go to the later stage
    assert trainer.calls[3]["start"] == str(tmp_path / "curr/stages/02-hard-retry1/model")
    assert s["best_model_dir"] == str(tmp_path / "curr/stages/03-harder/model")
    # retention: lambda passed to every stage, reference = the base model
    assert all(c["retention_penalty"] == 0.01 for c in trainer.calls)
    assert all(c["retention_reference"] == str(memorised_model) for c in trainer.calls)
    # the table, the plot, per-problem evals and the metrics events exist
    table = (run / "report.md").read_text()
    assert "02-hard | 1" not in table and "| 02-hard | 0 | rolled_back |" in table
    assert "0.0% [0.0, 32.4] (0/8)" in table
    assert (run / "progressive.png").stat().st_size > 5000
    assert len(json.loads((run / "evals" / "02-hard.json").read_text())["per_problem"]) == 8
    events = [m for m in read_metrics(run) if m.get("event") == "stage"]
    assert [e["status"] for e in events] == [r["status"] for r in s["stages"]]


def test_stop_on_regression_keeps_the_pre_stage_model(memorised_model, tmp_path):
    trainer = BreakingTrainer(breaking_lr=2e-5)
    evaluator = ScriptedEvaluator({"00-base": 50, "01-easy": 60, "02-hard": 45})
    cfg = _cfg(memorised_model, on_regression="stop")
    run = _run(cfg, out=tmp_path, trainer=trainer, evaluator=evaluator)
    s = read_json(run / "summary.json")
    # 45 is 15 points below 60: more than the default threshold of 2, and significant
    # (15 problems lost, none won: McNemar p = 2 * 0.5**15)
    assert [r["status"] for r in s["stages"]] == ["accepted", "stopped"]
    assert s["stopped_at"] == "02-hard" and s["rollbacks"] == 1 and s["stages_completed"] == 1
    assert s["best_model_dir"] == str(run / "stages" / "01-easy" / "model")
    assert len(trainer.calls) == 2  # stage 3 never ran
    assert "Stopped at 02-hard" in (run / "report.md").read_text()
    # resuming with a retry allowed retries the stopped stage at a lower lr, then goes on
    evaluator.script.update({"02-hard-retry1": 61, "03-harder": 62})
    cfg2 = _cfg(memorised_model, on_regression="retry", max_retries=1)
    _run(cfg2, resume=run, trainer=trainer, evaluator=evaluator)
    s = read_json(run / "summary.json")
    assert [r["status"] for r in s["stages"]] == ["accepted", "stopped", "accepted", "accepted"]
    assert trainer.calls[2]["lr"] == pytest.approx(0.5 * trainer.calls[1]["lr"])
    assert s["stopped_at"] is None and s["best_model_dir"].endswith("03-harder/model")


def test_within_threshold_is_accepted_and_retries_are_bounded(memorised_model, tmp_path):
    evaluator = ScriptedEvaluator(
        {"00-base": 50, "01-easy": 49, "02-hard": 40, "02-hard-retry1": 40}
    )
    cfg = _cfg(memorised_model, max_retries=1, start_from="accepted")
    trainer = BreakingTrainer(breaking_lr=1.0)
    run = _run(cfg, out=tmp_path, trainer=trainer, evaluator=evaluator)
    s = read_json(run / "summary.json")
    # 49 vs 50 is within 2 points: accepted, but the best model stays the base
    assert [r["status"] for r in s["stages"]] == ["accepted", "rolled_back", "stopped"]
    assert s["best_model_dir"] == str(memorised_model) and s["best_label"] == "00-base"
    # start_from=accepted: stage 2 starts from stage 1's model although base is better
    assert trainer.calls[1]["start"] == str(run / "stages" / "01-easy" / "model")
    assert s["rollbacks"] == 2


def test_resume_continues_from_last_completed_stage(memorised_model, tmp_path):
    evaluator = ScriptedEvaluator({"00-base": 50, "01-easy": 55, "02-hard": 56, "03-harder": 60})
    trainer = BreakingTrainer(breaking_lr=1.0, interrupt_on="02-hard")
    cfg = _cfg(memorised_model)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, out=tmp_path, name="r", trainer=trainer, evaluator=evaluator)
    run = tmp_path / "r"
    s = read_json(run / "summary.json")
    assert s["status"] == "interrupted" and [r["label"] for r in s["stages"]] == ["01-easy"]
    _run(cfg, resume=run, trainer=trainer, evaluator=evaluator)
    s = read_json(run / "summary.json")
    assert s["status"] == "finished"
    assert [r["label"] for r in s["stages"]] == ["01-easy", "02-hard", "03-harder"]
    names = [c["name"] for c in trainer.calls]
    assert names == ["01-easy", "02-hard", "02-hard", "03-harder"]  # stage 1 not retrained
    assert trainer.calls[2]["resume_dir"] == run / "stages" / "02-hard"  # GRPO's own resume
    labels = [label for label, _ in evaluator.seen]
    assert labels.count("00-base") == 1 and labels.count("01-easy") == 1
    assert s["best_model_dir"] == str(run / "stages" / "03-harder" / "model")


def test_resume_after_training_but_before_validation(memorised_model, tmp_path):
    """A kill between a finished GRPO run and its validation re-validates, never retrains."""
    evaluator = ScriptedEvaluator({"00-base": 50, "01-easy": 55})
    trainer = BreakingTrainer(breaking_lr=1.0)
    cfg = _cfg(memorised_model, stages=[{"name": "easy", "dataset": "synthetic:1"}])

    def interrupting(model_dir: Path, label: str) -> EvalResult:
        if label == "01-easy":
            raise KeyboardInterrupt
        return evaluator(model_dir, label)

    with pytest.raises(KeyboardInterrupt):
        _run(cfg, out=tmp_path, name="r", quiet=False, trainer=trainer, evaluator=interrupting)
    _run(cfg, resume=tmp_path / "r", quiet=False, trainer=trainer, evaluator=evaluator)
    assert len(trainer.calls) == 1
    s = read_json(tmp_path / "r" / "summary.json")
    assert s["status"] == "finished" and s["stages"][0]["status"] == "accepted"


def test_trainer_error_marks_stage_failed(memorised_model, tmp_path):
    def broken(cfg: Any) -> Path:
        raise RuntimeError("loss is NaN")

    evaluator = ScriptedEvaluator({"00-base": 50})
    with pytest.raises(RuntimeError, match="NaN"):
        _run(
            _cfg(memorised_model),
            out=tmp_path,
            name="f",
            quiet=False,
            trainer=broken,
            evaluator=evaluator,
        )
    s = read_json(tmp_path / "f" / "summary.json")
    assert s["status"] == "failed" and "NaN" in s["error"]
    assert s["stages"][0]["status"] == "failed"
    assert s["best_model_dir"] == str(memorised_model)


def test_real_evaluator_scores_and_records(memorised_model, tmp_path):
    ev = _real_evaluator(tmp_path)
    res = ev(memorised_model, "m")
    assert (res.correct, res.n) == (8, 8) and res.per_problem == [True] * 8
    assert res.ci_low == pytest.approx(0.676, abs=1e-3) and res.ci_high == 1.0
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["pred"] == r["gold"] for r in rows)
    assert ev.fingerprint == _real_evaluator().fingerprint
    assert res.extra["protocol"]["name"] == "qa"


def test_stage_gate_verdicts_are_the_scoring_paths(memorised_model):
    """A stage gate judges exactly as score_model does under the protocol GRPO resolves (the
    held-out evaluation's path): same problems, same per-problem verdicts."""
    from shoestring.models.loading import load_model_and_tokenizer
    from shoestring.scoring.protocols import resolve_protocol
    from shoestring.scoring.scoring import score_model

    model, tok, _ = load_model_and_tokenizer(memorised_model, device="cpu", dtype="fp32")
    broken = [dict(p, answer=p["answer"] + "1") for p in PROBLEMS[:4]] + PROBLEMS[4:]
    protocol = resolve_protocol("auto", tok, fallback="qa")
    golds = [p["answer"].split()[-1] for p in broken]
    direct = score_model(
        model, tok, [p["question"] for p in broken], golds, protocol,
        max_new_tokens=12, progress=False,
    )  # fmt: skip
    ev = ValidationEvaluator(
        ValidationConfig(n=len(broken), max_new_tokens=12), problems=broken, progress=False
    )
    res = ev(memorised_model, "m")
    assert res.per_problem == [s.ok for s in direct] == [False] * 4 + [True] * 4
    assert res.extra["protocol_key"] == protocol.key()


def test_stages_file_errors_name_the_problem(memorised_model, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(f"model: {memorised_model}\nthreshhold: 3\nstages: [{{name: a}}]\n")
    with pytest.raises(ConfigError, match="did you mean 'threshold'"):
        load_stages_file(f)
    f.write_text(f"model: {memorised_model}\nstages: [{{name: a}}, {{name: a}}]\n")
    with pytest.raises(ConfigError, match="used twice"):
        load_stages_file(f)
    f.write_text(f"model: {memorised_model}\nstages: [{{dataset: 'synthetic:1'}}]\n")
    with pytest.raises(ConfigError, match="needs a name"):
        load_stages_file(f)
    f.write_text(f"model: {memorised_model}\nstages: [{{name: a, model_name_or_path: x}}]\n")
    with pytest.raises(ConfigError, match="set by the curriculum"):
        load_stages_file(f)
    f.write_text(f"model: {memorised_model}\nstages: [{{name: a, learning_rat: 0.1}}]\n")
    cfg = load_stages_file(f)
    with pytest.raises(ConfigError, match="stage 'a'.*did you mean 'learning_rate'"):
        _run(cfg, out=tmp_path, evaluator=ScriptedEvaluator({}))
    assert not (tmp_path / "progressive").exists()  # nothing ran


def test_drop_past_threshold_rolls_back_only_when_significant(memorised_model, tmp_path):
    """60 -> 57 of 100 is 3 points (> threshold 2) but 3 problems (McNemar p = 0.25): kept,
    with the reason in the log, summary and report; significance=1 rolls back on the drop."""
    script = {"00-base": 50, "01-easy": 60, "02-hard": 57, "03-harder": 58}
    cfg = _cfg(memorised_model, on_regression="stop")
    kw: dict[str, Any] = {"trainer": BreakingTrainer(breaking_lr=1.0)}
    run = _run(cfg, out=tmp_path, evaluator=ScriptedEvaluator(script), **kw)
    s = read_json(run / "summary.json")
    assert [r["status"] for r in s["stages"]] == ["accepted", "accepted", "accepted"]
    hard = s["stages"][1]
    assert hard["p_vs_best"] == pytest.approx(0.25) and "not significant" in hard["gate_reason"]
    assert s["best_label"] == "01-easy" and s["rollbacks"] == 0  # kept, never the best
    assert any("02-hard" in w and "not significant" in w for w in s["warnings"])
    assert "WARNING: stage 02-hard" in (run / "log.txt").read_text()
    assert "not significant" in (run / "report.md").read_text()

    cfg1 = _cfg(memorised_model, on_regression="stop", significance=1.0)
    run1 = _run(cfg1, out=tmp_path, name="sig1", evaluator=ScriptedEvaluator(script), **kw)
    s1 = read_json(run1 / "summary.json")
    assert [r["status"] for r in s1["stages"]] == ["accepted", "stopped"]


def test_gate_warns_when_n_cannot_resolve_the_threshold(memorised_model, tmp_path):
    """At n=30 one problem is 3.3 points and a significant drop needs 6 problems (20 points):
    the run says so in its log, summary and report before anything trains."""
    from shoestring.rl.progressive_state import gate_resolution_warning

    cfg = _cfg(memorised_model, validation={"n": 30}, stages=[{"name": "a", "max_steps": 1}])
    msg = gate_resolution_warning(cfg)
    assert msg is not None and "validation.n=30 cannot resolve threshold=2 points" in msg
    assert "at least 6 problems are lost (20.0 points)" in msg and "n >= 300" in msg
    assert gate_resolution_warning(_cfg(memorised_model, validation={"n": 300})) is None
    cfg1 = _cfg(memorised_model, validation={"n": 30}, significance=1.0)
    assert "a single problem decides" in (gate_resolution_warning(cfg1) or "")
    run = _run(
        cfg,
        out=tmp_path,
        trainer=BreakingTrainer(breaking_lr=1.0),
        evaluator=ScriptedEvaluator({"00-base": 10, "01-a": 10}, n=30),
    )
    s = read_json(run / "summary.json")
    assert s["warnings"][0] == msg
    assert f"WARNING: {msg}" in (run / "log.txt").read_text()
    assert "cannot resolve threshold" in (run / "report.md").read_text()


def test_set_grpo_key_reaches_every_stage_over_its_own_fields(memorised_model):
    """`progressive --stages synthetic_levels --set grpo.max_steps=2`: the bundled stages say
    max_steps 15; the command line is layered above them, for every stage."""
    from shoestring.cli import build_parser
    from shoestring.rl.cli import progressive_cli_config

    argv = ["progressive", "--stages", "synthetic_levels", "--model", str(memorised_model)]
    args = build_parser().parse_args([*argv, "--set", "grpo.max_steps=2"])
    cfg = progressive_cli_config(args)
    assert all(stage.get("max_steps") == 15 for stage in cfg.stages)  # the file's own
    steps = [stage_grpo_config(cfg, st, "/start").max_steps for st in cfg.stages]
    assert steps == [2] * len(cfg.stages)
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        progressive_cli_config(build_parser().parse_args([*argv, "--set", "grpo.max_step=2"]))


def test_layering_and_bundled_example(memorised_model):
    cfg = load_stages_file(
        "synthetic_levels", [f"model={memorised_model}", "grpo.seed=7", "threshold=3"]
    )
    assert cfg.threshold == 3.0 and len(cfg.stages) >= 2
    g = stage_grpo_config(cfg, cfg.stages[0], "/start", lr_factor=0.5)
    assert g.seed == 7 and g.model_name_or_path == "/start"
    full = stage_grpo_config(cfg, cfg.stages[0], "/start")
    assert g.learning_rate == pytest.approx(0.5 * full.learning_rate)
    assert g.eval_problems == 0  # the curriculum validates; GRPO's own eval stays off


def test_real_grpo_end_to_end(tmp_path, monkeypatch):
    """Two stages of the real GRPO trainer on a tiny shoestring GPT, real validation."""
    from shoestring.data import text
    from shoestring.run_config import build_run_config
    from shoestring.train.config import TrainJobConfig
    from shoestring.train.run import run as train

    text.run(None, tmp_path / "data", vocab_size=300, synthetic=300, quiet=True)
    tcfg = build_run_config(
        overrides=[
            f"data.path={tmp_path / 'data'}",
            "model.d_model=32",
            "model.n_layers=2",
            "model.n_heads=2",
            "model.d_ff=64",
            "model.position=rope",
            "train.seq_len=64",
            "train.batch_size=4",
            "train.max_steps=2",
            "train.eval_every=2",
            "train.save_every=2",
            "train.warmup_steps=1",
            "train.threads=1",
            "train.dtype=fp32",
        ]
    )
    base = train(TrainJobConfig.of(tcfg, out=tmp_path / "runs", name="base", quiet=True))
    stages = tmp_path / "stages.yaml"
    stages.write_text(
        "\n".join(
            [
                f"model: {base}",
                "validation: {dataset: 'synthetic:1', n: 6, max_new_tokens: 8}",
                "grpo:",
                "  num_generations: 2",
                "  per_device_train_batch_size: 4",
                "  max_completion_length: 8",
                "  max_steps: 15",  # the command line's grpo.max_steps=2 wins below
                "  dataset_size: 8",
                "  threads: 1",
                "  dtype: fp32",
                "  learning_rate: 1.0e-4",
                "  save_steps: 1",
                "stages:",
                "  - {name: one, dataset: 'synthetic:1', max_steps: 15}",
                "  - {name: two, dataset: 'synthetic:2', learning_rate: 5.0e-5}",
            ]
        )
    )
    from shoestring.cli import main

    # Ctrl-C during stage 2's second step (after its step-1 checkpoint), then --resume
    real_step = GRPOTrainer.train_step
    interrupted: list[str] = []

    def step_once_interrupted(self: Any) -> Any:
        if self.run_path.name == "02-two" and self.step == 1 and not interrupted:
            interrupted.append(self.run_path.name)
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(GRPOTrainer, "train_step", step_once_interrupted)
    out = ["--out", str(tmp_path / "out"), "--name", "p", "--set", "grpo.max_steps=2"]
    assert main(["progressive", "--stages", str(stages), *out]) == 130
    run = tmp_path / "out" / "p"
    s = read_json(run / "summary.json")
    assert s["status"] == "interrupted" and [r["label"] for r in s["stages"]] == ["01-one"]
    assert read_json(run / "stages" / "02-two" / "summary.json")["status"] == "interrupted"
    assert main(["progressive", "--resume", str(run)]) == 0
    s = read_json(run / "summary.json")
    assert s["status"] == "finished" and s["base_eval"]["n"] == 6
    assert all(r["eval"]["n"] == 6 for r in s["stages"])
    for r in s["stages"]:
        g = read_json(Path(r["run_dir"]) / "summary.json")
        assert g["kind"] == "grpo" and g["status"] == "finished" and g["steps"] == 2
        assert Path(r["run_dir"]).parent == run / "stages"
    assert [r["label"] for r in s["stages"]] == ["01-one", "02-two"]
    assert (run / "progressive.png").exists()
    # stage 2 resumed its own GRPO run from the step-1 checkpoint instead of starting over
    log = (run / "stages" / "02-two" / "log.txt").read_text()
    assert "resuming" in log and not (run / "stages" / "02-two-2").exists()


def test_cli_layers_preset_then_file_then_set(tmp_path):
    """grpo and progressive layer the same way: preset < config file < --set."""
    from shoestring.cli import build_parser
    from shoestring.rl.cli import grpo_cli_config

    f = tmp_path / "g.yaml"
    f.write_text("learning_rate: 2.0e-5\ntemperature: 0.5\n")
    argv = ["grpo", "--preset", "cpu", "--config", str(f), "--set", "temperature=0.7"]
    cfg = grpo_cli_config(build_parser().parse_args([*argv, "--steps", "3"]))
    assert cfg.learning_rate == pytest.approx(2e-5)  # the file over the preset
    assert cfg.temperature == pytest.approx(0.7)  # --set over the file
    assert cfg.num_generations == 8 and cfg.preset == "cpu" and cfg.max_steps == 3


def test_progressive_takes_its_stages_file_as_config_like_every_command():
    import argparse

    from shoestring.rl import cli

    parser = argparse.ArgumentParser()
    cli.add_cli(parser.add_subparsers())
    for flag in ("--config", "--stages"):
        args = parser.parse_args(["progressive", flag, "gsm8k_curriculum.yaml"])
        assert args.stages == "gsm8k_curriculum.yaml"


def test_summary_records_the_files_the_data_came_from(tmp_path):
    """summary.json names the absolute file each stage trains on and says the synthetic
    validation set is generated - never ``data: null``."""
    model = save_tiny_llama(tmp_path / "tiny", char_tokenizer())
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS), encoding="utf-8")
    stages = [{"name": "local", "dataset": f"gsm8k:{data}", "max_steps": 1}]
    cfg = _cfg(model, stages=stages, validation={"dataset": "synthetic:1"})
    evaluator = ScriptedEvaluator({"00-base": 50, "01-local": 50})
    run = _run(cfg, out=tmp_path, name="curr", trainer=BreakingTrainer(), evaluator=evaluator)
    s = read_json(run / "summary.json")
    assert s["data"]["stages"]["local"]["path"] == str(data.resolve())
    validation = s["data"]["validation"]
    assert validation["dataset"] == "synthetic:1" and validation["split"] == "test"
    assert validation["path"] is None and validation["generated"]


def test_report_to_tensorboard_logs_the_curriculum_and_reaches_every_stage(tmp_path):
    """report_to: the evals and stage verdicts of metrics.jsonl as TensorBoard scalars (read
    back with tensorboard's own reader); each stage's GRPO config gets the same trackers."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = save_tiny_llama(tmp_path / "tiny", char_tokenizer())
    stages = [{"name": "one", "dataset": "synthetic:1", "max_steps": 1}]
    cfg = _cfg(model, stages=stages, report_to="tensorboard")
    assert stage_grpo_config(cfg, stages[0], model).report_to == ["tensorboard"]
    evaluator = ScriptedEvaluator({"00-base": 40, "01-one": 60})
    run = _run(cfg, out=tmp_path, name="tb", trainer=BreakingTrainer(), evaluator=evaluator)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    accuracy = [(e.step, e.value) for e in events.Scalars("eval/accuracy")]
    assert accuracy == [(0, pytest.approx(0.4)), (1, pytest.approx(0.6))]
    (stage,) = events.Scalars("stage/learning_rate")  # the verdict record of attempt 1
    assert stage.step == 1 and stage.value == pytest.approx(1e-4)
