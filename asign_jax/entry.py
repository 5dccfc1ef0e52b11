"""What every ``python -m asign_jax.<command>`` shares: flags, logging, and error handling.

``run(main, workdir_help, **extra)`` defines ``--config`` (an ml_collections config file,
``--config.a.b=v`` overrides), ``--workdir``, ``--verbose`` and the command's extra flags,
then calls ``main(flags)``. The project's own errors (bad data, bad config) end the command
with one line on stderr and exit code 2; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from absl import app, flags

from asign_jax.errors import ConfigError, DataError

EXIT_BAD_INPUT = 2


def define_flags(workdir_help: str = "Run folder.", required=("config", "workdir"),
                 **extra: tuple) -> flags.FlagValues:
    """Defines --config, --workdir, --verbose and ``extra`` string/bool flags given as
    ``name=(default, help)``, ``required`` among them; returns ``flags.FLAGS``."""
    from ml_collections import config_flags

    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", None, "Config file (configs/<dataset>.py).",
                                        lock_config=False)
    if "workdir" not in flags.FLAGS:
        flags.DEFINE_string("workdir", None, workdir_help)
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, "Show the full traceback of an error.")
    for name, (default, help_) in extra.items():
        if name in flags.FLAGS:
            continue
        if isinstance(default, bool):
            flags.DEFINE_bool(name, default, help_)
        else:
            flags.DEFINE_string(name, default, help_)
    flags.mark_flags_as_required(list(required))
    return flags.FLAGS


def run(main: Callable, workdir_help: str = "Run folder.", required=("config", "workdir"),
        **extra: tuple) -> None:
    """Defines the flags and runs ``main(flags.FLAGS)`` under absl (see the module doc)."""
    fv = define_flags(workdir_help, required, **extra)

    def _main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.getLogger().setLevel(logging.INFO)
        logging.getLogger("absl").setLevel(logging.WARNING)   # orbax's per-save chatter
        try:
            main(fv)
        except (DataError, ConfigError) as e:
            if fv.verbose:
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)

    app.run(_main)
