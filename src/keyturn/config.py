"""Server configuration: `keyturn.yaml`, overridden by `KEYTURN_*` environment variables.

Precedence, highest first: explicit arguments (CLI flags), environment (`KEYTURN_DATABASE`,
`KEYTURN_LEDGER__ORIGIN` — nested keys use a double underscore), the YAML file, defaults. Relative paths in
the YAML file are resolved against the file's directory, so a configuration can be started from anywhere.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(Exception):
    pass


class IssuerSettings(BaseModel):
    """A trusted JWT issuer: an OIDC provider for humans or a workload identity issuer for agents."""

    model_config = ConfigDict(extra="forbid")
    issuer: str = Field(description="the `iss` of its tokens")
    audience: str = Field(description="the `aud` keyturn's tokens must carry")
    jwks_url: str | None = Field(
        default=None, description="default: discovered from {issuer}/.well-known/openid-configuration"
    )
    kind: Literal["human", "agent"] = Field(default="human", description="who its tokens name")
    groups_claim: str = Field(default="groups", description="claim with the groups (dotted for nested)")
    subject_claim: str = Field(
        default="email", description="claim naming the principal (email must be verified)"
    )
    id_prefix: str | None = Field(default=None, description='default "user:" for humans, "agent:" for agents')


class SecretSettings(BaseModel):
    """A brokered secret, handed to an executor only with the grant of a rule that names it."""

    model_config = ConfigDict(extra="forbid")
    env: str | None = Field(default=None, description="take the value from this environment variable")
    file: Path | None = Field(default=None, description="or from this file")


class LedgerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    origin: str = Field(default="keyturn.local/ledger", description="the log's name in its checkpoints")
    checkpoint_every: int = Field(default=1000, ge=1, description="sign a checkpoint every N events")
    checkpoint_interval: timedelta = Field(default=timedelta(seconds=60), description="or every T")
    witness_dir: Path | None = Field(default=None, description="write every checkpoint here too")
    witness_urls: list[str] = Field(default_factory=list, description="POST every checkpoint to these URLs")


def read_secret(spec: SecretSettings, setting: str) -> str:
    """The value of a configured credential (a channel's token or secret), from the environment or a file,
    without surrounding whitespace; `ConfigError` naming the setting when it has none (a one-line start-up
    error: a server never starts with a channel it cannot authenticate)."""
    if spec.env is not None:
        value = os.environ.get(spec.env, "").strip()
        if not value:
            raise ConfigError(f"{setting}: the environment variable {spec.env} is not set")
        return value
    if spec.file is not None:
        try:
            value = spec.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{setting}: cannot read {spec.file}: {exc.strerror or exc}") from exc
        if not value:
            raise ConfigError(f"{setting}: {spec.file} is empty")
        return value
    raise ConfigError(f"{setting}: give `env` or `file`")


class SlackSettings(BaseModel):
    """The Slack app (docs/channels.md). Targets look like `slack:#ops-approvals` or `slack:C0123ABCD`."""

    model_config = ConfigDict(extra="forbid")
    bot_token: SecretSettings = Field(description="xoxb- bot token (env or file)")
    signing_secret: SecretSettings = Field(description="signs interactivity requests (env or file)")
    app_token: SecretSettings | None = Field(
        default=None, description="xapp- token: Socket Mode instead of the HTTP endpoint"
    )
    api_url: str = Field(default="https://slack.com/api/", description="Web API base URL")
    link_by_email: bool = Field(
        default=False, description="map Slack users to principals by verified e-mail (else: signed links)"
    )


class TeamsConversation(BaseModel):
    """Where a `teams:NAME` target posts: a channel or chat the bot is installed in (docs/channels.md)."""

    model_config = ConfigDict(extra="forbid")
    conversation_id: str = Field(min_length=1, description="e.g. 19:...@thread.tacv2 (a channel)")
    service_url: str = Field(
        min_length=1,
        description="the Bot Connector URL of that conversation, e.g. https://smba.trafficmanager.net/emea/",
    )


class TeamsSettings(BaseModel):
    """The Microsoft Teams bot (docs/channels.md). Targets look like `teams:oncall`.

    The `*_url` settings name Microsoft's endpoints; they exist for sovereign clouds (and so tests can point
    them at local stand-ins), not to be changed for the public cloud."""

    model_config = ConfigDict(extra="forbid")
    app_id: str = Field(
        pattern=r"^\S+$", description="the bot's Entra application (client) id; inbound tokens' audience"
    )
    tenant_id: str = Field(pattern=r"^\S+$", description="the Entra tenant of the bot and its reviewers")
    app_secret: SecretSettings = Field(description="the bot's client secret (env or file)")
    conversations: dict[str, TeamsConversation] = Field(
        default_factory=dict,
        description="target name -> conversation reference (conversation_id, service_url)",
    )
    login_url: str = Field(
        default="https://login.microsoftonline.com",
        description="Entra authority host: the bot's own tokens come from {login_url}/{tenant_id}",
    )
    bot_scope: str = Field(
        default="https://api.botframework.com/.default", description="scope of the bot's outgoing tokens"
    )
    openid_metadata_url: str = Field(
        default="https://login.botframework.com/v1/.well-known/openidconfiguration",
        description="Bot Framework OpenID metadata: its jwks_uri signs inbound activities",
    )
    token_issuer: str = Field(
        default="https://api.botframework.com", description="the `iss` of inbound Bot Framework tokens"
    )


class WebhookSettings(BaseModel):
    """A Standard Webhooks endpoint. Targets look like `webhook:siem`."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="where events are POSTed (redirects are not followed)")
    secret: SecretSettings | None = Field(default=None, description="whsec_… for v1 (HMAC-SHA256)")
    signing_key: SecretSettings | None = Field(
        default=None, description="Ed25519 private key (PEM) for v1a signatures"
    )


