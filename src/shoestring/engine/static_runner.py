"""One replayable decode step over a fixed-shape batch: :class:`StaticRunner` holds every tensor
the step reads or writes (the :class:`~.static_cache.StaticKVCache`, the last tokens, their
positions, the attention mask, pre-drawn random numbers, the output tokens) and captures the
step once, as a CUDA graph on a GPU.

Why: on a GPU a small model's decode step is bound by kernel launches and Python, not by the
arithmetic - hundreds of small kernels per token, each launched from Python. A captured graph
launches them all at once. That needs a step with no host value in it: the token to write, the
cache column, the positions and the step count are device tensors the step advances itself;
the next token is chosen on the device (greedy, or an exact inverse-CDF sample from a random
number computed for every row and step in advance, :func:`~.sampling.stream_uniforms` of the
row's stream key and the step), and the step never calls ``.item()``.

A runner belongs to one model and one shape (row bucket, cache width, sampling settings); its
model keeps a few in a :class:`StaticEngineState` so later calls replay the graph already
captured, and a new bucket captures a new one. On a CPU (or with graphs off) "capture" is the
identity: the same step runs eagerly, which is how the tests check it.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from shoestring.engine.sampling import filtered_logits, stream_uniforms
from shoestring.engine.static_cache import StaticKVCache
from shoestring.util.memory import is_oom_error

__all__ = [
    "KEEP_BYTES",
    "MAX_RUNNERS",
    "Capture",
    "RunnerKey",
    "StaticEngineState",
    "StaticRunner",
    "cuda_graph_capture",
    "eager_capture",
    "engine_state",
    "sample_with_uniform",
]

# A capture turns the step into something that replays it (a CUDA graph's ``replay``).
Capture = Callable[[Callable[[], None]], Callable[[], None]]
# Runners (each with its cache buffers and graph) a model keeps; the least recently used goes.
MAX_RUNNERS = 6
# Bytes of static buffers a model keeps between calls beyond its most recent runner: a large
# evaluation batch's cache must not sit in GPU memory through the training steps after it.
KEEP_BYTES = 1 << 30
# Eager runs of the step on a side stream before capture (lets cuBLAS/SDPA pick kernels and
# allocate their workspaces outside the graph), as the PyTorch CUDA-graph recipe does.
CAPTURE_WARMUP = 2


def eager_capture(step: Callable[[], None]) -> Callable[[], None]:
    """No capture: the step runs as Python each time (CPU, or ``cuda_graphs`` off)."""
    return step


def cuda_graph_capture(step: Callable[[], None]) -> Callable[[], None]:
    """Capture ``step`` as a ``torch.cuda.CUDAGraph`` and return its ``replay``.

    ``thread_local`` capture mode, so the system monitor's thread may still query memory
    while this thread captures.
    """
    stream = torch.cuda.Stream()  # warm-up off the default stream, as capture requires
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(CAPTURE_WARMUP):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        step()
    return graph.replay


def sample_with_uniform(logits: torch.Tensor, cfg: Any, u: torch.Tensor) -> torch.Tensor:
    """A sample per row after temperature, top-k and top-p (the order and rules of
    :func:`shoestring.engine.sampling.choose_next_tokens`), by inverting the row's cumulative
    distribution (float64) at ``u`` [B] in [0, 1).

    The random numbers come in as a tensor because a captured step may not draw from a host
    generator (and a row's numbers are its own: :func:`~.sampling.stream_uniforms`); the
    inversion is exact and never returns a token of probability zero.
    """
    vocab = logits.shape[-1]
    logits = filtered_logits(logits, cfg)
    probs = logits.softmax(dim=-1)
    cdf = probs.to(torch.float64).cumsum(dim=-1)  # [B, V]; float64 so the tail sums stay exact
    # u scaled by the row's total (cdf[-1] may be a hair off 1); right=True skips zero-width
    # entries, so a token of probability zero is never hit: [B, 1] token ids
    idx = torch.searchsorted(cdf, u[:, None].to(torch.float64) * cdf[:, -1:], right=True)
    # the last token with p > 0 (argmax of the flipped row finds the first from the end):
    # rounding can put u * total past the cdf's last step, where searchsorted returns V
    last_positive = vocab - 1 - (probs.flip(-1) > 0).to(torch.int8).argmax(-1, keepdim=True)
    return torch.minimum(idx, last_positive).squeeze(1)


@dataclass(frozen=True)
class RunnerKey:
    """What a captured step depends on besides its weights: the shape and the sampling rules
    (they are constants inside the graph)."""

    rows: int
    width: int
    dtype: torch.dtype
    greedy: bool
    temperature: float
    top_k: int
    top_p: float
    min_new_tokens: int
    eos: tuple[int, ...]


class StaticRunner:
    """The fixed-shape state of one batch bucket and its (captured) decode step."""

    def __init__(
        self,
        key: RunnerKey,
        decoder: Any,
        layer_shapes: list[tuple[int, int, int]],
        vocab: int,
        device: torch.device,
        sampling: Any,
    ) -> None:
        r, t = key.rows, key.width
        self.key = key
        self.decoder = decoder
        self.sampling = sampling
        self.cache = StaticKVCache(layer_shapes, r, t, key.dtype, device)
        self.tokens = torch.zeros(r, dtype=torch.long, device=device)  # last chosen token
        self.pos = torch.zeros(r, dtype=torch.long, device=device)  # its position id
        self.step_idx = torch.zeros(1, dtype=torch.long, device=device)  # next output column
        # which cache columns each row may see once written: prompt (left-padded) + decode
        self.base_mask = torch.zeros((r, t), dtype=torch.bool, device=device)
        self.cols = torch.arange(t, device=device)
        self.out = torch.zeros((r, t), dtype=torch.long, device=device)  # [rows, step] tokens
        # one random number per (step, row), computed per call from the rows' stream keys
        self.uniforms = torch.zeros((t, r), dtype=torch.float64, device=device)
        self.eos_cols: torch.Tensor | None = None
        if key.min_new_tokens > 0 and key.eos:
            self.eos_cols = torch.zeros(vocab, dtype=torch.bool, device=device)
            self.eos_cols[list(key.eos)] = True
        self.replay: Callable[[], None] | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the static buffers (KV cache included)."""
        extra = (self.out, self.uniforms, self.base_mask, self.tokens, self.pos)
        return self.cache.nbytes + sum(t.numel() * t.element_size() for t in extra)

    # -- the step (device tensors only: it is what the graph records)
    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        if self.eos_cols is not None:  # EOS masked out until min_new_tokens exist
            # [V] & [1] -> [V]: the EOS columns while too young, else nothing (no host branch)
            block = self.eos_cols & (self.step_idx < self.key.min_new_tokens)
            logits = logits.masked_fill(block, float("-inf"))
        if self.key.greedy:
            return logits.argmax(dim=-1)
        u = self.uniforms.index_select(0, self.step_idx).squeeze(0)  # [rows]: this step's draw
        return sample_with_uniform(logits, self.sampling, u)

    def _emit(self, token: torch.Tensor) -> None:
        # index_copy_ with a device index: no host integer in the captured step
        self.out.index_copy_(1, self.step_idx, token[:, None])
        self.tokens.copy_(token)
        self.step_idx.add_(1)

    def _step(self) -> None:
        """Forward the last tokens (written at column ``col``), choose the next ones."""
        cache = self.cache
        mask = self.base_mask & (self.cols <= cache.col)  # prompt + tokens written so far
        logits = self.decoder.step(self.tokens, mask, self.pos, cache)  # writes column col
        self._emit(self._choose(logits))
        self.pos.add_(1)  # in place: the graph reads the same tensors on every replay
        cache.col.add_(1)

    # -- host side
    def load(
        self,
        layers: list[tuple[torch.Tensor, torch.Tensor]],
        prompt_mask: torch.Tensor,
        lengths: list[int],
        repeats: int,
        keys: torch.Tensor,
        seed: int,
    ) -> int:
        """Place a prefill (per layer keys/values, the left-padded mask ``[P, W]`` and the
        prompt lengths) into the buffers, each prompt repeated ``repeats`` times; fill in the
        random numbers: row ``i``'s at step ``s`` is ``stream_uniforms(seed, keys[i], s)``
        (``keys`` [P * repeats] int64, the rows' stream keys), the number the dynamic loop
        gives the row's ``s``-th token. Returns the number of real rows."""
        rows = len(lengths) * repeats
        width = prompt_mask.shape[1]
        self.cache.load_prompts(layers, repeats)
        mask = prompt_mask.to(self.base_mask.device).bool().repeat_interleave(repeats, dim=0)
        self.base_mask.zero_()
        self.base_mask[:rows, :width] = mask
        self.base_mask[:rows, width:] = True  # decode columns; `cols <= col` hides future ones
        self.base_mask[rows:, 0] = True  # padding rows attend one column: finite, ignored
        pos = torch.tensor(lengths, dtype=torch.long).repeat_interleave(repeats)
        self.pos.zero_()
        self.pos[:rows] = pos.to(self.pos.device)
        self.cache.col.fill_(width)  # the first decode token goes right after the prompt
        self.step_idx.zero_()
        if not self.key.greedy:
            steps = torch.arange(self.uniforms.shape[0], device=self.uniforms.device)
            self.uniforms.zero_()  # padding rows: any number will do, their tokens are junk
            # [steps, 1] x [1, rows] broadcast: every step of every real row
            self.uniforms[:, :rows] = stream_uniforms(seed, keys[None, :rows], steps[:, None])
        return rows

    def first(self, logits: torch.Tensor) -> None:
        """Choose the first token from the prefill's logits ``[rows, V]`` (padded to the
        bucket here); it is written to the cache by the first replay."""
        full = logits.new_zeros((self.key.rows, logits.shape[-1]))  # empty slots choose junk
        full[: logits.shape[0]] = logits
        self._emit(self._choose(full))

    def adopt(self, src: StaticRunner, slots: list[int]) -> None:
        """Take rows ``slots`` of ``src`` (a larger bucket of the same width) as this runner's
        first rows, in that order: cache, tokens, positions, mask, outputs, random numbers and
        the step counters. Queued behind ``src``'s steps, so it copies their results."""
        n = len(slots)
        idx = torch.tensor(slots, dtype=torch.long, device=self.tokens.device)
        mine = (*self.cache.keys, *self.cache.values)
        for dst, buf in zip(mine, (*src.cache.keys, *src.cache.values), strict=True):
            dst[:n] = buf.index_select(0, idx)
        for dst, buf in ((self.tokens, src.tokens), (self.pos, src.pos), (self.out, src.out)):
            dst.zero_()
            dst[:n] = buf.index_select(0, idx)
        self.base_mask.zero_()
        self.base_mask[:n] = src.base_mask.index_select(0, idx)
        self.base_mask[n:, 0] = True  # padding rows attend one column: finite, ignored
        self.uniforms[:, :n] = src.uniforms.index_select(1, idx)  # a row keeps its draws
        self.step_idx.copy_(src.step_idx)
        self.cache.col.copy_(src.cache.col)

    def ensure_captured(self, capture: Capture) -> bool:
        """Capture the step unless done; returns True when this call captured.

        Capturing runs the step a few times (warm-up); the small state tensors are restored
        afterwards, and the cache columns those runs wrote lie past ``col``, where the real
        steps overwrite them before the mask lets anyone read them.
        """
        if self.replay is not None:
            return False
        state = (self.tokens, self.pos, self.step_idx, self.cache.col)
        saved = [t.clone() for t in state]
        try:
            self.replay = capture(self._step)
        finally:
            for t, s in zip(state, saved, strict=True):
                t.copy_(s)
        return True


class StaticEngineState:
    """The runners a model keeps between calls, and the weights they were captured against.

    A captured graph reads weights at fixed addresses: an optimizer step updates them in
    place (the graph sees the new values), but a model moved or reloaded has new tensors, so a
    change of any parameter's address drops every runner.
    """

    def __init__(self) -> None:
        self.runners: OrderedDict[RunnerKey, StaticRunner] = OrderedDict()
        self.fingerprint: tuple[int, ...] = ()
        self.captures = 0  # graphs captured over the model's life (tests count recaptures)
        self.graph_error: str | None = None  # why a capture failed (then no more graphs)

    def __deepcopy__(self, memo: dict[int, Any]) -> StaticEngineState:
        # a copied model (GRPO's merged export, a frozen reference) gets no graphs or buffers
        return StaticEngineState()

    def __getstate__(self) -> dict[str, Any]:
        return {"runners": OrderedDict(), "fingerprint": (), "captures": 0, "graph_error": None}

    def check_weights(self, model: torch.nn.Module) -> None:
        """Drop every runner if any parameter now lives at another address."""
        fp = tuple(p.data_ptr() for p in model.parameters())  # addresses, not values
        if fp != self.fingerprint:
            self.runners.clear()
            self.fingerprint = fp

    def prepare(self, runner: StaticRunner, capture: Capture) -> None:
        """Capture ``runner``'s step unless done. A capture that fails warns once and this
        model's steps run eagerly from then on: correct tokens, slower, rather than a crashed
        run."""
        if self.graph_error is not None:
            capture = eager_capture
        try:
            if runner.ensure_captured(capture):
                self.captures += 1
        except RuntimeError as exc:
            if capture is eager_capture or is_oom_error(exc):
                raise  # out of memory is the caller's to handle (a smaller batch), not a bug
            self.graph_error = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"capturing the decode step as a CUDA graph failed ({self.graph_error}); this "
                "model decodes without graphs from now on (slower, same tokens)",
                RuntimeWarning,
                stacklevel=3,
            )
            runner.ensure_captured(eager_capture)

    def trim(self) -> None:
        """Drop the least recently used runners (not the latest) past :data:`KEEP_BYTES`."""
        while len(self.runners) > 1 and sum(r.nbytes for r in self.runners.values()) > KEEP_BYTES:
            self.runners.popitem(last=False)

    def runner(self, key: RunnerKey, make: Callable[[], StaticRunner]) -> StaticRunner:
        """The runner for ``key`` (made when missing; the least recently used is dropped)."""
        found = self.runners.get(key)
        if found is None:
            found = make()
            self.runners[key] = found
            while len(self.runners) > MAX_RUNNERS:
                self.runners.popitem(last=False)
        self.runners.move_to_end(key)
        return found


def engine_state(model: Any) -> StaticEngineState:
    """The model's :class:`StaticEngineState` (kept on the model object)."""
    state = getattr(model, "_shoestring_static_engine", None)
    if state is None:
        state = StaticEngineState()
        model._shoestring_static_engine = state
    return state
