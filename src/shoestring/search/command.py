"""PLACEHOLDER - being written; replace this whole file."""

from __future__ import annotations

import argparse


def add_cli(sub: argparse._SubParsersAction) -> None:
    for name in ['search']:
        sub.add_parser(name, help="(in development)")
