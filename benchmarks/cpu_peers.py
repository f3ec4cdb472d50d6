"""shoestring's generation engine against the engines a CPU user would pick instead: HF
``generate`` batched, vLLM's CPU backend and llama.cpp - the same model, the same prompt token
ids and the same forced answer lengths, each engine in its own process (and, for vLLM and
llama.cpp, its own Python environment), start-up timed apart from generation.

Why one process per engine: vLLM and llama.cpp bring their own threads, allocators and (for
vLLM) its own torch build and engine process; sharing one process would measure their
interference, not the engines. Why forced lengths: the model has random weights (nothing is
downloaded), which never choose EOS, so every engine is told how many tokens each answer has:
shoestring and HF through a logits processor that forces EOS as token number ``n`` (the rule of
``generate_vs_hf.py``), vLLM with ``max_tokens=n, ignore_eos=True``, llama.cpp by stopping at
``n``. Each gives ``n`` tokens per answer; identity with shoestring is checked on the first
``n - 1`` (the forced EOS is not a model choice). Every engine is loaded as a server keeps it:
vLLM compiles and packs at start-up, llama.cpp maps its file, and shoestring keeps one engine
per batch size whose prepacked weights (``EngineOptions.keep_packed``) are made by its warm-up
call - all of it start-up, reported apart.

The model is Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14/2 heads, intermediate 4864,
vocabulary 151,936, tied), Qwen2 architecture, random weights (seed 0), saved once as a
Hugging Face directory in fp32 (what HF, shoestring and vLLM load) and as GGUF files in f32,
f16 and bf16 (what llama.cpp loads; written here with the ``gguf`` package under llama.cpp's
``qwen2`` names - Qwen2 uses NeoX RoPE, so no row permutation). ``prepare --bf16-values``
rounds the random weights to bf16 values first, as a bf16 checkpoint (Qwen2.5's) is: every
engine then runs the same weights exactly - fp32 loads them losslessly, and so does the bf16
GGUF - where the f16 file rounds them.

Three steps, the first and last in shoestring's environment:

    python benchmarks/cpu_peers.py prepare --dir /tmp/cpu_peers
    python benchmarks/cpu_peers.py compare --dir /tmp/cpu_peers \\
        --vllm-python /tmp/peers/vllm/bin/python --llama-python /tmp/peers/llama/bin/python

``compare`` starts ``cpu_peers.py run --engine E`` once per engine - a process that loads the
engine once (start-up reported, not counted) and stays loaded - and then lets the engines take
turns on each workload, ``--rounds`` times (3 by default), in an order that rotates every round:
a shared host's speed drifts with its neighbours' load over minutes, so a ratio is taken between
runs close in time, and printed as its median over rounds with the range. It prints tokens/s,
shoestring's ratio to each engine and identical answers. Engines whose Python is not given are
left out, and the output says so. Every engine stays in memory for the whole comparison (each
its weights, vLLM its 4 GiB KV cache besides): ``--engines`` picks fewer on a smaller host.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKLOADS = ("fixed-b1", "fixed-b16", "variable-b16")
# Asked for by name only: fixed-b16's prompts with one token each, i.e. the prefill alone
# (the time to the first token), to split an engine's time into prefill and decoding
PREFILL = "prefill-b16"
ENGINES = ("shoestring", "hf", "vllm", "llama.cpp-f16", "llama.cpp-f32", "llama.cpp-bf16")
LLAMA_CPP = tuple(e for e in ENGINES if e.startswith("llama.cpp"))


# ----------------------------------------------------------------------------- prepare


def prepare(args: argparse.Namespace) -> int:
    """Model directory, GGUF files and the workloads' prompt ids and answer lengths."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(HERE))
    import torch

    from bench_throughput import build_tokenizer, load_questions  # sibling scripts
    from generate_vs_hf import answer_lengths, build_model, weights_note

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    shape_keys = ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab")
    shape_of = {k: getattr(args, k) for k in shape_keys}
    shape = argparse.Namespace(**shape_of, dtype="fp32", bf16_values=args.bf16_values)
    tok = build_tokenizer(min(8000, args.vocab))
    eos = int(tok.eos_token_id)
    model = build_model(shape, eos)
    model_dir = out / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    questions, source = load_questions(args.variable_prompts)
    prompts = [tok(f"Question: {q}\nAnswer:")["input_ids"] for q in questions]
    work = {
        "fixed-b1": {"batch": 1, "prompts": prompts[: args.b1_prompts]},
        "fixed-b16": {"batch": 16, "prompts": prompts[: args.fixed_prompts]},
        "variable-b16": {"batch": 16, "prompts": prompts},
    }
    for name, w in work.items():
        n = len(w["prompts"])
        if name.startswith("fixed"):
            w["lengths"] = [args.fixed_tokens] * n
        else:
            w["lengths"] = answer_lengths(n, 0, args.min_answer, args.max_answer)
    meta = {"eos": eos, "source": source, "shape": shape_of, "weights": weights_note(shape)}
    meta["workloads"] = work
    (out / "workloads.json").write_text(json.dumps(meta), encoding="utf-8")
    for engine in LLAMA_CPP:
        dtype = engine.split("-")[-1]
        write_qwen2_gguf(model, model_dir, out / f"model-{dtype}.gguf", dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"prepared {out}: {n_params / 1e6:.0f}M parameters ({weights_note(shape)}), prompts "
        f"from {source}"
    )
    del torch
    return 0


