"""What every ``python -m asign_jax.<command>`` shares: flags, logging, and error handling.

``run(main, workdir_help, **extra)`` defines ``--config`` (an ml_collections config file,
``--config.a.b=v`` overrides; the config is locked, so an unknown field is refused),
``--workdir``, ``--verbose`` and the command's extra flags, validates the config
(``asign_jax.config_checks.validate``) before any work, then calls ``main(flags)``.

The project's own errors end the command with ONE line on stderr (``--verbose`` shows the
traceback): a bad flag, config value, input file or run folder (DataError, ConfigError,
RunFolderError) exits with code 2; training that cannot go on (TrainingError, e.g. a
non-finite loss) with code 1. A file that cannot be written (a read-only run folder) is one
line too (exit 2).
"""

from __future__ import annotations

import errno
import logging
import re
import sys
from types import SimpleNamespace
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

from asign_jax.config_checks import validate
from asign_jax.errors import ConfigError, DataError, TrainingError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def define_flags(workdir_help: str = "Run folder.", required=("config", "workdir"),
                 **extra: tuple) -> flags.FlagValues:
    """Defines --config, --workdir, --verbose and ``extra`` string/bool flags given as
    ``name=(default, help)``, ``required`` among them; returns ``flags.FLAGS``."""
    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", None, "Config file (configs/<dataset>.py).",
                                        lock_config=True)
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


def unwritable(e: OSError):
    """The one line for a file the command may not write (a read-only run folder or disk),
    or None for any other OSError."""
    if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
        return None
    where = e.filename or "a file of the run folder"
    return (f"{where}: cannot be written ({e.strerror}); is the run folder (or --out) "
            "read-only? Make it writable or use another --workdir / --out")


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with one-line errors (exit 2). Without it, an unknown
    ``--config.a.b`` field or a config file that cannot be loaded ends in a long traceback."""
    verbose = "--verbose" in argv
    try:
        args = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS.config is not None:   # optional (impute)
            flags.FLAGS.config.keys()        # a config file that failed to load raises only here
        return args
    except flags.Error as e:
        _fail(str(e).splitlines()[0], EXIT_BAD_INPUT)
    except (AttributeError, KeyError) as e:       # ml_collections: no such config field
        if verbose:
            raise
        overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        guess = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', str(e))
        key = guess.group(2) if guess else None
        bad = [a for a in overrides if key in a[len("--config."):].split(".")] if key else []
        field = (bad or overrides or ["--config"])[0]
        hint = ""
        if bad:
            parts = field[len("--config."):].split(".")
            parts[parts.index(key)] = guess.group(1)
            hint = f" (did you mean {'.'.join(parts)}?)"
        _fail(f"{field}: unknown config field{hint}", EXIT_BAD_INPUT)
    except Exception as e:  # noqa: BLE001 - the config file itself failed to load
        if verbose:
            raise
        last = [line.strip() for line in str(e).splitlines() if line.strip()][-1:]
        _fail(f"--config: cannot load the config file ({last[0] if last else type(e).__name__})",
              EXIT_BAD_INPUT)


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
            if fv.config is not None:
                validate(fv.config)
            main(fv)
        except (DataError, ConfigError, TrainingError) as e:
            if fv.verbose:
                raise
            _fail(str(e), EXIT_FAILED if isinstance(e, TrainingError) else EXIT_BAD_INPUT)
        except OSError as e:
            line = unwritable(e)
            if fv.verbose or line is None:
                raise
            _fail(line, EXIT_BAD_INPUT)

    app.run(_main, flags_parser=parse_flags)


# ---- experiments/*.py ------------------------------------------------------------------------

EXPERIMENTS_OUT = "runs/experiments"


def define_script_flags(script: str, *, config: str = "optional", **extra: tuple) -> flags.FlagValues:
    """The flags of an ``experiments/<script>.py``: ``--config`` (locked, like the commands';
    ``config`` = "required", "optional" or "none"), ``--out`` (its output folder, default
    ``runs/experiments/<script>``), ``--verbose``, and ``extra`` flags given as
    ``name=(default, help)`` (the flag's type is the default's: bool, int, float, list =
    repeatable string, else string) or ``name=(default, help, choices)`` (an enum)."""
    fv = flags.FLAGS
    if config != "none" and "config" not in fv:
        config_flags.DEFINE_config_file("config", None, "Config file (configs/<dataset>.py).",
                                        lock_config=True)
    if "out" not in fv:
        flags.DEFINE_string("out", f"{EXPERIMENTS_OUT}/{script}", "Output folder.")
    if "verbose" not in fv:
        flags.DEFINE_bool("verbose", False, "Show the full traceback of an error.")
    required = ["config"] if config == "required" else []
    for name, spec in extra.items():
        default, help_ = spec[0], spec[1]
        if name in fv:
            continue
        if len(spec) > 2:
            flags.DEFINE_enum(name, default, list(spec[2]), help_)
        elif isinstance(default, bool):
            flags.DEFINE_bool(name, default, help_)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, help_)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_)
        elif isinstance(default, list):
            flags.DEFINE_multi_string(name, default, help_)
        else:
            if default is REQUIRED:
                required.append(name)
                default = None
            flags.DEFINE_string(name, default, help_)
    if required:
        flags.mark_flags_as_required(required)
    return fv


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()   # ``name=(REQUIRED, help)`` in define_script_flags: a required string flag


def run_script(main: Callable, script: str, *, config: str = "optional", **extra: tuple) -> None:
    """``run`` for an ``experiments/<script>.py``: the flags of ``define_script_flags``, the
    config validated (when given), then ``main(args)`` with ``args`` a namespace of the flag
    values (``config``, ``out``, ``verbose`` and every ``extra`` name; ``vars(args)`` works),
    with the same one-line errors as the commands."""
    fv = define_script_flags(script, config=config, **extra)
    names = (["config"] if config != "none" else []) + ["out", "verbose", *extra]

    def _main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.getLogger().setLevel(logging.INFO)
        logging.getLogger("absl").setLevel(logging.WARNING)
        try:
            if config != "none" and fv.config is not None:
                validate(fv.config)
            main(SimpleNamespace(**{n: getattr(fv, n) for n in names}))
        except (DataError, ConfigError, TrainingError) as e:
            if fv.verbose:
                raise
            _fail(str(e), EXIT_FAILED if isinstance(e, TrainingError) else EXIT_BAD_INPUT)

    app.run(_main, flags_parser=parse_flags)
