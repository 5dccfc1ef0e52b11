"""Where a run's numbers came from: the git commit, the command line and the resolved config.

``record(workdir, config)`` writes ``<workdir>/config.json`` (the config as the run resolved
it, every override applied) and returns the block that ``metrics.json`` stores as
``"provenance"``: ``{"commit", "dirty", "command", "config"}``. ``experiments/results_md.py``
prints it beside each table, so a number in docs/results.md names the code and the command
that produced it.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

from asign_jax import atomic

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> tuple[Optional[str], Optional[bool]]:
    """(HEAD commit, whether tracked files differ from it); (None, None) outside a git clone."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status))


def command_line(argv: Optional[list[str]] = None) -> str:
    """The command as a user would type it: ``python -m asign_jax.train ...`` for a package
    main, ``python experiments/x.py ...`` (relative to the repository) for a script."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    head = Path(argv[0])
    try:
        rel = head.resolve().relative_to(REPO)
    except (ValueError, OSError):
        rel = None
    if rel is not None and rel.parts[0] == "asign_jax" and rel.suffix == ".py":
        prog = ["python", "-m", ".".join(rel.with_suffix("").parts)]
    elif rel is not None:
        prog = ["python", str(rel)]
    else:
        prog = ["python", argv[0]]
    return " ".join(prog + [shlex.quote(a) for a in argv[1:]])


def record(workdir, config) -> dict:
    """Writes ``<workdir>/config.json`` and returns metrics.json's ``"provenance"`` block."""
    workdir = Path(workdir)
    atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=1,
                                                                          sort_keys=True) + "\n")
    commit, dirty = git_commit()
    return {"commit": commit, "dirty": dirty, "command": command_line(),
            "config": "config.json"}
