"""Who may do what through the queue server, from the profile's ``[queue]`` table.

Two layers, both generated here: the RE Manager's user-group permissions (which plans and
devices each group may queue) and the HTTP server's roles (which API calls each group's key
may make). Each group of the profile is one user of the HTTP server, with one API key.
"""

from __future__ import annotations

import json
from typing import Any

from hutch.profile import Profile, QueueGroup

__all__ = [
    "HTTP_ROLES",
    "QSERVER_GROUP",
    "GroupResourceAccess",
    "group_plans",
    "http_users",
    "user_groups_yaml",
]

#: The user group bluesky-queueserver's ``qserver`` command line sends with every request.
QSERVER_GROUP = "primary"

#: The HTTP server's built-in roles behind each hutch role. Its "admin" role only manages
#: keys and principals, so hutch's admin is also an "expert" (every queue and manager call).
HTTP_ROLES: dict[str, list[str]] = {
    "admin": ["admin", "expert"],
    "scientist": ["advanced"],  # edit and run the queue; no scripts, permissions or config
    "observer": ["observer"],  # read only
}


def group_plans(profile: Profile, group: QueueGroup) -> list[str]:
    """The plans ``group`` may queue: its own list, or every plan of the profile."""
    return list(profile.plans if group.plans is None else group.plans)


def _exact(names: list[str]) -> list[str]:
    # The RE Manager reads ':...' as a regular expression; an anchored one is an exact name,
    # and one that matches nothing stands for an empty list (which its schema refuses).
    return [f":^{name}$" for name in names] or [":^$"]


def user_groups_yaml(profile: Profile) -> str:
    """The RE Manager's user-group permissions file (YAML) for the profile's groups.

    ``root`` filters for every group: the profile's plans, its devices (and their
    components), no private names. Then each group may queue its own plans, and
    ``primary`` (the group bluesky-queueserver's ``qserver`` CLI always sends) those of the
    profile's default group: ``qserver`` works unchanged on the loopback-only control
    socket, where any local client may name any group anyway.
    """
    devices = [":^" + spec.name + "$:?.*:depth=5" for spec in profile.devices]
    groups: dict[str, Any] = {
        "root": {
            "allowed_plans": _exact(profile.plans),
            "forbidden_plans": [":^_"],
            "allowed_devices": devices or [":^$"],
            "forbidden_devices": [":^_:?.*"],
            "allowed_functions": [None],
            "forbidden_functions": [":^_"],
        }
    }
    named = dict(profile.queue.groups)
    named.setdefault(QSERVER_GROUP, profile.queue.groups[profile.queue.default_group])
    for name, group in named.items():
        groups[name] = {
            "allowed_plans": _exact(group_plans(profile, group)),
            "forbidden_plans": [None],
            "allowed_devices": [":?.*:depth=5"] if group.role != "observer" else [":^$"],
            "forbidden_devices": [None],
            "allowed_functions": [":^$"],  # no functions: hutch offers plans only
            "forbidden_functions": [None],
        }
    return json.dumps({"user_groups": groups}, indent=2)  # JSON is YAML


def http_users(profile: Profile) -> dict[str, dict[str, Any]]:
    """The HTTP server's users (one per group) with their roles, for its access policy."""
    return {
        name: {"roles": HTTP_ROLES[group.role], "displayed_name": f"{profile.name} {name}"}
        for name, group in profile.queue.groups.items()
    }


class GroupResourceAccess:
    """HTTP server resource-access policy: each user queues plans as the RE Manager group of
    the same name (a user of the profile is its group), anyone else as ``default_group``.

    Named in the generated HTTP server configuration as
    ``hutch.queue.permissions:GroupResourceAccess``.
    """

    def __init__(self, *, groups: list[str], default_group: str) -> None:
        self._groups = set(groups)
        self._default_group = default_group

    def get_resource_group(self, username: str) -> str:
        """The RE Manager user group whose permissions apply to ``username``'s requests."""
        return username if username in self._groups else self._default_group
