"""Reward functions in TRL's shape, as a TRL user writes them next to a config."""

import re


def _text(completion):
    # TRL passes plain strings for plain prompts and message lists for chat prompts
    return completion if isinstance(completion, str) else completion[0]["content"]


def format_reward(completions, **kwargs):
    """1.0 when the completion states a final answer as '#### N'."""
    return [1.0 if re.search(r"####\s*-?\d", _text(c)) else 0.0 for c in completions]


def short_answer_reward(completions, completion_ids, **kwargs):
    """Prefers shorter completions (reads TRL's completion_ids)."""
    return [1.0 - len(ids) / 16 for ids in completion_ids]
