"""shoestring.distributed: the split that keeps groups whole, the gather that restores the
order, the reductions, and the failure policy (a dead or stuck rank ends the job, no hang).

The split is checked in one process (every rank's positions are computable anywhere); the
collectives under a real two-rank gloo job started by torchrun.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from shoestring.distributed import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    DistInfo,
    refuse_distributed,
    shard,
    shard_positions,
    timeout_seconds,
)
from shoestring.errors import UserError
from test_distributed_launch import free_port, run_launchers, torchrun_command


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize(("n_groups", "group_size", "world"), [(5, 3, 2), (7, 1, 3), (1, 4, 2)])
def test_shards_cover_every_item_once_and_keep_groups_whole(
    strided: bool, n_groups: int, group_size: int, world: int
) -> None:
    n = n_groups * group_size
    owners: dict[int, int] = {}
    for rank in range(world):
        for pos in shard_positions(n, DistInfo(world, rank), group_size, strided):
            assert pos not in owners, f"item {pos} owned twice"
            owners[pos] = rank
    assert sorted(owners) == list(range(n))
    for g in range(n_groups):  # every member of a group on the same rank
        assert len({owners[g * group_size + k] for k in range(group_size)}) == 1


def test_contiguous_and_strided_layouts() -> None:
    items = list("abcdefgh")
    assert shard(items, DistInfo(2, 0), group_size=2) == list("abcd")
    assert shard(items, DistInfo(2, 1), group_size=2) == list("efgh")
    assert shard(items, DistInfo(2, 1), group_size=2, strided=True) == list("cdgh")
    assert shard(items, DistInfo()) == items  # one process: everything
    with pytest.raises(ValueError, match="groups of 3"):
        shard(items, DistInfo(2, 0), group_size=3)


def test_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert timeout_seconds() == DEFAULT_TIMEOUT_S
    monkeypatch.setenv(TIMEOUT_ENV, "42")
    assert timeout_seconds() == 42
    monkeypatch.setenv(TIMEOUT_ENV, "ten")
    with pytest.raises(UserError, match=f"{TIMEOUT_ENV}='ten' is not a positive"):
        timeout_seconds()


def test_refusal_names_the_command_only_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    refuse_distributed("train.trainer=hybrid")  # one process: nothing to refuse
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="train.trainer=hybrid runs in a single process"):
        refuse_distributed("train.trainer=hybrid")


_COLLECTIVES = """
import json, sys
import torch
from shoestring.distributed import (
    all_gather, all_mean, all_sum, all_sum_grads, broadcast_from_main, decided_by_main,
    gather_ordered, init_distributed, leave_group, shard, wait_for_all,
)
from shoestring.errors import UserError
info = init_distributed("cpu")
items = [f"item{i}" for i in range(10)]  # 5 groups of 2: 3 on rank 0, 2 on rank 1
out = {}
for strided in (False, True):
    mine = shard(items, info, group_size=2, strided=strided)
    made = [s.upper() for s in mine]
    out[f"gathered_strided_{strided}"] = gather_ordered(made, len(items), info, 2, strided)
rows = torch.arange(3 - info.rank, dtype=torch.float32) + 10 * info.rank  # 3 rows, then 2
out["all_gather"] = all_gather(rows, info).tolist()
out["all_sum"] = all_sum(torch.tensor([1.0, info.rank]), info).tolist()
out["all_mean"] = all_mean(float(info.rank), info)
out["broadcast"] = broadcast_from_main(f"from rank {info.rank}", info)
out["world_size"] = info.world_size
# gradients summed over ranks, in buckets; a rank that ran no backward adds zeros
params = [torch.nn.Parameter(torch.zeros(n)) for n in (3, 2)]
params[0].grad = torch.full((3,), float(info.rank + 1))
if info.rank == 0:
    params[1].grad = torch.tensor([5.0, 7.0])
