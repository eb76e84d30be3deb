"""Configuration: typed sections (`sections`), loaded from `relay.toml` + `RELAY_*`
overrides + credentials (`loader`, credentials read by `relay.credentials`), and checked
(`checks`). Every problem is reported at once in one `ConfigError`, each line naming its
source (file or variable), section and key.

Pure: stdlib only, plus relay's pure checkers for `[[downstream]]` keys and URLs.
"""

from relay.config.checks import (
    downstream_problems,
    downstream_where,
    redact_url,
    split_keys,
    url_problem,
)
from relay.config.loader import (
    DEFAULT_CONFIG_PATHS,
    ENV_PREFIX,
    find_config_path,
    load_config,
    redacted,
)
from relay.config.sections import (
    MAX_WORKERS,
    PRODUCT_TYPES,
    SECTIONS,
    AttestoConfig,
    Config,
    ConfigError,
    ConsoleConfig,
    DownstreamConfig,
    InputLogConfig,
    JwtConfig,
    LimitsConfig,
    LogConfig,
    OutboxConfig,
    ProductConfig,
    PurchasesConfig,
    SchedulerConfig,
    ServerConfig,
    StoreConfig,
    WebhooksConfig,
)
from relay.credentials import Credentials, Secret

__all__ = [
    "DEFAULT_CONFIG_PATHS", "ENV_PREFIX", "MAX_WORKERS", "PRODUCT_TYPES", "SECTIONS",
    "AttestoConfig", "Config", "ConfigError", "ConsoleConfig", "Credentials", "DownstreamConfig",
    "InputLogConfig", "JwtConfig", "LimitsConfig", "LogConfig", "OutboxConfig",
    "ProductConfig", "PurchasesConfig", "SchedulerConfig", "Secret", "ServerConfig",
    "StoreConfig", "WebhooksConfig", "downstream_problems", "downstream_where",
    "find_config_path", "load_config", "redact_url", "redacted", "split_keys", "url_problem",
]
