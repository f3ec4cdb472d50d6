"""Scoring: protocols as data, lm-eval's rules, one scoring path."""
