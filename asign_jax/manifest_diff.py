"""Why a stage manifest no longer matches what a run asks for (``runfolder.RunFolder.check``).

Three checks, in order, each giving the one line a refusal quotes: the config fields (a
``format.<kind>`` difference first: a stage written by another asign_jax version), the build
ids of the upstream stages, and the content fingerprints of the input files
(``asign_jax.fingerprint``: a stat while size and mtime are unchanged, a hash when not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from asign_jax import fingerprint

_ABSENT = object()


def _fmt(v) -> str:
    """A recorded value for the refusal line (long lists shortened)."""
    if isinstance(v, list) and len(v) > 6:
        return f"<{len(v)} items: {', '.join(map(str, v[:3]))}, ...>"
    return "<absent>" if v is _ABSENT else repr(v)


def _list_change(was, now) -> str:
    """`` (15 shared; only before: a, b; only now: c)`` for two long lists, else ''."""
    if not (isinstance(was, list) and isinstance(now, list)) or len(was) + len(now) <= 12:
        return ""
    a, b = [str(x) for x in was], [str(x) for x in now]
    gone, new = [x for x in a if x not in set(b)], [x for x in b if x not in set(a)]
    return (f" ({len(set(a) & set(b))} shared; only before: {', '.join(gone[:5]) or '-'}; "
            f"only now: {', '.join(new[:5]) or '-'})")


def config_difference(recorded: dict, config: dict) -> Optional[str]:
    """Why the recorded {field: value} differ from ``config``'s (None: they match; a field
    asked as None is not compared)."""
    keys = [k for k in sorted(set(recorded) | set(config))
            if config.get(k, _ABSENT) is not None
            and recorded.get(k, _ABSENT) != config.get(k, _ABSENT)]
    fmt = [k for k in keys if k.startswith("format.")]
    if fmt:
        k = fmt[0]
        made = recorded.get(k, "none recorded")
        return (f"was written by another version of asign_jax ({k[7:]} format {made}; this "
                f"one reads and writes format {config.get(k)})")
    if keys:
        was = ", ".join(f"{k}={_fmt(recorded.get(k, _ABSENT))}" for k in keys)
        now = (_fmt(config.get(keys[0], _ABSENT)) if len(keys) == 1 else
               ", ".join(f"{k}={_fmt(config.get(k, _ABSENT))}" for k in keys))
        if len(keys) == 1:
            now += _list_change(recorded.get(keys[0]), config.get(keys[0]))
        return f"was made with {was}; you asked for {now}"
    return None


def inputs_difference(recorded: dict, inputs: dict) -> Optional[str]:
    """Which upstream stage ({stage: build id}) was rebuilt since, or None."""
    for up in sorted(set(recorded) | set(inputs)):
        if recorded.get(up) != inputs.get(up):
            return f"was made from an earlier {up!r} stage (rebuilt since)"
    return None


def files_difference(files: dict, workdir: Path,
                     cache: fingerprint.Cache) -> tuple[Optional[str], dict]:
    """(why an input file ({path: [size, mtime_ns, digest]}, relative to ``workdir`` or
    absolute) changed or vanished, or None; {path: new fingerprint} of the files touched
    since with unchanged content). Saves ``cache`` when every file matches."""
    refreshed = {}
    for path, recorded in files.items():
        p = workdir / path                         # an absolute path stays as it is
        if not p.is_file():
            return f"was made from {p}, which no longer exists", {}
        if len(recorded) < 3:                      # before content fingerprints: stat only
            st = p.stat()
            if [st.st_size, st.st_mtime_ns] != list(recorded[:2]):
                return (f"was made from {p} ({recorded[0]} bytes), which has changed since "
                        f"({st.st_size} bytes now)"), {}
            continue
        same, now = cache.unchanged(p, recorded)
        if not same:
            change = (f"{now[0]} bytes now" if now[0] != recorded[0]
                      else f"same size, blake2b {now[2].split(':', 1)[-1][:8]} now")
            return (f"was made from {p} ({fingerprint.short(recorded)}), whose content "
                    f"has changed since ({change})"), {}
        if now[1] != recorded[1]:
            refreshed[path] = now                  # touched or racy: content unchanged
    cache.save()
    return None, refreshed
