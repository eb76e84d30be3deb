"""Configuration: defaults, precedence (file < env < credentials), and error reports."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from relay.config import Config, ConfigError, Secret, load_config, redacted

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_relay_toml_documents_exactly_the_defaults() -> None:
    cfg = load_config(ROOT / "relay.toml", environ={})
    assert dataclasses.replace(cfg, source="(defaults)") == Config()


def test_every_key_of_every_section_appears_in_relay_toml() -> None:
    text = (ROOT / "relay.toml").read_text()
    for section, values in redacted(Config()).items():
        if section in ("entitlements", "downstream", "products", "credentials"):
            continue
        assert f"[{section}]" in text
        for key in values:
            assert f"\n{key} = " in text, f"[{section}] {key} is not documented"


def test_env_example_lists_every_key_and_loads_to_defaults() -> None:
    environ = {}
    for line in (ROOT / "config/relay.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            environ[key] = value
    assert load_config(None, environ=environ) == Config()
    expected = sum(len(v) for k, v in redacted(Config()).items()
                   if k not in ("entitlements", "downstream", "products", "credentials"))
    assert len(environ) == expected


@pytest.mark.parametrize("name", ["production.toml", "postgres.toml"])
def test_config_examples_load(name: str) -> None:
    cfg = load_config(ROOT / "config" / name, environ={})
    assert cfg.source.endswith(name)


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n[auth.jwt]\naudience = 'file'\n")
    cfg = load_config(path, environ={"RELAY_SERVER__PORT": "9100",
                                     "RELAY_AUTH_JWT__AUDIENCE": "env",
                                     "RELAY_OUTBOX__RETRY_SCHEDULE_S": "1, 2,3",
                                     "RELAY_STORE__AUTO_MIGRATE": "false"})
    assert cfg.server.port == 9100
    assert cfg.jwt.audience == "env"
    assert cfg.outbox.retry_schedule_s == (1.0, 2.0, 3.0)
    assert cfg.store.auto_migrate is False


def test_typo_names_file_section_key_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nprot = 8080\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.problems == [
        f"{path}: [server] unknown key 'prot' (did you mean 'port'?)"]


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "[servr]\nport = 1\n[outbox]\nconcurrency = 0\n"
                           "[webhooks]\ntolerance_s = 'x'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={"RELAY_SERVER__PORT": "abc", "RELAY_SERVER__PROT": "1",
                                   "RELAY_NOPE__X": "1"})
    text = str(err.value)
    assert "unknown section [servr] (did you mean 'server'?)" in text
    assert "[outbox] concurrency must be > 0 (got 0)" in text
    assert "[webhooks] tolerance_s: not an int ('x')" in text
    assert "env RELAY_SERVER__PORT: [server] port: not an int ('abc')" in text
    assert "env RELAY_SERVER__PROT: [server] unknown key 'prot' (did you mean 'port'?)" in text
    assert "env RELAY_NOPE__X: unknown section 'nope'" in text
    assert len(err.value.problems) == 6


def test_unrelated_relay_variables_are_ignored() -> None:
    cfg = load_config(None, environ={"RELAY_TEST_POSTGRES_URL": "postgresql://x",
                                     "RELAY_CREDENTIAL_ADMIN_TOKEN": "t"})
    assert cfg.credentials.admin_token == Secret("t")


def test_bad_values_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 70000\n[attesto]\nbase_url = 'ftp://x'\n"
                           "[purchases]\nowner_conflict = 'steal'\n[outbox]\n"
                           "allow_networks = ['10.0.0.0/33']\n[[downstream]]\nname = 'a'\n"
                           "url = 'https://x.example'\n[[downstream]]\nname = 'a'\n"
                           "url = 'nope'\n[[downstream]]\nurl = 'https://y.example'\n"
                           "[entitlements]\nsku = []\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    text = str(err.value)
    for fragment in ("port must be 0-65535", "base_url must be an http(s) URL",
                     "owner_conflict must be 'transfer' or 'keep'",
                     "allow_networks: not a network", "name is used twice",
                     "url must be an http(s) URL (got 'nope')",
                     "#3 missing required key(s): name", "'sku' must be a non-empty list"):
        assert fragment in text


def test_products_catalogue(tmp_path: Path) -> None:
    path = write(tmp_path, "[[products]]\nid = 'premium'\ntype = 'subscription'\n"
                           "android_plan_id = 'monthly'\n[[products]]\nid = 'coins'\n"
                           "type = 'consumable'\n")
    cfg = load_config(path, environ={})
    assert [(p.id, p.type, p.android_plan_id) for p in cfg.products] == [
        ("premium", "subscription", "monthly"), ("coins", "consumable", "")]
    assert redacted(cfg)["products"][0] == {"id": "premium", "type": "subscription",
                                            "android_plan_id": "monthly"}
    bad = write(tmp_path, "[[products]]\nid = 'a'\ntype = 'subscription'\n[[products]]\n"
                          "id = 'a'\ntype = 'gift'\n[[products]]\ntype = 'product'\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, environ={"RELAY_PRODUCTS__ID": "x"})
    text = str(err.value)
    for fragment in ("#1 (a) android_plan_id is required", "#2 (a) id must be non-empty and "
                     "unique", "type must be one of subscription, product, consumable",
                     "#3 missing required key(s): id",
                     "RELAY_PRODUCTS__ID: [products] can only be set in the file"):
        assert fragment in text


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[server\n"), environ={})
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml", environ={})


def test_credentials_directory_wins_over_environment(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "admin-token").write_text("from-file\n")
    (creds / "attesto-webhook-secret").write_text("new-secret\nold-secret\n")
    digest = hashlib.sha256(b"k").hexdigest()
    cfg = load_config(None, environ={"RELAY_CREDENTIAL_ADMIN_TOKEN": "from-env",
                                     "RELAY_CREDENTIAL_API_KEYS": f"backend:{digest}",
                                     "CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.credentials.admin_token == Secret("from-file")
    assert [s.reveal() for s in cfg.credentials.attesto_webhook_secrets] == [
        "new-secret", "old-secret"]
    assert cfg.credentials.api_keys == (("backend", digest),)


def test_plain_api_key_in_api_keys_is_refused() -> None:
    with pytest.raises(ConfigError, match="sha256 hex"):
        load_config(None, environ={"RELAY_CREDENTIAL_API_KEYS": "backend:plainkey"})


def test_downstream_secret_and_missing_features(tmp_path: Path) -> None:
    path = write(tmp_path, "[[downstream]]\nname = 'billing'\nurl = 'https://b.example/h'\n")
    cfg = load_config(path, environ={})
    assert any("downstream 'billing'" in f for f in cfg.disabled_features())
    cfg = load_config(path, environ={"RELAY_CREDENTIAL_DOWNSTREAM_BILLING_SECRET":
                                     "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
    assert not any("downstream" in f for f in cfg.disabled_features())


def test_secrets_never_show(tmp_path: Path) -> None:
    cfg = load_config(None, environ={"RELAY_CREDENTIAL_ATTESTO_API_KEY": "attesto_test_SECRET"})
    assert "SECRET" not in repr(cfg)
    assert "SECRET" not in str(redacted(cfg))
    assert redacted(cfg)["credentials"]["attesto-api-key"] == "set"


@pytest.mark.parametrize("name", [":", "a/b", "..", "Bad Name"])
def test_a_bad_endpoint_name_is_a_config_error_not_a_crash(tmp_path: Path, name: str) -> None:
    """Found by the fuzz test: a name no credential file can have crashed the loader."""
    path = tmp_path / "relay.toml"
    path.write_text(f'[[downstream]]\nname = "{name}"\nurl = "https://example.com/hook"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert any("name must be lower-case letters" in p for p in err.value.problems)


def test_ingest_writer_is_for_sqlite(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\ningest_writer = true\n[store]\nurl = "postgresql://db/x"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.problems == [
        f"{path}: [server] ingest_writer works with SQLite only; on PostgreSQL run more "
        "instances"]
    cfg = load_config(write(tmp_path, "[server]\nworkers = 1\n"),
                      environ={"RELAY_SERVER__INGEST_WRITER": "true"})
    assert cfg.server.ingest_writer and cfg.server.supervised


def test_input_log_retention_defaults_to_keep_and_is_checked() -> None:
    assert Config().input_log.retention_s == 0  # kept for ever unless configured
    cfg = load_config(None, environ={"RELAY_INPUT_LOG__RETENTION_S": "7776000"})
    assert cfg.input_log.retention_s == 7_776_000
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"RELAY_INPUT_LOG__RETENTION_S": "-1"})
    assert any("[input_log] retention_s" in line for line in err.value.problems)
