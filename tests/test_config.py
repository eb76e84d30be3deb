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


@pytest.mark.parametrize("url", ["http://attesto.example.com", "http://10.0.0.5:8000",
                                 "http://localhost.example.com", "http://127.0.0.1.nip.io",
                                 "http://[::ffff:10.0.0.1]"])
def test_plain_http_attesto_is_refused_off_loopback(url: str) -> None:
    """The API key travels in the Authorization header: never in clear off this host."""
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"RELAY_ATTESTO__BASE_URL": url})
    assert f"[attesto] base_url {url!r} is plain http" in str(err.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://127.8.9.10", "http://[::1]:80",
                                 "http://localhost:8000", "https://attesto.example.com",
                                 "https://10.0.0.5"])
def test_https_or_loopback_attesto_is_accepted(url: str) -> None:
    assert load_config(None, environ={"RELAY_ATTESTO__BASE_URL": url}).attesto.base_url == url


# ---- credentials in URLs (issue 16 item 9) -----------------------------------------------

DB_PASSWORD = "pa@ss:w/rd"
DB_URL = "postgresql://relay:pa%40ss%3Aw%2Frd@db.internal:5432/relay?sslmode=verify-full"


def test_database_url_credential_wins_over_the_file_and_is_never_shown(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "database-url").write_text(DB_URL + "\n")
    path = write(tmp_path, "[store]\nurl = 'postgresql://other@elsewhere/x'\n")
    cfg = load_config(path, environ={}, credentials_dir=creds)
    assert cfg.store.url == DB_URL
    shown = redacted(cfg)
    assert shown["store"]["url"] == ("postgresql://relay:***@db.internal:5432/relay"
                                     "?sslmode=verify-full")
    assert shown["credentials"]["database-url"] == "set"
    for text in (repr(cfg), str(shown)):
        assert "pa%40ss" not in text and DB_PASSWORD not in text


def test_a_bad_database_url_credential_is_reported_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"RELAY_CREDENTIAL_DATABASE_URL": "mysql://u:hunter2@h/d"})
    assert "credential database-url must start with postgresql://" in str(err.value)
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:secret@h:5/d", "postgresql://u:***@h:5/d"),
    ("postgresql://u@h/d", "postgresql://u@h/d"),
    ("postgresql://h/d?sslmode=require&password=x&sslpassword=y",
     "postgresql://h/d?sslmode=require&password=***&sslpassword=***"),
    ("https://user:tok@hooks.example/x?token=abc&id=7", "https://user:***@hooks.example/x?token=***&id=7"),
    ("https://hooks.example/path", "https://hooks.example/path"),
    ("not a url", "not a url"),
])
def test_redact_url(url: str, shown: str) -> None:
    from relay.config import redact_url

    assert redact_url(url) == shown


def test_every_url_check_config_prints_is_redacted(tmp_path: Path) -> None:
    path = write(tmp_path, "[attesto]\nbase_url = 'https://u:attesto-pw@attesto.example'\n"
                           "[[downstream]]\nname = 'billing'\n"
                           "url = 'https://hook:hook-pw@hooks.example/in?token=hook-token'\n")
    shown = str(redacted(load_config(path, environ={
        "RELAY_STORE__URL": "postgresql://u:store-pw@h/d"})))
    for secret in ("attesto-pw", "hook-pw", "hook-token", "store-pw"):
        assert secret not in shown


def test_metrics_token_credential(tmp_path: Path) -> None:
    cfg = load_config(None, environ={"RELAY_CREDENTIAL_METRICS_TOKEN": "scrape-me"})
    assert cfg.credentials.metrics_token == Secret("scrape-me")
    assert redacted(cfg)["credentials"]["metrics-token"] == "set"
    assert "scrape-me" not in str(redacted(cfg))


def test_header_timeout(tmp_path: Path) -> None:
    assert load_config(None, environ={}).server.header_timeout_s == 15.0
    cfg = load_config(write(tmp_path, "[server]\nheader_timeout_s = 5\n"), environ={})
    assert cfg.server.header_timeout_s == 5.0
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"RELAY_SERVER__HEADER_TIMEOUT_S": "0"})
    assert "[server] header_timeout_s must be > 0" in str(err.value)


def test_limits_section(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[limits]\nuser_rate_per_s = 5\nuser_burst = 10\n"
                                      "restore_timeout_s = 12.5\n"), environ={})
    assert (cfg.limits.user_rate_per_s, cfg.limits.user_burst,
            cfg.limits.restore_timeout_s) == (5.0, 10.0, 12.5)
    assert cfg.limits.service_key_rate_per_s == 500.0
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"RELAY_LIMITS__USER_BURST": "0.5",
                                   "RELAY_LIMITS__SERVICE_KEY_RATE_PER_S": "0"})
    assert "[limits] user_burst must be >= 1" in str(err.value)
    assert "[limits] service_key_rate_per_s must be > 0" in str(err.value)


def test_input_log_retention_defaults_to_keep_and_is_checked() -> None:
    assert Config().input_log.retention_s == 0  # kept for ever unless configured
    cfg = load_config(None, environ={"RELAY_INPUT_LOG__RETENTION_S": "7776000"})
    assert cfg.input_log.retention_s == 7_776_000
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"RELAY_INPUT_LOG__RETENTION_S": "-1"})
    assert any("[input_log] retention_s" in line for line in err.value.problems)
