"""Where a study lives, by URL: the default SQLite file in the study directory, or a database
a user names (PostgreSQL to scale out). Kept apart from ``storage`` so that reading these (the
CLI's defaults, log lines) does not import Optuna."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

DB_NAME = "study.db"
DEFAULT_HEARTBEAT = 30.0  # seconds between heartbeats of a running trial
CRASH_RETRIES = 3  # re-queues of a trial whose worker died, before it counts as failed


def sqlite_url(study_dir: str | Path) -> str:
    return f"sqlite:///{Path(study_dir).resolve() / DB_NAME}"


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and summary.json."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def driver_url(url: str) -> str:
    """``postgresql://`` with the driver that is installed (SQLAlchemy 2.1 defaults to psycopg 3,
    shoestring's ``postgres`` extra installs psycopg2)."""
    m = re.match(r"^(postgresql|postgres)://", url)
    if not m:
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return "postgresql+psycopg2://" + url[m.end() :]
    return "postgresql://" + url[m.end() :]