def _default_retry_schedule() -> list[timedelta]:
    # The Standard Webhooks schedule (5s, 5m, 30m, 2h, 5h, 10h, 10h), shortened: a reviewer waits on it.
    return [timedelta(seconds=s) for s in (5, 30, 120, 600, 1800, 3600, 7200)]


class DeliverySettings(BaseModel):
    """How the dispatcher delivers outbox rows (docs/channels.md "Delivery and retries")."""

    model_config = ConfigDict(extra="forbid")
    retry_schedule: list[timedelta] = Field(
        default_factory=_default_retry_schedule,
        description="waits between attempts; a row is dead after the last (default 5s 30s 2m 10m 30m 1h 2h)",
    )
    jitter: float = Field(default=0.2, ge=0, le=1, description="each wait varies by up to ± this fraction")
    max_retry_after: timedelta = Field(
        default=timedelta(hours=1), description="cap on a channel's own Retry-After"
    )
    timeout: timedelta = Field(default=timedelta(seconds=10), description="one delivery attempt at most")
    lease: timedelta = Field(
        default=timedelta(seconds=60), description="a replica dying mid-delivery lets its rows go after this"
    )
    max_in_flight: int = Field(default=32, ge=1, description="deliveries under way at once per replica")


class ChannelsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delivery: DeliverySettings = Field(default_factory=DeliverySettings, description="retries, timeouts")
    slack: SlackSettings | None = Field(default=None, description="the Slack app")
    teams: TeamsSettings | None = Field(default=None, description="the Teams bot")
    webhooks: dict[str, WebhookSettings] = Field(default_factory=dict, description="name -> endpoint")


