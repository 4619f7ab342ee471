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


def reload_access_control(control: AccessControl, config: Config) -> None:
    """SIGHUP: apply the [auth] settings of the (reloaded) configuration and re-read the files;
    a bad file is logged and the previous state stays (never open)."""
    from broker.auth.acl import AclFileError
    from broker.auth.file_backend import FileBackend
    from broker.auth.password_file import PasswordFileError

    control.allow_anonymous = config.allow_anonymous
    control.clientid_prefix_username = config.clientid_prefix_username
    try:
        if isinstance(control.backend, FileBackend):
            control.backend.use_files(config.password_file or None, config.acl_file or None)
        described = control.reload()
    except (PasswordFileError, AclFileError) as exc:
        log.error("%s; not reloaded, the previous password and ACL files stay in force", exc)
        return
    log.info("authentication reloaded: %s", described)



def check_auth_files(config: Config, problems: list[str], warnings: list[str]) -> None:
    """For ``--check-config``: the password and ACL files parse, and no one else can read the passwords."""
    import os
    import stat

    from broker.auth.acl import AclFileError, parse_acl
    from broker.auth.password_file import PasswordFileError
    from broker.auth.password_file import load as load_passwords

    if config.password_file:
        try:
            load_passwords(config.password_file)
        except PasswordFileError as exc:
            problems.append(f"[auth] password_file: {exc}")
        else:
            mode = stat.S_IMODE(os.stat(config.password_file).st_mode)
            if mode & 0o077:
                warnings.append(
                    f"[auth] password_file {config.password_file} has mode {mode:04o}: other users can read "
                    "the hashes (chmod 600; python -m broker passwd writes 0600)"
                )
    if config.acl_file:
        try:
            parse_acl(config.acl_file)
        except AclFileError as exc:
            problems.append(f"[auth] acl_file: {exc}")
