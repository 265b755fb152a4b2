"""Server configuration: `keyturn.yaml`, overridden by `KEYTURN_*` environment variables.

Precedence, highest first: explicit arguments (CLI flags), environment (`KEYTURN_DATABASE`,
`KEYTURN_LEDGER__ORIGIN` — nested keys use a double underscore), the YAML file, defaults. Relative paths in
the YAML file are resolved against the file's directory, so a configuration can be started from anywhere.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
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


class TeamsSettings(BaseModel):
    """The Microsoft Teams bot (docs/channels.md). Targets look like `teams:oncall`."""

    model_config = ConfigDict(extra="forbid")
    app_id: str = Field(description="the bot's Entra application (client) id")
    tenant_id: str = Field(description="the Entra tenant the bot belongs to")
    app_secret: SecretSettings = Field(description="the bot's client secret (env or file)")
    conversations: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="target name -> conversation reference (conversation_id, service_url)",
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


class Settings(BaseSettings):
    """Every setting of `keyturn serve`. `keyturn serve --help` lists them."""

    model_config = SettingsConfigDict(env_prefix="KEYTURN_", env_nested_delimiter="__", extra="forbid")

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8300, description="port to listen on")
    public_url: str | None = Field(
        default=None, description="URL people and agents use to reach this server (review_url)"
    )
    database: str = Field(default="sqlite:///keyturn.db", description="sqlite:///PATH or postgresql://…")
    policy: list[Path] = Field(default_factory=lambda: [Path("policy.yaml")], description="policy files")
    data_dir: Path = Field(default=Path("keyturn-data"), description="signing keys (0700)")
    users_file: Path | None = Field(default=None, description="users, groups, roles, hashed tokens")
    issuers: list[IssuerSettings] = Field(default_factory=list, description="trusted JWT issuers")
    grant_audience: str = Field(default="keyturn-executor", description="aud claim of grants")
    timer_interval: float = Field(default=1.0, gt=0, description="seconds between expiry/escalation sweeps")
    secrets: dict[str, SecretSettings] = Field(default_factory=dict, description="brokered secrets")
    ledger: LedgerSettings = Field(default_factory=LedgerSettings, description="the signed Merkle ledger")
    channels: ChannelsSettings = Field(
        default_factory=ChannelsSettings, description="where notifications go: slack, teams, webhooks"
    )
    log_level: str = Field(default="info", description="critical, error, warning, info or debug")

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

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


_PATH_KEYS = ("policy", "data_dir", "users_file")


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
                    f"KEYTURN_{name.upper()}__{sub_name.upper()}" if nested is LedgerSettings else "YAML only"
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
    for candidate in (LedgerSettings, IssuerSettings, SecretSettings):
        if annotation is candidate or candidate in getattr(annotation, "__args__", ()):
            return candidate
    return None


def _plain(value: Any) -> str:
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)
