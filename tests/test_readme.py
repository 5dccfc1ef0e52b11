"""The README's commands run as written, and its headline numbers are the ones in docs/results.md.

What is checked (and what is not):
* every ``python -m asign_jax.X`` and ``python experiments/X.py`` in the README's fenced bash
  blocks and inline ``python ...`` code names a module / script that exists and answers
  ``--help`` without a traceback (absl's ``--help`` exits with 1 after printing the usage);
* every ``configs/X.py`` and ``examples/X.yaml`` the README names exists, and each config's
  ``get_config()`` loads;
* every ``docs/X.md`` the README links exists (a "Placeholder:" line, a section that another
  change fills in, is exempt);
* the numbers of the README's headline block (between ``<!-- headline:begin`` and
  ``<!-- headline:end -->``) each appear, digit for digit, in docs/results.md, so the README
  cannot show a number that the results file does not. Numbers elsewhere in the docs are not
  cross-checked: docs/results.md is the one place a result is written.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    """Shell commands of the fenced bash blocks (continuations joined) and inline code."""
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                cmds.append(line)
    cmds += [c for c in re.findall(r"`([^`\n]+)`", README) if c.startswith("python ")]
    return cmds


def _targets() -> tuple[set, set]:
    """({asign_jax.X modules}, {experiments/X.py scripts}) that the commands run."""
    text = "\n".join(_commands())
    modules = set(re.findall(r"python -m (asign_jax(?:\.\w+)+)", text))
    scripts = set(re.findall(r"python (experiments/\w+\.py)", text))
    return modules, scripts


def test_the_readme_is_short():
    assert len(README.encode()) <= 12 * 1024


def test_commands_are_found():
    modules, _ = _targets()
    assert {"asign_jax.train", "asign_jax.impute"} <= modules, modules


def test_named_files_exist_and_configs_load():
    names = set(re.findall(r"\b((?:configs|examples|experiments)/[\w./-]+\.(?:py|yaml|csv))",
                           README))
    assert names
    missing = [n for n in sorted(names) if not (ROOT / n).is_file()]
    assert not missing, f"README names files that do not exist: {missing}"
    modules, _ = _targets()
    for m in modules:
        assert importlib.util.find_spec(m) is not None, m
    for n in sorted(n for n in names if n.startswith("configs/")):
        assert load_config(str(ROOT / n)) is not None, n


def test_linked_docs_exist():
    links = [(line, link) for line in README.splitlines() if not line.startswith("Placeholder:")
             for link in re.findall(r"\]\((docs/[\w./-]+)\)", line)]
    assert links
    missing = sorted({link for _, link in links if not (ROOT / link).is_file()})
    assert not missing, f"README links docs that do not exist: {missing}"


def _help(target: str) -> tuple[str, int, str]:
    cmd = ([sys.executable, "-m", target] if not target.endswith(".py")
           else [sys.executable, str(ROOT / target)])
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    p = subprocess.run(cmd + ["--help"], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=300)
    return target, p.returncode, p.stdout + p.stderr


@pytest.mark.slow          # a few seconds of CPU per interpreter start (jax imports)
def test_every_module_and_script_answers_help():
    modules, scripts = _targets()
    targets = sorted(modules) + sorted(scripts)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(_help, targets))
    bad = [(t, rc, out[-500:]) for t, rc, out in results
           if rc not in (0, 1) or "Traceback" in out or "--" not in out]
    assert not bad, bad


NUMBER = r"(?<![\w.])\d+\.\d{3,}(?![\d])"      # 0.2839, 12.345: not 1.5, not v0.10.2


def missing_headline_numbers(readme: str, results: str) -> list[str]:
    """The numbers of ``readme``'s headline block that ``results`` does not contain."""
    m = re.search(r"<!-- headline:begin.*?-->(.*?)<!-- headline:end -->", readme, re.S)
    assert m, "README has no headline block"
    numbers = re.findall(NUMBER, m.group(1))
    assert numbers, "no headline numbers"
    return sorted(set(numbers) - set(re.findall(NUMBER, results)))


def test_headline_numbers_are_those_of_docs_results():
    results = (ROOT / "docs" / "results.md").read_text()
    missing = missing_headline_numbers(README, results)
    assert not missing, f"README headline numbers not in docs/results.md: {missing}"


def test_headline_check_reports_a_number_that_changed():
    results = (ROOT / "docs" / "results.md").read_text()
    block = README.split("<!-- headline:begin", 1)[1]
    first = re.findall(NUMBER, block)[0]
    stale = re.sub(rf"(?<![\w.]){re.escape(first)}(?![\d])", "9.9999", results)
    assert missing_headline_numbers(README, stale) == [first]


@pytest.mark.parametrize("name", ["foundation_models", "features", "slides_hest_spatialdata",
                                  "performance", "run_folders"])
def test_sections_of_other_changes_have_a_place(name):
    assert f"docs/{name}.md" in README
