"""The command line as an admin meets it: exit codes and messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True,
                          text=True, env={**base, **(env or {})}, cwd=cwd or ROOT, timeout=60)


def test_typo_exits_78_naming_file_section_key_and_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("[server]\nprot = 8080\n")
    result = run("serve", "--config", str(path))
    assert result.returncode == 78
    assert f"{path}: [server] unknown key 'prot' (did you mean 'port'?)" in result.stderr


def test_bad_env_value_names_the_variable() -> None:
    result = run("check-config", "--config", "relay.toml", env={"RELAY_SERVER__PORT": "abc"})
    assert result.returncode == 78
    assert "env RELAY_SERVER__PORT: [server] port: not an int ('abc')" in result.stderr


def test_check_config_prints_effective_config_redacted() -> None:
    result = run("check-config", "--config", "relay.toml",
                 env={"RELAY_CREDENTIAL_ADMIN_TOKEN": "sekrit-token",
                      "RELAY_SERVER__PORT": "9999"})
    assert result.returncode == 0, result.stderr
    assert "port = 9999" in result.stdout
    assert '"admin-token" = "set"' in result.stdout
    assert "sekrit-token" not in result.stdout
    assert "disabled until their credential is set" in result.stdout


def test_migrate_then_serve_refuses_nothing(tmp_path: Path) -> None:
    result = run("migrate", "--config", str(ROOT / "relay.toml"),
                 env={"RELAY_STORE__PATH": str(tmp_path / "m.sqlite3")})
    assert result.returncode == 0, result.stderr
    assert "schema is at version" in result.stdout


def test_plain_http_attesto_off_loopback_exits_78() -> None:
    result = run("serve", "--config", "relay.toml",
                 env={"RELAY_ATTESTO__BASE_URL": "http://attesto.example.com"})
    assert result.returncode == 78
    assert "[attesto] base_url 'http://attesto.example.com' is plain http" in result.stderr