class ConsoleSettings(BaseModel):
    """The web console (docs/console.md): who may log in and how long a session lasts."""

    model_config = ConfigDict(extra="forbid")
    oidc_issuer: str | None = Field(
        default=None, description="log in with this issuer (one of `issuers`, kind human): OIDC code + PKCE"
    )
    client_id: str | None = Field(default=None, description="the console's OIDC client id")
    client_secret: SecretSettings | None = Field(
        default=None, description="the console's OIDC client secret (env or file)"
    )
    redirect_url: str | None = Field(
        default=None, description="default {public_url}/console/login/callback; register it at the provider"
    )
    scopes: str = Field(default="openid email profile groups", description="scopes asked of the provider")
    password_login: bool = Field(
        default=True, description="users of the users file with a `password_hash` (argon2) may log in"
    )
    idle_timeout: timedelta = Field(
        default=timedelta(minutes=30), description="a session unused this long ends"
    )
    absolute_timeout: timedelta = Field(
        default=timedelta(hours=12), description="a session ends this long after login"
    )


class ServerSettings(BaseModel):
    """HTTP serving bounds (docs/operations.md): slow or hostile clients cannot hold the server."""

    model_config = ConfigDict(extra="forbid")
    header_timeout: float = Field(
        default=10.0, gt=0, description="seconds a client has to send a request's headers (slowloris)"
    )
    keep_alive_timeout: float = Field(default=5.0, gt=0, description="seconds an idle connection stays open")
    limit_concurrency: int | None = Field(
        default=16_384,
        ge=1,
        description="connections + requests at once (waiters included; capped by the open-files limit); "
        "more get 503 at once (null: only that cap)",
    )
    shutdown_timeout: float = Field(
        default=5.0, ge=0, description="seconds SIGTERM waits for requests in flight before closing them"
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="largest request body; larger ones get 413 before being read"
    )


class StoreSettings(BaseModel):
    """How the database is written (docs/storage.md)."""

    model_config = ConfigDict(extra="forbid")
    group_commit: bool = Field(
        default=True,
        description="concurrent submits and transitions share one durable commit (false: one commit each)",
    )


class Settings(BaseSettings):
    """Every setting of `keyturn serve`. `keyturn serve --help` lists them."""

    model_config = SettingsConfigDict(env_prefix="KEYTURN_", env_nested_delimiter="__", extra="forbid")

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8300, description="port to listen on")
    tls_certfile: Path | None = Field(
        default=None,
        description="serve HTTPS with this PEM certificate chain (or: TLS at the proxy)",
    )
    tls_keyfile: Path | None = Field(default=None, description="the private key of tls_certfile (PEM)")
    public_url: str | None = Field(
        default=None, description="URL people and agents use to reach this server (review_url)"
    )
    database: str = Field(default="sqlite:///keyturn.db", description="sqlite:///PATH or postgresql://…")
    store: StoreSettings = Field(default_factory=StoreSettings, description="how the database is written")
    policy: list[Path] = Field(default_factory=lambda: [Path("policy.yaml")], description="policy files")
    data_dir: Path = Field(
        default=Path("keyturn-data"),
        description="signing keys (0700) when no key-encryption key is set (a single machine)",
    )
    key_encryption_key: SecretStr | None = Field(
        default=None,
        description="32 random bytes, base64: keys are then kept in the database, sealed under it (replicas)",
    )
    key_encryption_key_file: Path | None = Field(
        default=None, description="or a file holding the key-encryption key"
    )
    users_file: Path | None = Field(default=None, description="users, groups, roles, hashed tokens")
    issuers: list[IssuerSettings] = Field(default_factory=list, description="trusted JWT issuers")
    grant_audience: str = Field(default="keyturn-executor", description="aud claim of grants")
    timer_interval: float = Field(default=1.0, gt=0, description="seconds between expiry/escalation sweeps")
    policy_reload_interval: float = Field(
        default=2.0,
        ge=0,
        description="seconds between checks of the policy files (0: on SIGHUP only)",
    )
    secrets: dict[str, SecretSettings] = Field(default_factory=dict, description="brokered secrets")
    ledger: LedgerSettings = Field(default_factory=LedgerSettings, description="the signed Merkle ledger")
    channels: ChannelsSettings = Field(
        default_factory=ChannelsSettings, description="where notifications go: slack, teams, webhooks"
    )
    console: ConsoleSettings = Field(
        default_factory=ConsoleSettings, description="the web console: OIDC login, sessions"
    )
    log_level: str = Field(default="info", description="critical, error, warning, info or debug")
    server: ServerSettings = Field(default_factory=ServerSettings, description="HTTP serving bounds")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings

    @model_validator(mode="after")
    def _one_kek_source(self) -> Settings:
        if self.key_encryption_key is not None and self.key_encryption_key_file is not None:
            raise ValueError("set key_encryption_key or key_encryption_key_file, not both")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("set both tls_certfile and tls_keyfile, or neither")
        return self

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_certfile is not None else "http"
        return self.public_url or f"{scheme}://{self.host}:{self.port}"


