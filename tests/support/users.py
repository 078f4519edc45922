"""System users the tests create (as root): the Elasticsearch server's, and the security tests' viewers."""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Sequence


class UserError(RuntimeError):
    """A user could not be created."""


def ensure_system_user(name: str, groups: Sequence[str] = ()) -> pwd.struct_passwd:
    """The system user ``name`` (its own group, no home, no shell), created with useradd when missing.

    ``groups`` are supplementary groups it is added to, also when it existed already.
    """
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", name],
            capture_output=True, check=False,
        )  # fmt: skip
        try:
            pw = pwd.getpwnam(name)  # a concurrent useradd may have won
        except KeyError:
            raise UserError(f"could not create the system user {name!r} (useradd)") from None
    for group in groups:
        subprocess.run(["usermod", "-aG", group, name], capture_output=True, check=True)
    return pw