all_sum_grads(params, info)
out["grads"] = [p.grad.tolist() for p in params]
# rank 0 decides (or refuses) for every rank
out["decided"] = decided_by_main(lambda: f"rank {info.rank}", info)
def refuse():
    raise UserError(f"refused by rank {info.rank}")
try:
    decided_by_main(refuse, info)
except UserError as exc:
    out["refusal"] = str(exc)
with open(sys.argv[1] + f".{info.rank}.json", "w") as f:
    json.dump(out, f)
wait_for_all(info)
leave_group(info)
"""


def test_collectives_on_two_gloo_ranks(tmp_path: Path) -> None:
    script = tmp_path / "collectives.py"
    script.write_text(_COLLECTIVES)
    result = tmp_path / "result"
    cmd = torchrun_command(
        "--nproc_per_node=2", f"--master_port={free_port()}", str(script), str(result)
    )
    log = tmp_path / "log.txt"
    assert run_launchers([cmd], [log]) == [0], log.read_text()[-3000:]
    expected = [f"ITEM{i}" for i in range(10)]
    for rank in (0, 1):
        got = json.loads(Path(f"{result}.{rank}.json").read_text())
        assert got["gathered_strided_False"] == expected
        assert got["gathered_strided_True"] == expected
        assert got["all_gather"] == [0.0, 1.0, 2.0, 10.0, 11.0]
        assert got["all_sum"] == [2.0, 1.0]
        assert got["all_mean"] == 0.5
        assert got["broadcast"] == "from rank 0"
        assert got["world_size"] == 2
        assert got["grads"] == [[3.0, 3.0, 3.0], [5.0, 7.0]]
        assert got["decided"] == "rank 0" and got["refusal"] == "refused by rank 0"


_FAILING = """
import os, sys, time
import torch
from shoestring.distributed import all_sum, init_distributed
info = init_distributed("cpu")
all_sum(torch.ones(1), info)  # both ranks are up
if info.rank == 1:
    if sys.argv[1] == "dies":
        sys.exit(3)
    time.sleep(600)  # alive but stuck: never joins the next collective
all_sum(torch.ones(1), info)  # rank 0 waits here for a peer that is gone or stuck
print("rank 0 passed a collective without its peer", flush=True)
"""


@pytest.mark.parametrize("how", ["dies", "stuck"])
def test_a_dead_or_stuck_rank_ends_the_whole_job(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail fast: the launcher exits non-zero well within the test's limit, with no rank
    left running (a stuck peer is cut off by SHOESTRING_DIST_TIMEOUT, here 10 s)."""
    script = tmp_path / "failing.py"
    script.write_text(textwrap.dedent(_FAILING))
    cmd = torchrun_command("--nproc_per_node=2", f"--master_port={free_port()}", str(script), how)
    log = tmp_path / "log.txt"
    monkeypatch.setenv(TIMEOUT_ENV, "10")
    codes = run_launchers([cmd], [log], timeout=120)
    text = log.read_text()
    assert codes[0] != 0, text[-3000:]
    assert "passed a collective without its peer" not in text
    if how == "stuck":  # cut off by our timeout, not torch's 30 minutes
        assert "Timed out waiting 10000ms" in text, text[-3000:]


def test_a_command_that_cannot_split_its_work_refuses_several_ranks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Under torchrun with 2 ranks, a single-process command stops in one line before it
    starts (not two copies racing on one directory); one rank is a single process."""
    from shoestring.cli import main as cli_main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli_main(["compare", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "torchrun started 2" in err[0]
        and "train, grpo, progressive, bench, generate" in err[0]
    )
    assert not (tmp_path / "r").exists()


def test_a_peer_rank_failure_is_one_line_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """gloo's 'Connection closed by peer' on a surviving rank becomes one line that says what
    happened and that the run resumes; in a single process the same text is not ours."""
    from shoestring.failures import failure_message

    exc = RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]")
    monkeypatch.setenv("WORLD_SIZE", "2")
    msg = failure_message(exc)
    assert msg is not None and "another rank" in msg and "\n" not in msg
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert failure_message(exc) is None
