"""SIGHUP: re-read the configuration file and apply what can change while serving.

Changes are found by comparing the file with what it said before (not with the running
configuration): options given on the command line (``--port 0``, ``--data-dir``) are
not reported as changes on every reload. A file with an error changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from broker.config import Config
from broker.config_file import SCHEMA, ConfigError, load_config
from broker.logsetup import set_verbose

log = logging.getLogger("broker")

# Sections whose keys are read once, at start-up.
RESTART_SECTIONS = frozenset({"listener", "storage", "metrics"})
RESTART_KEYS = frozenset({"priority_prefix"})
# Reloaded, but the connections open at the time of the reload keep the value they started with.
NEW_CONNECTIONS_ONLY = frozenset({"max_inflight_messages", "max_packet_size", "max_keepalive", "max_topic_alias"})


def _sections() -> dict[str, str]:
    return {key: section for section, keys in SCHEMA.items() for key in keys}


def config_reloader(path: str, at_start: Config) -> Callable[[Config], None]:
    """A reloader for ``serve``'s list: ``at_start`` is the file as read at start-up."""
    last = at_start
    home = _sections()

    def reload_config(running: Config) -> None:
        nonlocal last
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("reload: %s; the configuration is unchanged", exc)
            return
        changed = [key for key in home if getattr(new, key) != getattr(last, key)]
        if not changed:
            log.info("reload: %s: no changes", path)
            return
        needs_restart = []
        for key in changed:
            section = home[key]
            old_value, new_value = getattr(last, key), getattr(new, key)
            if section in RESTART_SECTIONS or key in RESTART_KEYS:
                needs_restart.append(f"[{section}] {key}")
                continue
            setattr(running, key, new_value)
            setattr(last, key, new_value)
            note = " (for new connections)" if key in NEW_CONNECTIONS_ONLY else ""
            log.info("reload: [%s] %s changed from %r to %r%s", section, key, old_value, new_value, note)
            if key == "verbose":
                set_verbose(bool(new_value))
        if needs_restart:
            log.warning("reload: %s changed in %s: these take effect after a restart",
                        ", ".join(needs_restart), path)

    return reload_config
