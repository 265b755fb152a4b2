"""From the `channels:` settings to `Channel` objects, and the target names a policy may use.

Each channel kind lives in its own module; adding one is one line in `channel_kinds()`: its target prefix
and a function `(settings, store) -> Channel | None` (None: not configured). Target names come from the
settings alone (`target_names`), so `keyturn policy check --config` and the server validate a policy's
`notify` targets the same way, without building a channel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keyturn import config
from keyturn.channels.base import Channel
from keyturn.config import ConfigError, SecretSettings, Settings

if TYPE_CHECKING:
    from keyturn.store import Store


class ChannelConfigError(ConfigError):
    """A channel cannot start from its settings; the message names the setting."""


Builder = Callable[[Settings, "Store | None"], Channel | None]


@dataclass(frozen=True)
class ChannelKind:
    name: str  # the target prefix: "webhook" in "webhook:siem"
    build: Builder  # None when the kind is not configured; the store for what a channel keeps (chat links)


def channel_kinds() -> list[ChannelKind]:
    # Imported here: a channel's module (and its SDK) loads only in a process that builds channels.
    from keyturn.channels import webhook

    return [
        ChannelKind("webhook", webhook.from_settings),
        ChannelKind("slack", _slack),
        ChannelKind("teams", _teams),
    ]


def _slack(settings: Settings, store: Store | None) -> Channel | None:
    if settings.channels.slack is None:
        return None
    from keyturn.channels.slack import SlackChannel

    return SlackChannel.from_settings(settings, store)


def _teams(settings: Settings, store: Store | None) -> Channel | None:
    if settings.channels.teams is None:
        return None
    from keyturn.channels.teams import build_teams_channel

    return build_teams_channel(settings.channels.teams)


def build_channels(settings: Settings, store: Store | None = None) -> dict[str, Channel]:
    """Every configured channel, by kind. Raises `ChannelConfigError` (or the channel's own configuration
    error) naming the setting that is wrong."""
    channels: dict[str, Channel] = {}
    for kind in channel_kinds():
        channel = kind.build(settings, store)
        if channel is not None:
            channels[kind.name] = channel
    return channels


def target_names(settings: Settings) -> frozenset[str]:
    """The targets the configuration defines: exact names, or `KIND:*` where any name of a kind is valid
    (a Slack channel is named by Slack, not by keyturn's configuration)."""
    channels = settings.channels
    names: set[str] = {f"webhook:{name}" for name in channels.webhooks}
    if channels.slack is not None:
        names.add("slack:*")
    if channels.teams is not None:
        names.update(f"teams:{name}" for name in channels.teams.conversations)
    return frozenset(names)


def target_defined(target: str, names: frozenset[str]) -> bool:
    kind = target.split(":", 1)[0]
    return target in names or f"{kind}:*" in names


def read_secret(spec: SecretSettings, setting: str) -> str:
    """`keyturn.config.read_secret`, refused as a `ChannelConfigError`."""
    try:
        return config.read_secret(spec, setting)
    except ConfigError as exc:
        raise ChannelConfigError(str(exc)) from None
