"""The ACL file in mosquitto's syntax, and the topic algebra that applies it.

::

    # comment
    topic read $SYS/#            # rules before any "user" line: anonymous clients
    user alice
    topic readwrite home/#       # alice's rules
    topic deny home/secret
    pattern read devices/%c/cmd  # patterns: every client, %c = client id, %u = user name
    pattern write devices/%u/state

Access is ``read``, ``write``, ``readwrite`` (the default) or ``deny``; a matching
``deny`` wins over any grant. Wildcard rules follow the matching rules of MQTT, so
``#`` does not cover ``$SYS/...``: $SYS is readable only where a rule names it.

A pattern is applied only if the value it substitutes is safe: a user name or
client id that is empty or contains ``/``, ``+`` or ``#`` could reach other
clients' topics (client id ``dev1/cmd`` with ``devices/%c`` would read
``devices/dev1/cmd``; mosquitto's CVE-2017-7650 was ``+`` and ``#``). For such a
value a granting pattern grants nothing and a denying pattern denies everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.auth.password_file import read_lines
from broker.protocol.topics import SHARE_PREFIX, is_valid_topic_filter, topic_matches

DENY = 0
READ = 1
WRITE = 2
READWRITE = READ | WRITE
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READWRITE, "deny": DENY}


class AclFileError(Exception):
    """The ACL file cannot be used; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Rule:
    access: int  # READ | WRITE | READWRITE | DENY
    topic_filter: str


@dataclass(slots=True)
class ClientRules:
    """The rules that apply to one client, patterns already filled in."""

    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    deny_all: bool = False  # a denying pattern could not be filled in safely


def _safe_value(value: str | None) -> bool:
    return bool(value) and "/" not in value and "+" not in value and "#" not in value  # type: ignore[operator]


@dataclass(slots=True)
class Acl:
    anonymous: list[Rule] = field(default_factory=list)
    users: dict[str, list[Rule]] = field(default_factory=dict)
    patterns: list[Rule] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.anonymous) + len(self.patterns) + sum(len(r) for r in self.users.values())

    def rules_for(self, username: str | None, client_id: str) -> ClientRules:
        """The filters one client may read, write, and may not touch."""
        result = ClientRules()
        own = self.users.get(username, []) if username is not None else self.anonymous
        for rule in own:
            _add(result, rule.access, rule.topic_filter)
        for rule in self.patterns:
            text = rule.topic_filter
            uses_user = "%u" in text
            uses_client = "%c" in text
            if uses_user and username is None:
                continue  # nobody to substitute: the pattern is about named users
            if (uses_user and not _safe_value(username)) or (uses_client and not _safe_value(client_id)):
                if rule.access == DENY:
                    result.deny_all = True
                continue
            if uses_user:
                text = text.replace("%u", username)  # type: ignore[arg-type]
            if uses_client:
                text = text.replace("%c", client_id)
            _add(result, rule.access, text)
        return result


def _add(result: ClientRules, access: int, topic_filter: str) -> None:
    if access == DENY:
        result.deny.append(topic_filter)
        return
    if access & READ:
        result.read.append(topic_filter)
    if access & WRITE:
        result.write.append(topic_filter)


def parse_acl(path: str) -> Acl:
    """Read an ACL file, or raise AclFileError naming the file and line."""
    acl = Acl()
    current: list[Rule] = acl.anonymous
    for number, raw in enumerate(read_lines(path), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if keyword == "user":
            if not rest:
                raise AclFileError(f"{where}: 'user' needs a user name")
            current = acl.users.setdefault(rest, [])
            continue
        if keyword not in ("topic", "pattern"):
            raise AclFileError(f"{where}: unknown keyword {keyword!r} (expected topic, pattern or user)")
        first, _, after = rest.partition(" ")
        access = _ACCESS.get(first)
        topic_filter = after.strip() if access is not None else rest
        if access is None:
            access = READWRITE
        if not topic_filter:
            raise AclFileError(f"{where}: '{keyword}' needs a topic filter ({keyword} [read|write|readwrite|deny] FILTER)")
        checked = topic_filter.replace("%u", "u").replace("%c", "c") if keyword == "pattern" else topic_filter
        if checked.startswith(SHARE_PREFIX):
            raise AclFileError(f"{where}: {topic_filter!r}: rules name topics; a $share subscription is checked by its filter")
        if not is_valid_topic_filter(checked):
            raise AclFileError(f"{where}: {topic_filter!r} is not a valid topic filter")
        rule = Rule(access, topic_filter)
        (acl.patterns if keyword == "pattern" else current).append(rule)
    return acl


# ---- topic algebra ----------------------------------------------------------------------


_WILD = ("+", "#")


def _levels(topic_filter: str) -> list[str]:
    return topic_filter.split("/")


def filters_intersect(a: str, b: str) -> bool:
    """Is there a topic name that both filters match?"""
    if a[:1] == "$" or b[:1] == "$":
        # A wildcard in the first level never matches a $ topic.
        if (a[:1] in _WILD and b[:1] == "$") or (b[:1] in _WILD and a[:1] == "$"):
            return False
    la, lb = _levels(a), _levels(b)
    for index in range(max(len(la), len(lb))):
        x = la[index] if index < len(la) else None
        y = lb[index] if index < len(lb) else None
        if x == "#" or y == "#":
            return True  # "a/#" also matches "a": one ending where the other has # is fine
        if x is None or y is None:
            return False
        if x != "+" and y != "+" and x != y:
            return False
    return True


def filter_covers(outer: str, inner: str) -> bool:
    """Does ``outer`` match every topic that ``inner`` matches?"""
    if outer[:1] in _WILD and inner[:1] == "$":
        return False
    lo, li = _levels(outer), _levels(inner)
    for index, level in enumerate(lo):
        if level == "#":
            return True
        if index >= len(li):
            return False
        other = li[index]
        if other == "#":
            # Only "+/#" at the start matches every topic that a leading "#" does (one level or more).
            return index == 0 and level == "+" and lo[1:] == ["#"]
        if level == "+":
            continue
        if other == "+" or other != level:
            return False
    if len(li) == len(lo):
        return True
    return False


def may_access(rules: ClientRules, access: int, topic: str) -> bool:
    """READ or WRITE on a topic name: no deny matches and some grant does."""
    if rules.deny_all:
        return False
    for denied in rules.deny:
        if topic_matches(denied, topic):
            return False
    for granted in rules.read if access == READ else rules.write:
        if topic_matches(granted, topic):
            return True
    return False


def may_subscribe(rules: ClientRules, topic_filter: str) -> bool:
    """A filter is granted if it can match some topic the client may read.

    A filter wider than the client's rights (``#``) is granted: each delivery is
    checked on its own. One that lies inside a denied filter is refused.
    """
    if rules.deny_all:
        return False
    for denied in rules.deny:
        if filter_covers(denied, topic_filter):
            return False
    return any(filters_intersect(granted, topic_filter) for granted in rules.read)
