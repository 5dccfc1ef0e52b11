"""Shared command-line flags for the entry points (prepare, register, train, evaluate).

Flags are defined only when a module runs as ``__main__`` (never at import), so the
entry-point modules can import each other without absl's DuplicateFlagError.
"""

from absl import flags


def define_flags(workdir_help: str = "Run folder.", **extra_strings: tuple) -> flags.FlagValues:
    """Defines --config (ml_collections config file, ``--config.a.b=v`` overrides) and
    --workdir once, plus extra string/bool flags given as ``name=(default, help)``."""
    from ml_collections import config_flags

    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", None, "Config file (configs/<dataset>.py).",
                                        lock_config=False)
    if "workdir" not in flags.FLAGS:
        flags.DEFINE_string("workdir", None, workdir_help)
    for name, (default, help_) in extra_strings.items():
        if name in flags.FLAGS:
            continue
        if isinstance(default, bool):
            flags.DEFINE_bool(name, default, help_)
        else:
            flags.DEFINE_string(name, default, help_)
    flags.mark_flags_as_required(["config", "workdir"])
    return flags.FLAGS


def start(argv) -> None:
    """Common start of a ``main(argv)``: refuses stray positional arguments, logs at INFO and
    quiets absl's own logger (orbax's per-save chatter)."""
    import logging

    from absl import app
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
