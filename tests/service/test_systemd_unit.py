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