_PATH_KEYS = ("policy", "data_dir", "users_file", "key_encryption_key_file", "tls_certfile", "tls_keyfile")


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read `config_file` (if any), apply the environment, then `overrides` (CLI flags that were given)."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{config_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: expected a mapping of settings at the top level")
        file_values = _resolve_paths(loaded, config_file.parent)
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        from_env = Settings().model_dump(exclude_unset=True)
        return Settings(**_deep_merge(_deep_merge(file_values, from_env), given))
    except ValidationError as exc:
        where = f"{config_file}: " if config_file else ""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"{where}{problems}") from exc


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(values)
    for key in _PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str):
            out[key] = [str(base / value)] if key == "policy" else str(base / value)
        elif isinstance(value, list):
            out[key] = [str(base / str(v)) for v in value]
    database = out.get("database")
    if (
        isinstance(database, str)
        and database.startswith("sqlite:///")
        and not database.startswith("sqlite:////")
    ):
        out["database"] = "sqlite:///" + str(base / database.removeprefix("sqlite:///"))
    ledger = out.get("ledger")
    if isinstance(ledger, dict) and isinstance(ledger.get("witness_dir"), str):
        out["ledger"] = {**ledger, "witness_dir": str(base / ledger["witness_dir"])}
    secrets = out.get("secrets")
    if isinstance(secrets, dict):
        out["secrets"] = {
            name: (
                {**spec, "file": str(base / spec["file"])}
                if isinstance(spec, dict) and spec.get("file")
                else spec
            )
            for name, spec in secrets.items()
        }
    return out


def settings_help() -> str:
    """Every setting with its environment variable, default and meaning: the epilog of `keyturn serve --help`,
    made from the model itself so it can never drift from what the server accepts."""
    lines = ["Settings: keyturn.yaml key (environment variable; default): meaning."]
    for name, field in Settings.model_fields.items():
        lines.append(f"{name} ({_where(f'KEYTURN_{name.upper()}', field)}): {field.description or ''}")
        nested = _nested_model(field.annotation)
        if nested is not None:
            for sub_name, sub in nested.model_fields.items():
                env = (
                    f"KEYTURN_{name.upper()}__{sub_name.upper()}"
                    if nested in (LedgerSettings, ConsoleSettings, StoreSettings)
                    else "YAML only"
                )
                lines.append(f"  {name}.{sub_name} ({_where(env, sub)}): {sub.description or ''}")
    return "\n\n".join(lines)


def _where(env: str, field: Any) -> str:
    if field.is_required():
        return f"{env}; required"
    default = field.get_default(call_default_factory=True)
    if default in (None, [], {}) or isinstance(default, BaseModel):
        return env
    return f"{env}; default {_plain(default)}"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for candidate in (LedgerSettings, ConsoleSettings, StoreSettings, IssuerSettings, SecretSettings):
        if annotation is candidate or candidate in getattr(annotation, "__args__", ()):
            return candidate
    return None


def _plain(value: Any) -> str:
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)
