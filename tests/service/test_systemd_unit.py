"""The shipped unit: verifies, and its sandbox scores 2.0 or lower (offline analysis)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "relay.service"
analyze = shutil.which("systemd-analyze")


def test_unit_has_the_operational_settings() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "DynamicUser=yes", "StateDirectory=relay",
                 "RestartPreventExitStatus=78", "LoadCredential=attesto-api-key:",
                 "ExecReload="):
        assert line in text, line
    assert "Environment=" not in re.sub(r"#.*", "", text)  # no secrets via Environment=


def test_unit_bounds_files_tasks_and_memory() -> None:
    """systemd.exec(5) LimitNOFILE=, systemd.resource-control(5) TasksMax= and MemoryMax=:
    each set to a number, each explained by a comment right above it."""
    lines = UNIT.read_text().splitlines()
    for key, pattern in (("LimitNOFILE", r"\d+"), ("TasksMax", r"\d+"),
                         ("MemoryMax", r"\d+[KMGT]?")):
        [i] = [n for n, line in enumerate(lines) if line.startswith(key + "=")]
        assert re.fullmatch(pattern, lines[i].split("=", 1)[1]), lines[i]
        assert lines[i - 1].startswith("#"), f"{key}= needs a comment saying why"


@pytest.mark.skipif(analyze is None, reason="systemd-analyze not installed")
def test_security_exposure_is_at_most_2() -> None:
    out = subprocess.run([str(analyze), "security", "--offline=yes", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for relay.service: (\d+\.\d)", out.stdout)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= 2.0


@pytest.mark.skipif(analyze is None, reason="systemd-analyze not installed")
def test_verify_is_clean_apart_from_the_binary_path() -> None:
    out = subprocess.run([str(analyze), "verify", str(UNIT)], capture_output=True,
                         text=True, timeout=60)
    problems = [ln for ln in (out.stdout + out.stderr).splitlines()
                if ln.strip() and "/opt/relay/venv/bin/relay" not in ln]
    assert problems == []
