"""Authentication and authorization: who may connect, publish and subscribe.

``base.py`` is the interface a backend implements, ``file_backend.py`` the first
backend (mosquitto-style password and ACL files), ``access.py`` what the core
calls (``engine.auth``), ``contract.py`` the tests every backend must pass, and
``passwd.py`` the ``python -m broker passwd`` command.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.auth.access import AccessControl
    from broker.config import Config

log = logging.getLogger("broker")


class AuthConfigError(Exception):
    """A password or ACL file cannot be used; the message names the file and line."""


def access_control_from_config(config: Config) -> AccessControl:
    """The configured AccessControl; raises AuthConfigError for a bad file."""
    from broker.auth.access import AccessControl
    from broker.auth.acl import AclFileError
    from broker.auth.file_backend import FileBackend
    from broker.auth.password_file import PasswordFileError

    try:
        backend = FileBackend(config.password_file or None, config.acl_file or None)
    except (PasswordFileError, AclFileError) as exc:
        raise AuthConfigError(str(exc)) from None
    backend.warm_up()
    if config.password_file or config.acl_file:
        log.info("authentication: %s", backend.describe())
    return AccessControl(backend, config.allow_anonymous, config.clientid_prefix_username)


def reload_access_control(control: AccessControl) -> None:
    """SIGHUP: re-read the files; a bad one is logged and the previous state stays (never open)."""
    from broker.auth.acl import AclFileError
    from broker.auth.password_file import PasswordFileError

    try:
        described = control.reload()
    except (PasswordFileError, AclFileError) as exc:
        log.error("%s; not reloaded, the previous password and ACL files stay in force", exc)
        return
    log.info("authentication reloaded: %s", described)