def write_qwen2_gguf(model: Any, model_dir: Path, path: Path, dtype: str) -> None:
    """The Hugging Face Qwen2 model as one GGUF file under llama.cpp's ``qwen2`` names."""
    import gguf
    import numpy as np

    from shoestring.models.export_gguf import add_gguf_shape, add_gguf_tokenizer

    c = model.config
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("qwen2.5-0.5b-shape-random")
    add_gguf_shape(
        w,
        context=c.max_position_embeddings,
        hidden=c.hidden_size,
        layers=c.num_hidden_layers,
        ffn=c.intermediate_size,
        heads=c.num_attention_heads,
        kv_heads=c.num_key_value_heads,
        norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_parameters["rope_theta"],
    )
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    }[dtype]
    w.add_file_type(int(ftype))
    add_gguf_tokenizer(w, gguf, model_dir, c.vocab_size)
    names = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }

    def add(name: str, t: Any) -> None:
        a = t.detach().float().numpy()
        if a.ndim == 1 or dtype == "f32":  # llama.cpp keeps 1-D tensors (norms, biases) in f32
            w.add_tensor(name, a)
        elif dtype == "f16":
            w.add_tensor(name, a.astype(np.float16))
        else:  # bf16: gguf's rounding to nearest (exact for weights that are bf16 values)
            bf16 = gguf.GGMLQuantizationType.BF16
            w.add_tensor(name, gguf.quants.quantize(a, bf16), raw_dtype=bf16)

    state = model.state_dict()
    add("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        for ours, theirs in names.items():
            add(f"blk.{i}.{theirs}", state[f"model.layers.{i}.{ours}"])
    add("output_norm.weight", state["model.norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


# ----------------------------------------------------------------------------- engines

#: the most sequences any workload decodes together (each engine is sized for it once)
MAX_BATCH = 16


class Engine:
    """One engine, loaded once (start-up timed), generating greedy answers of forced lengths.

    ``generate(prompts, lengths, batch)`` returns each prompt's answer token ids; batch 1 is
    the prompts one after another, batch 16 up to 16 sequences decoded together.
    """

    def __init__(self, name: str, d: Path, eos: int, threads: int) -> None:
        self.name, self.eos, self.threads = name, eos, threads
        t0 = time.perf_counter()
        if name in ("shoestring", "hf"):
            self._load_torch(d)
        elif name == "vllm":
            self._load_vllm(d)
        else:
            self._load_llama_cpp(d / f"model-{name.split('-')[-1]}.gguf")
        self.startup_s = time.perf_counter() - t0

    # -- shoestring and HF generate: this (shoestring's) environment, fp32
    def _load_torch(self, d: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        sys.path.insert(0, str(HERE))
        import torch
        from transformers import AutoModelForCausalLM

        from generate_vs_hf import run_hf, run_shoestring
        from shoestring.engine import Engine, EngineOptions

        torch.set_num_threads(self.threads)
        self.model = AutoModelForCausalLM.from_pretrained(d / "model", dtype=torch.float32)
        self.model.eval()
        self.engines: dict[int, Any] = {}
        if self.name == "hf":
            self.runner = run_hf
        else:  # loaded once per batch size, as a server keeps it: its packed weights kept
            self.engines = {
                b: Engine(self.model, None, EngineOptions(batch_size=b, keep_packed=True))
                for b in (1, MAX_BATCH)
            }
            self.runner = lambda m, p, n, b, eos: run_shoestring(m, p, n, b, eos, self.engines[b])
        for b in self.engines or (2,):  # warm-up (for shoestring: packs each engine's weights)
            self.runner(self.model, [[1, 2, 3], [4, 5]], [4, 3], b, self.eos)

    # -- vLLM's CPU backend
    def _load_vllm(self, d: Path) -> None:
        """fp32 (bf16 without fast bf16 units falls back and is slower), both cores (no core
        reserved for the scheduler), at most 16 sequences at once, a 4 GiB KV cache."""
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        self.llm = LLM(
            model=str(d / "model"),
            dtype="float32",
            max_num_seqs=MAX_BATCH,
            max_model_len=1024,
            skip_tokenizer_init=True,
            seed=0,
        )
        self.params = lambda n: SamplingParams(
            temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False
        )
        self.tokens_prompt = TokensPrompt
        self.llm.generate(
            [TokensPrompt(prompt_token_ids=[1, 2, 3])], self.params(4), use_tqdm=False
        )

    def _vllm(self, prompts: list, lengths: list) -> list[list[int]]:
        reqs = [self.tokens_prompt(prompt_token_ids=p) for p in prompts]
        res = self.llm.generate(reqs, [self.params(n) for n in lengths], use_tqdm=False)
        return [list(r.outputs[0].token_ids) for r in res]

    # -- llama.cpp through llama-cpp-python's C API
    def _load_llama_cpp(self, path: Path) -> None:
        import llama_cpp as L

        L.llama_backend_init()
        self.L = L
        self.lm = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        cp = L.llama_context_default_params()
        cp.n_ctx = 1024 * MAX_BATCH  # 1,024 positions per sequence, as vLLM's max_model_len
        cp.n_batch = cp.n_ubatch = 2048
        cp.n_seq_max = MAX_BATCH
        cp.n_threads = cp.n_threads_batch = self.threads
        self.ctx = L.llama_init_from_model(self.lm, cp)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.lm))
        self.mem = L.llama_get_memory(self.ctx)
        self.lb = L.llama_batch_init(cp.n_batch, 0, MAX_BATCH)
        self._llama_cpp([[1, 2, 3]], [4], 1)  # warm-up

    def _llama_cpp(self, prompts: list, lengths: list, batch: int) -> list[list[int]]:
        """Batched the way llama.cpp's ``parallel`` example batches: up to ``batch`` sequences
        share one ``llama_decode`` per step, a finished sequence's cache is dropped and its
        slot refilled from the queue (prompt and running tokens in the same batch); greedy."""
        import ctypes

        import numpy as np

        L, lb = self.L, self.lb

        def add(tok: int, pos: int, seq: int, logits: bool) -> int:
            i = lb.n_tokens
            lb.token[i], lb.pos[i], lb.n_seq_id[i] = tok, pos, 1
            lb.seq_id[i][0], lb.logits[i] = seq, int(logits)
            lb.n_tokens += 1
            return i

        outs: list[list[int]] = [[] for _ in prompts]
        queue = list(range(len(prompts)))
        slots: dict[int, dict[str, int]] = {}  # seq id -> request, next position, logits row
        while queue or slots:
            lb.n_tokens = 0
            for seq in range(batch):  # free slots take the next prompts (logits at their end)
                if seq not in slots and queue:
                    r = queue.pop(0)
                    for j, tok in enumerate(prompts[r]):
                        row = add(tok, j, seq, j == len(prompts[r]) - 1)
                    slots[seq] = {"req": r, "pos": len(prompts[r]), "row": row}
            for seq, st in slots.items():  # one new token for every sequence already answering
                if outs[st["req"]]:
                    st["row"] = add(outs[st["req"]][-1], st["pos"], seq, True)
                    st["pos"] += 1
            if L.llama_decode(self.ctx, lb) != 0:
                raise RuntimeError("llama_decode failed")
            for seq in list(slots):
                st = slots[seq]
                ptr = ctypes.cast(
                    L.llama_get_logits_ith(self.ctx, st["row"]), ctypes.POINTER(ctypes.c_float)
                )
                outs[st["req"]].append(int(np.ctypeslib.as_array(ptr, (self.n_vocab,)).argmax()))
                if len(outs[st["req"]]) == lengths[st["req"]]:
                    L.llama_memory_seq_rm(self.mem, seq, -1, -1)  # the slot's cache, freed
                    del slots[seq]
        return outs

    def generate(self, prompts: list, lengths: list, batch: int) -> list[list[int]]:
        if self.name in ("shoestring", "hf"):
            return self.runner(self.model, prompts, lengths, batch, self.eos)
        if self.name == "vllm":
            if batch == 1:  # one request at a time: what batch 1 means for a server
                return [self._vllm([p], [n])[0] for p, n in zip(prompts, lengths, strict=True)]
            return self._vllm(prompts, lengths)
        return self._llama_cpp(prompts, lengths, batch)


def workload(meta: dict[str, Any], name: str) -> dict[str, Any]:
    """A workload of ``workloads.json``, or the prefill-only one derived from fixed-b16."""
    if name == PREFILL:
        base = meta["workloads"]["fixed-b16"]
        return {**base, "lengths": [1] * len(base["prompts"])}
    return meta["workloads"][name]


def run(args: argparse.Namespace) -> int:
    """One engine, in this process (loaded once, as a user's server would be): the workloads of
    ``--workload``, or else each workload name read from stdin, one per line, until stdin ends
    (how ``compare`` alternates the engines); prints one ``RESULT`` JSON line per workload."""
    d = Path(args.dir)
    meta = json.loads((d / "workloads.json").read_text(encoding="utf-8"))
    engine = Engine(args.engine, d, meta["eos"], args.threads)
    print("READY " + json.dumps({"startup_s": engine.startup_s}), flush=True)
    names = args.workload.split(",") if args.workload else (x.strip() for x in sys.stdin)
    for name in names:
        w = workload(meta, name)
        t0 = time.perf_counter()
        outs = engine.generate(w["prompts"], w["lengths"], w["batch"])
        secs = time.perf_counter() - t0
        rec = {"engine": args.engine, "workload": name, "startup_s": engine.startup_s}
        rec.update(secs=secs, tokens=sum(w["lengths"]), outs=outs)
        rec.update(prompt_tokens=sum(len(x) for x in w["prompts"]))
        print("RESULT " + json.dumps(rec), flush=True)
    return 0


# ----------------------------------------------------------------------------- compare


class EngineProcess:
    """``cpu_peers.py run`` for one engine in its own environment, kept loaded between
    workloads: ``ask(workload)`` sends it one and waits for its result (``None`` if the
    process died; ``failure`` then says why, from the tail of its log)."""

    def __init__(self, name: str, python: str, args: argparse.Namespace, env: dict) -> None:
        self.name, self.failure = name, ""
        # the engine's log lives as long as its process: close() ends both
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"cpu_peers_{name}_")  # noqa: SIM115
        cmd = [python, __file__, "run", "--dir", args.dir, "--engine", name]
        cmd += ["--threads", str(args.threads)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )
        ready = self._line("READY ")
        self.startup_s = None if ready is None else ready["startup_s"]

    def _line(self, tag: str) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the engines' own prints are skipped
            if line.startswith(tag):
                return json.loads(line[len(tag) :])
        self.log.seek(0)
        tail = self.log.read().strip().splitlines()[-3:]
        self.failure = f"exit {self.proc.wait()}: {' | '.join(tail)}"
        return None

    def ask(self, work: str) -> dict[str, Any] | None:
        if self.failure:
            return None
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # died since its last answer: _line says why
            self.proc.stdin.write(work + "\n")
            self.proc.stdin.flush()
        return self._line("RESULT ")

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        self.proc.wait()
        self.log.close()


def rate_of(rec: dict[str, Any]) -> float:
    """Tokens per second; for the prefill alone, prompt tokens through the model per second."""
    return (rec["prompt_tokens"] if rec["workload"] == PREFILL else rec["tokens"]) / rec["secs"]


def spread(values: list[float], fmt: str) -> str:
    """The median, with the smallest and largest value where there is more than one."""
    mid = format(statistics.median(values), fmt)
    if len(values) == 1:
        return mid
    lo, hi = (format(v, "." + fmt.split(".")[-1]) for v in (min(values), max(values)))
    return f"{mid} [{lo}-{hi}]"


def compare(args: argparse.Namespace) -> int:
    """Every engine on every workload, ``--rounds`` times, alternating: each engine is a process
    loaded once (start-up timed apart) and the engines take turns on each workload, in an order
    that rotates every round, so that every ratio compares runs minutes apart at most, on a
    host whose speed drifts with its neighbours' load. Prints each engine's rate (median over
    rounds, with the range) and shoestring's ratio to each engine, round by round."""
    pythons = {"shoestring": sys.executable, "hf": sys.executable}
    if args.vllm_python:
        pythons["vllm"] = args.vllm_python
    if args.llama_python:
        pythons |= dict.fromkeys(LLAMA_CPP, args.llama_python)
    asked = [e for e in args.engines.split(",") if e]
    engines = [e for e in asked if e in pythons]
    workloads = [w for w in args.workloads.split(",") if w]
    from shoestring.host import describe_host  # this (shoestring's) environment

    print(describe_host(), flush=True)  # the host class every figure belongs to
    meta = json.loads((Path(args.dir) / "workloads.json").read_text(encoding="utf-8"))
    print(f"weights: {meta.get('weights', 'random init')}", flush=True)
    print(
        f"threads: {args.threads} per engine; workloads: {', '.join(workloads)}; "
        f"{args.rounds} round(s), the engines taking turns",
        flush=True,
    )
    if len(engines) < len(asked):
        left = [e for e in asked if e not in pythons]
        print(f"left out (no --vllm-python / --llama-python given): {', '.join(left)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    procs: dict[str, EngineProcess] = {}
    for engine in engines:  # one at a time: start-ups do not share the cores
        procs[engine] = proc = EngineProcess(engine, pythons[engine], args, env)
        if proc.startup_s is not None:
            print(f"  {engine:14s} loaded: start-up {proc.startup_s:.1f} s, not counted")
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        for work in workloads:
            turn = engines[r % len(engines) :] + engines[: r % len(engines)]
            for engine in turn:
                time.sleep(args.pause)  # the last engine's threads settle before the next runs
                rec = procs[engine].ask(work)
                if rec is None:
                    continue
                results.setdefault((work, engine), []).append(rec)
                unit = "prompt tok/s" if work == PREFILL else "tok/s"
                print(
                    f"  round {r + 1}  {engine:14s} {work:13s} {rate_of(rec):7.1f} {unit:12s} "
                    f"({rec['secs']:6.1f} s)",
                    flush=True,
                )
    for engine, proc in procs.items():
        proc.close()
        if proc.failure:
            print(f"  {engine:14s} FAILED ({proc.failure})")
    print("\neach engine's rate, median [min-max] over rounds")
    for work in workloads:
        for engine in engines:
            if got := results.get((work, engine)):
                unit = "prompt tok/s" if work == PREFILL else "tok/s"
                rates = [rate_of(x) for x in got]
                print(f"  {work:13s} {engine:14s} {spread(rates, '7.1f')} {unit}")
    print(
        "\nshoestring against each engine (its time / shoestring's in the same round: "
        ">1 = shoestring faster), median [min-max] over rounds"
    )
    for work in workloads:
        ours = results.get((work, "shoestring"), [])
        for engine in engines:
            theirs = results.get((work, engine), [])
            if engine == "shoestring" or not ours or not theirs:
                continue
            # round by round; an engine that failed has fewer rounds, all of them first
            pairs = list(zip(ours, theirs, strict=False))
            ratios = [b["secs"] / a["secs"] for a, b in pairs]
            # the last token is the forced EOS for shoestring and HF, a free choice for the
            # engines told to ignore EOS: identity is judged on the tokens before it
            first, rec = pairs[0]
            same = sum(a[:-1] == b[:-1] for a, b in zip(first["outs"], rec["outs"], strict=True))
            judged = (
                "(one token: nothing to compare)"
                if work == PREFILL
                else f"identical answers {same}/{len(first['outs'])}"
            )
            changed = [
                e
                for e, got in (("shoestring", ours), (engine, theirs))
                if any(x["outs"] != got[0]["outs"] for x in got[1:])
            ]
            if changed:
                judged += f"; answers changed between rounds: {', '.join(changed)}"
            print(f"  {work:13s} vs {engine:14s} {spread(ratios, '5.2f')}x   {judged}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    pp = sub.add_parser("prepare", help="write the model, GGUF files and workloads")
    pp.add_argument("--dir", required=True)
    pp.add_argument("--variable-prompts", type=int, default=32)
    pp.add_argument("--fixed-prompts", type=int, default=16)
    pp.add_argument("--b1-prompts", type=int, default=4)
    pp.add_argument("--fixed-tokens", type=int, default=64)
    pp.add_argument("--min-answer", type=int, default=50)
    pp.add_argument("--max-answer", type=int, default=300)
    if argv[:1] == ["prepare"]:  # shoestring's environment only (the peers' have no torch)
        sys.path.insert(0, str(HERE))
        from generate_vs_hf import QWEN25_05B, add_bf16_values_option  # sibling scripts
        from grpo_vs_trl import add_shape_options

        add_shape_options(pp, **QWEN25_05B)  # Qwen2.5-0.5B's shape unless told otherwise
        add_bf16_values_option(pp)
    pr = sub.add_parser("run", help="one engine on one workload (in the engine's environment)")
    pr.add_argument("--dir", required=True)
    pr.add_argument("--engine", choices=ENGINES, required=True)
    pr.add_argument(
        "--workload",
        help=f"comma-separated, of {(*WORKLOADS, PREFILL)}; without it, one name per stdin line",
    )
    pr.add_argument("--threads", type=int, default=2)
    pc = sub.add_parser("compare", help="every engine on every workload, a process each")
    pc.add_argument("--dir", required=True)
    pc.add_argument("--engines", default=",".join(ENGINES))
    pc.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated; {PREFILL} (the prefill alone, by name only) splits the time",
    )
    pc.add_argument("--threads", type=int, default=2)
    pc.add_argument("--rounds", type=int, default=3, help="turns each engine takes per workload")
    pc.add_argument("--pause", type=float, default=1.0, help="seconds between two engines' turns")
    pc.add_argument("--vllm-python", help="python of an environment with vllm-cpu installed")
    pc.add_argument("--llama-python", help="python of an environment with llama-cpp-python")
    args = p.parse_args(argv)
    return {"prepare": prepare, "run": run, "compare": compare}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
