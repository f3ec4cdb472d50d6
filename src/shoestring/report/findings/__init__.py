"""Findings written by rules, each citing the numbers behind it.

Why rules: the hand-written comparisons this project grew from called a variant "extreme fast"
that measured slowest, and called a 2-problem difference out of 50 a degradation. Each rule
checks one such claim against the run directories and says what the numbers say; one module
per rule family:

- ``naming`` (:mod:`.naming`): a run named fast/optimized/accelerated/quick/turbo/... that is
  not the fastest by measured throughput or wall time among the runs it is compared with;
- ``status`` (:mod:`.status`): a run that did not finish (running, failed, interrupted, pruned),
  ran on another device or dtype than asked, backed off its batch after an OOM, or shared a
  busy host;
- ``comparable`` (:mod:`.comparability`): runs on different data, tokenizers, context lengths
  or hosts;
- ``protocol`` (:mod:`.protocol`): accuracies scored under different scoring protocols;
- ``noise``: a difference smaller than its uncertainty - benchmark accuracies
  (:mod:`.noise_bench`: McNemar's exact test on the same problems, else overlapping Wilson
  intervals), validation losses, studies and hybrid speed-ups (:mod:`.noise_loss`: Welch's
  t-test over seeds, or the seed spread measured elsewhere), GRPO and progressive accuracies
  (:mod:`.noise_rl`).
"""

from __future__ import annotations

from shoestring.report.blocks import Finding
from shoestring.report.findings.common import SEVERITY_ORDER
from shoestring.report.findings.comparability import comparable_findings
from shoestring.report.findings.naming import naming_findings, speed_items
from shoestring.report.findings.noise_bench import bench_noise_findings
from shoestring.report.findings.noise_loss import (
    hybrid_benchmark_findings,
    study_noise_findings,
    val_loss_noise_findings,
)
from shoestring.report.findings.noise_rl import rl_noise_findings
from shoestring.report.findings.protocol import protocol_findings
from shoestring.report.findings.status import status_findings
from shoestring.report.kinds import RunInfo
from shoestring.report.measures import bench_models

__all__ = ["all_findings"]


def all_findings(runs: list[RunInfo]) -> list[Finding]:
    """Every rule over every run, most severe first (rule order kept within a severity)."""
    out: list[Finding] = []
    out += status_findings(runs)
    for items, group in speed_items(runs):
        out += naming_findings(items, group)
    out += comparable_findings(runs)
    out += protocol_findings(runs)
    out += bench_noise_findings(bench_models(runs))
    out += val_loss_noise_findings(runs)
    out += rl_noise_findings(runs)
    out += study_noise_findings(runs)
    out += hybrid_benchmark_findings(runs)
    return sorted(out, key=lambda f: SEVERITY_ORDER[f.severity])
