"""The context policy (models/context.py): each model's real limit, and prompts fitted to it."""

from __future__ import annotations

import logging

import pytest
from transformers import GPT2Config, LlamaConfig

from _helpers import char_tokenizer
from shoestring.models.context import (
    context_limit,
    fit_prompts,
    has_learned_positions,
    no_room_reason,
    tokenizing_long_prompts,
)
from shoestring.models.gpt import ShoestringGPTConfig


def test_learned_positions_limit_is_the_table_size() -> None:
    gpt2 = GPT2Config(n_positions=64)
    assert context_limit(gpt2) == 64 and has_learned_positions(gpt2)
    ours = ShoestringGPTConfig(max_seq_len=48, position="learned")
    assert context_limit(ours) == 48 and has_learned_positions(ours)


def test_rope_limit_is_widened_by_its_scaling_factor() -> None:
    assert context_limit(LlamaConfig(max_position_embeddings=100)) == 100
    linear = LlamaConfig(
        max_position_embeddings=100, rope_scaling={"rope_type": "linear", "factor": 2.0}
    )
    assert context_limit(linear) == 200
    assert not has_learned_positions(linear)
    ours = ShoestringGPTConfig(max_seq_len=64, position="rope", rope_scaling=4.0)
    assert context_limit(ours) == 256


def test_rope_limit_with_an_original_length_is_not_scaled_twice() -> None:
    """Llama 3.1 names the extended length already; YaRN-extended Qwen names the original."""

    class Cfg:
        max_position_embeddings = 131072
        rope_scaling = {
            "rope_type": "llama3",
            "factor": 8.0,
            "original_max_position_embeddings": 8192,
        }

    assert context_limit(Cfg()) == 131072
    Cfg.max_position_embeddings = 32768
    Cfg.rope_scaling = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert context_limit(Cfg()) == 131072


def test_limit_falls_back_to_the_tokenizer_then_unknown() -> None:
    class Bare:
        pass

    class Tok:
        model_max_length = 512

    assert context_limit(Bare(), Tok()) == 512
    Tok.model_max_length = int(1e30)  # transformers' "unset"
    assert context_limit(Bare(), Tok()) is None


def test_a_model_object_and_a_nested_text_config_are_read() -> None:
    class Model:
        config = GPT2Config(n_positions=32)

    class Multimodal:
        text_config = LlamaConfig(max_position_embeddings=77)

    assert context_limit(Model()) == 32
    assert context_limit(Multimodal()) == 77


def test_truncation_keeps_the_last_tokens_like_lm_eval() -> None:
    prompts = [list(range(20)), [7, 8, 9]]
    fit = fit_prompts(prompts, limit=16, max_new_tokens=6)
    assert fit.budget == 10
    assert fit.ids[0] == list(range(10, 20))  # lm-eval: context_enc[-(max_length - gen):]
    assert fit.ids[1] == [7, 8, 9]
    assert fit.cut == [10, 0] and fit.truncated == 1
    assert fit.refused == {} and fit.no_room is None and fit.kept() == [0, 1]


def test_refuse_records_a_reason_per_prompt_and_keeps_the_others() -> None:
    fit = fit_prompts([list(range(20)), [1, 2]], limit=16, max_new_tokens=6, overflow="refuse")
    assert fit.ids == [None, [1, 2]]
    assert "prompt of 20 tokens" in fit.refused[0] and "context of 16" in fit.refused[0]
    assert fit.kept() == [1] and fit.truncated == 0


@pytest.mark.parametrize("max_new_tokens", [16, 40])
def test_no_room_refuses_every_prompt_with_the_fix(max_new_tokens: int) -> None:
    fit = fit_prompts([[1, 2], [3]], limit=16, max_new_tokens=max_new_tokens)
    assert fit.kept() == []
    assert fit.no_room is not None and "lower max_new_tokens below 16" in fit.no_room
    assert set(fit.refused.values()) == {fit.no_room}


def test_rope_runs_past_a_context_that_max_new_tokens_fills() -> None:
    """A RoPE model extrapolates: prompts keep at most the context, nothing is refused, and the
    fit says the answer runs past the context; a learned table is still refused."""
    fit = fit_prompts([list(range(20)), [1, 2]], 16, 40, extrapolates=True)
    assert fit.ids == [list(range(4, 20)), [1, 2]] and fit.cut == [4, 0]
    assert fit.past_context and fit.no_room is None and fit.refused == {}
    assert no_room_reason(16, 40, extrapolates=True) is None
    assert no_room_reason(16, 40) is not None
    within = fit_prompts([list(range(20))], 16, 6, extrapolates=True)  # room left: lm-eval's rule
    assert within.ids == [list(range(10, 20))] and not within.past_context


def test_unknown_limit_changes_nothing() -> None:
    fit = fit_prompts([[1] * 5000], limit=None, max_new_tokens=256)
    assert fit.ids == [[1] * 5000] and fit.truncated == 0 and fit.no_room is None


def test_no_room_reason_is_known_from_the_limit_alone() -> None:
    assert no_room_reason(64, 63) is None and no_room_reason(None, 10**6) is None
    reason = no_room_reason(64, 64)
    assert reason is not None and "context of 64 tokens" in reason


def test_tokenizing_long_prompts_silences_transformers_false_alarm() -> None:
    """transformers says a prompt past model_max_length "will result in indexing errors"; the
    policy fits it first, so bench and generate tokenise under this context manager."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    log = logging.getLogger("transformers.tokenization_utils_base")
    handler = Collect()
    log.addHandler(handler)
    try:
        with tokenizing_long_prompts():
            tok = char_tokenizer()
            tok.model_max_length = 8
            tok(["a" * 20])
        assert not any("indexing errors" in m for m in seen)
        tok = char_tokenizer()  # transformers warns once per tokenizer: a fresh one
        tok.model_max_length = 8
        tok(["a" * 20])
        assert any("indexing errors" in m for m in seen)  # the warning this silences
    finally:
        log.removeHandler(handler)
