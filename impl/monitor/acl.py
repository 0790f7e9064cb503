r"""Access control for the monitor: ordered rules read from a TOML file.

The monitor checks every ``listen`` and every ``connect`` of a client against
an :class:`Acl`.  The rules are tried in file order and the first rule whose
fields all match decides; when none matches, the file's ``default`` decides.
There is no implicit default: a file without ``default`` is rejected.  A
denied ``connect`` reaches the client as :exc:`ConnectionRefusedError`, a
denied ``listen`` as :exc:`PermissionError`; the :class:`Decision` names the
rule that matched, for the monitor's log.

The file::

    default = "deny"                 # required: "allow" or "deny"

    [[rule]]
    name = "web-to-db"               # optional; defaults to "rule <index>"
    action = "allow"                 # required: "allow" or "deny"
    direction = "connect"            # "listen", "connect" or a list of them
    uid = [1000, "2000-2999"]        # integers or "lo-hi" ranges, both ends included
    gid = 100                        # the same forms
    program = "/usr/bin/python3*"    # fnmatch glob(s) on the executable's path
    cmdline = "*server.py*"          # fnmatch glob(s) on the command line
    family = "inet"                  # "inet", "inet6", "unix" or a list of them
    address = ["127.0.0.0/8", "::1", "/run/app/*.sock", "@abstract*"]
    port = [80, "8000-8999"]         # integers or "lo-hi" ranges within 0-65535

    [[rule]]
    name = "no-other-listeners"
    action = "deny"
    direction = "listen"

Every field but ``action`` is optional, and an absent field matches anything.
A field given as a list matches when any item matches; an empty list is an
error (it would match nothing, which is never what was meant).  Rule names
must be unique and ``"default"`` is reserved for the default.

What each field is matched against:

``uid``, ``gid``
    The client's ids from ``SO_PEERCRED``, never from the client's word.
    Ids run from 0 to 4294967294 ((uid_t)-1 is not an id).
``program``, ``cmdline``
    :attr:`Peer.exe` (the target of ``/proc/<pid>/exe``; ``""`` when it
    cannot be read, and ending in ``" (deleted)"`` if the binary was
    replaced) and :attr:`Peer.cmdline` (the arguments joined by spaces),
    with :func:`fnmatch.fnmatchcase`.  These identify a program; they do not
    authenticate it against processes of the same uid, which can rewrite
    their own command line or be ptraced.  The uid is the security boundary.
``address``
    An item starting with ``/`` is a glob on a unix socket path; one starting
    with ``@`` is a glob on an abstract unix name (``"\0name"`` in a request
    is matched as ``"@name"``); anything else must be an IP network for
    :func:`ipaddress.ip_network` (``strict=False``; a bare address is a /32
    or /128).  An item of one kind never matches the other kind, a path
    glob never matches an abstract name and vice versa, and a relative unix
    path in a request matches no path glob (the monitor passes absolute
    paths).  ``*`` in a glob also matches ``/``.  An IPv4 address and its
    IPv4-mapped IPv6 form (``::ffff:a.b.c.d``) are the same endpoint to the
    kernel, so each matches the networks of both forms: a rule for
    ``10.0.0.0/8`` cannot be sidestepped by connecting to
    ``::ffff:10.0.0.1``.  So ``::/0`` matches IPv4 requests too; to mean
    "IPv6 requests only", write ``family = "inet6"``.
    A wildcard listen address is matched as the text it is: a listen on
    ``0.0.0.0`` or ``::`` matches ``0.0.0.0/0`` or ``::/0`` (or the
    wildcard itself), but not ``127.0.0.0/8``, although the kernel socket
    also accepts connections on 127.0.0.1.  Name the wildcards explicitly
    in rules that govern listens.
``port``
    The port in the request; it never matches a unix request.  For a listen
    this is the port the client asked for (0 for an ephemeral port) unless
    the monitor passes the port the kernel assigned.
``direction``, ``family``
    The request's direction and address family.

A rule that can never match because its fields contradict each other (a
``port`` or an IP network with ``family = "unix"``, a unix glob with a
``port`` ...) is rejected, as are unknown keys, wrong types, bad ranges, bad
networks, an unknown action, direction or family, a missing ``default`` and
TOML syntax errors.  The :exc:`AclError` names the file, the rule (index and
name), the field and what is allowed.

An :class:`Acl` is immutable.  To reload, the monitor builds a new one with
:func:`load_acl` and swaps it in for new requests; if loading fails the old
one stays in force.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

__all__ = [
    "ACTIONS",
    "DIRECTIONS",
    "FAMILIES",
    "Acl",
    "AclError",
    "Decision",
    "Peer",
    "Request",
    "Rule",
    "default_acl",
    "load_acl",
    "parse_acl",
]

ACTIONS = ("allow", "deny")
DIRECTIONS = ("listen", "connect")
FAMILIES = ("inet", "inet6", "unix")
MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to setresuid and is never a process's id
MAX_PORT = 65535

_IP_FAMILIES = frozenset({"inet", "inet6"})
_RULE_KEYS = (
    "name", "action", "direction", "uid", "gid", "program", "cmdline", "family", "address",
    "port",
)
_TOP_KEYS = ("default", "rule")
_RANGE_RE = re.compile(r"([0-9]+)(?:-([0-9]+))?")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# ---------------------------------------------------------------------------
# Who asks, what is asked, and the answer


@dataclass(frozen=True)
class Peer:
    """The client process that asks: pid, uid and gid come from SO_PEERCRED."""

    pid: int
    uid: int
    gid: int
    exe: str = ""
    cmdline: str = ""

    @classmethod
    def from_pid(cls, pid: int, uid: int, gid: int) -> Peer:
        """Describe process *pid*, reading its executable and command line from /proc.

        Either string is ``""`` when it cannot be read (the process is gone,
        is a zombie, or belongs to another user).  The caller reads this
        while the client's control connection is open, so that *pid* cannot
        have been reused by another process.  (Right after ``execve`` the
        kernel shows an empty command line for a moment; a client that has
        connected to the monitor is long past that.)
        """
        return cls(pid, uid, gid, _read_exe(pid), _read_cmdline(pid))


def _read_exe(pid: int) -> str:
    """The target of /proc/<pid>/exe, or "" if it cannot be read."""
    if pid <= 0:  # SO_PEERCRED gives 0 for a peer outside our pid namespace
        return ""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _read_cmdline(pid: int) -> str:
    """/proc/<pid>/cmdline with its NUL separators turned into spaces, or ""."""
    if pid <= 0:
        return ""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read()
    except OSError:
        return ""
    # Strip all trailing NULs, not just the terminator: a process that
    # rewrote its title (setproctitle) pads the old argv area with NULs.
    return os.fsdecode(data.rstrip(b"\0").replace(b"\0", b" "))


@dataclass(frozen=True)
class Request:
    """One ``listen`` or ``connect`` to be checked.

    ``address`` is IP text for ``inet``/``inet6`` (an IPv4 address for
    ``inet``, an IPv6 address, possibly with a ``%scope``, which is ignored,
    for ``inet6``) and
    a path or an abstract name starting with ``"\\0"`` for ``unix``; ``port``
    is 0-65535 for IP and ``None`` for unix.  Anything else raises
    :exc:`ValueError`, so a malformed request can never slip past a rule.
    """

    direction: str
    family: str
    address: str
    port: int | None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {_choices_text(DIRECTIONS)}, "
                             f"not {self.direction!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {_choices_text(FAMILIES)}, "
                             f"not {self.family!r}")
        if not isinstance(self.address, str):
            raise ValueError(f"address must be a str, not {type(self.address).__name__}")
        if self.family == "unix":
            if self.port is not None:
                raise ValueError(f"port must be None for a unix request, not {self.port!r}")
            return
        if isinstance(self.port, bool) or not isinstance(self.port, int) \
                or not 0 <= self.port <= MAX_PORT:
            raise ValueError(f"port must be an int in 0-{MAX_PORT} for an {self.family} "
                             f"request, not {self.port!r}")
        self.ip  # noqa: B018 -- parse now so that a bad address fails at construction

    @cached_property
    def ip(self) -> IPAddress | None:
        """The parsed address of an IP request; None for unix."""
        if self.family == "unix":
            return None
        kind = ipaddress.IPv4Address if self.family == "inet" else ipaddress.IPv6Address
        # A scope ("%eth0") says which link, not which address: networks do
        # not depend on it, and ipaddress rejects some that the kernel takes.
        text = self.address.split("%", 1)[0] if kind is ipaddress.IPv6Address else self.address
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"address {self.address!r} is not an "
                             f"{'IPv4' if kind is ipaddress.IPv4Address else 'IPv6'} address "
                             f"(family {self.family!r})") from None

    @cached_property
    def _ip_forms(self) -> tuple[IPAddress, ...]:
        """The address and its other form: IPv4 <-> IPv4-mapped IPv6 (same endpoint)."""
        ip = self.ip
        if isinstance(ip, ipaddress.IPv4Address):
            return (ip, ipaddress.IPv6Address(f"::ffff:{ip}"))
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return (ip, ip.ipv4_mapped)
        return () if ip is None else (ip,)

    @property
    def abstract(self) -> bool:
        """True for a unix request naming an abstract socket (address starts with NUL)."""
        return self.family == "unix" and self.address.startswith("\0")

    @property
    def shown_address(self) -> str:
        """The address as rules and logs show it: an abstract name as ``@name``."""
        return "@" + self.address[1:] if self.abstract else self.address

    def __str__(self) -> str:
        if self.family == "unix":
            where = self.shown_address
        elif self.family == "inet6":
            where = f"[{self.address}]:{self.port}"
        else:
            where = f"{self.address}:{self.port}"
        return f"{self.direction} {self.family} {where}"


@dataclass(frozen=True)
class Decision:
    """The answer for one request, and which rule gave it (for the log)."""

    allowed: bool
    rule: str
    index: int | None

    def __str__(self) -> str:
        verdict = "allowed" if self.allowed else "denied"
        if self.index is None:
            return f"{verdict} by the default"
        return f"{verdict} by rule {self.index} ({self.rule!r})"


# ---------------------------------------------------------------------------
# Rules and the ACL


@dataclass(frozen=True)
class Rule:
    """One parsed rule.  ``None`` in a field means the rule did not give it (any).

    Ranges are inclusive ``(lo, hi)`` pairs; ``addresses`` holds IP networks
    and unix globs (strings starting with ``/`` or ``@``) in file order.
    """

    name: str
    action: str
    directions: tuple[str, ...] | None = None
    uids: tuple[tuple[int, int], ...] | None = None
    gids: tuple[tuple[int, int], ...] | None = None
    programs: tuple[str, ...] | None = None
    cmdlines: tuple[str, ...] | None = None
    families: tuple[str, ...] | None = None
    addresses: tuple[IPNetwork | str, ...] | None = None
    ports: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {_choices_text(ACTIONS)}, "
                             f"not {self.action!r}")

    def matches(self, peer: Peer, req: Request) -> bool:
        """True when every field the rule gives matches *peer* and *req*."""
        return (
            (self.directions is None or req.direction in self.directions)
            and (self.families is None or req.family in self.families)
            and (self.uids is None or _in_ranges(peer.uid, self.uids))
            and (self.gids is None or _in_ranges(peer.gid, self.gids))
            and (self.programs is None or _any_glob(peer.exe, self.programs))
            and (self.cmdlines is None or _any_glob(peer.cmdline, self.cmdlines))
            and (self.ports is None
                 or (req.port is not None and _in_ranges(req.port, self.ports)))
            and (self.addresses is None or _address_matches(self.addresses, req))
        )

    def describe(self) -> dict:
        """The rule as a JSON-able dict, in the file's key names, given fields only."""
        out: dict = {"name": self.name, "action": self.action}
        for key, value in (
            ("direction", self.directions),
            ("uid", _ranges_text(self.uids)),
            ("gid", _ranges_text(self.gids)),
            ("program", self.programs),
            ("cmdline", self.cmdlines),
            ("family", self.families),
            ("address", None if self.addresses is None else [str(a) for a in self.addresses]),
            ("port", _ranges_text(self.ports)),
        ):
            if value is not None:
                out[key] = list(value)
        return out


@dataclass(frozen=True)
class Acl:
    """Ordered rules and an explicit default; the first matching rule decides."""

    rules: tuple[Rule, ...]
    default: str
    source: str = "<builtin>"

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        if self.default not in ACTIONS:
            raise ValueError(f"default must be one of {_choices_text(ACTIONS)}, "
                             f"not {self.default!r}")

    def decide(self, peer: Peer, req: Request) -> Decision:
        """Decide *req* from *peer*: the first matching rule, else the default."""
        for index, rule in enumerate(self.rules):
            if rule.matches(peer, req):
                return Decision(rule.action == "allow", rule.name, index)
        return Decision(self.default == "allow", "default", None)

    def describe(self) -> list[dict]:
        """The rules in order as JSON-able dicts, then the default as the last entry.

        Each rule's dict has ``index``, ``name``, ``action`` and the fields
        it gives; the last entry is ``{"index": None, "name": "default",
        "action": ...}``, the same way a :class:`Decision` names the default.
        """
        out = [{"index": i, **rule.describe()} for i, rule in enumerate(self.rules)]
        out.append({"index": None, "name": "default", "action": self.default})
        return out


def default_acl() -> Acl:
    """The ACL used when no file is configured: no rules, everything allowed."""
    return Acl((), "allow", "<builtin>")


# ---------------------------------------------------------------------------
# Matching helpers


def _in_ranges(value: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(lo <= value <= hi for lo, hi in ranges)


def _any_glob(text: str, globs: Iterable[str]) -> bool:
    # fnmatchcase: file names and command lines are case-sensitive on Linux.
    return any(fnmatch.fnmatchcase(text, g) for g in globs)


def _address_matches(items: Iterable[IPNetwork | str], req: Request) -> bool:
    if req.family == "unix":
        shown, abstract = req.shown_address, req.abstract
        return any(
            isinstance(item, str) and item.startswith("@") == abstract
            and fnmatch.fnmatchcase(shown, item)
            for item in items
        )
    forms = req._ip_forms
    # Network membership is False across IP versions, so mixing is safe.
    return any(not isinstance(item, str) and any(ip in item for ip in forms) for item in items)


def _ranges_text(ranges: tuple[tuple[int, int], ...] | None) -> list[int | str] | None:
    if ranges is None:
        return None
    return [lo if lo == hi else f"{lo}-{hi}" for lo, hi in ranges]


# ---------------------------------------------------------------------------
# Parsing


class AclError(ValueError):
    """A bad ACL file.  The message names the file, the rule, the field and what is allowed.

    The parts are also attributes: ``source``, ``index`` and ``rule_name``
    (``None`` outside a rule) and ``field`` (``None`` for a syntax error).
    """

    def __init__(self, source: str, problem: str, *, index: int | None = None,
                 rule_name: str | None = None, field: str | None = None) -> None:
        self.source = source
        self.index = index
        self.rule_name = rule_name
        self.field = field
        self.problem = problem
        where = source
        if index is not None:
            where += f": rule {index} ({rule_name!r})"
        if field is not None:
            where += f": field {field!r}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class _Where:
    """Where in the file the parser is, to build AclErrors."""

    source: str
    index: int | None = None
    rule_name: str | None = None

    def error(self, field: str | None, problem: str) -> AclError:
        return AclError(self.source, problem, index=self.index, rule_name=self.rule_name,
                        field=field)


def parse_acl(text: str, source: str = "<string>") -> Acl:
    """Parse the TOML *text* of an ACL; *source* names it in error messages.

    Raises :exc:`AclError` for anything the module docstring does not allow.
    """
    top = _Where(source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise top.error(None, f"TOML syntax error: {exc}") from None
    for key in doc:
        if key not in _TOP_KEYS:
            raise top.error(key, f"unknown top-level key; allowed: {_choices_text(_TOP_KEYS)}")
    if "default" not in doc:
        raise top.error("default", f"missing; it is required and must be one of "
                                   f"{_choices_text(ACTIONS)}")
    default = _one_of(top, "default", doc["default"], ACTIONS)
    tables = doc.get("rule", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise top.error("rule", "must be an array of tables, each written [[rule]]")
    rules = tuple(_parse_rule(source, i, t) for i, t in enumerate(tables))
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise _Where(source, i, rule.name).error(
                "name", f"duplicate name; rule {seen[rule.name]} has it too; names must be unique")
        seen[rule.name] = i
    return Acl(rules, default, source)


def load_acl(path: str | os.PathLike) -> Acl:
    """Read and parse the ACL file at *path*.  OSError from reading passes through."""
    source = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AclError(source, f"not UTF-8 text ({exc}); TOML files are UTF-8") from None
    return parse_acl(text, source)


def _parse_rule(source: str, index: int, table: dict) -> Rule:
    name = table.get("name", f"rule {index}")
    shown = name if isinstance(name, str) and name else f"rule {index}"
    where = _Where(source, index, shown)
    if "name" in table:
        if not isinstance(name, str) or not name:
            raise where.error("name", f"must be a non-empty string, not {_show(name)}")
        if name == "default":
            raise where.error("name", "'default' is reserved for the default decision")
    for key in table:
        if key not in _RULE_KEYS:
            raise where.error(key, f"unknown key; allowed: {_choices_text(_RULE_KEYS)}")
    if "action" not in table:
        raise where.error("action", f"missing; it is required and must be one of "
                                    f"{_choices_text(ACTIONS)}")

    def get(key, parse, *args):
        return parse(where, key, table[key], *args) if key in table else None

    families = get("family", _choice_list, FAMILIES)
    ports = get("port", _ranges, MAX_PORT)
    addresses = get("address", _addresses)
    _check_satisfiable(where, families, ports, addresses)
    return Rule(
        name=name,
        action=_one_of(where, "action", table["action"], ACTIONS),
        directions=get("direction", _choice_list, DIRECTIONS),
        uids=get("uid", _ranges, MAX_ID),
        gids=get("gid", _ranges, MAX_ID),
        programs=get("program", _globs),
        cmdlines=get("cmdline", _globs),
        families=families,
        addresses=addresses,
        ports=ports,
    )


def _items(where: _Where, field: str, value: object) -> list:
    """A field's value as a list: a list as it is (not empty), anything else as one item."""
    if isinstance(value, list):
        if not value:
            raise where.error(field, "an empty list matches nothing; "
                                     "leave the field out to match anything")
        return value
    return [value]


def _one_of(where: _Where, field: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise where.error(field, f"must be a string, one of {_choices_text(allowed)}, "
                                 f"not {_show(value)}")
    if value not in allowed:
        raise where.error(field, f"unknown {field} {value!r}; allowed: {_choices_text(allowed)}")
    return value


def _choice_list(where: _Where, field: str, value: object,
                 allowed: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_one_of(where, field, v, allowed) for v in _items(where, field, value))


def _globs(where: _Where, field: str, value: object) -> tuple[str, ...]:
    items = _items(where, field, value)
    for item in items:
        if not isinstance(item, str):
            raise where.error(field, f"must be a glob string or a list of them, "
                                     f"not {_show(item)}")
    return tuple(items)


def _ranges(where: _Where, field: str, value: object,
            maximum: int) -> tuple[tuple[int, int], ...]:
    return tuple(_range(where, field, v, maximum) for v in _items(where, field, value))


def _range(where: _Where, field: str, item: object, maximum: int) -> tuple[int, int]:
    allowed = f"allowed: 0-{maximum}"
    if isinstance(item, int) and not isinstance(item, bool):
        if not 0 <= item <= maximum:
            raise where.error(field, f"{item} is out of range; {allowed}")
        return (item, item)
    if not isinstance(item, str):
        raise where.error(field, f"must be an integer, a \"lo-hi\" string or a list of them, "
                                 f"not {_show(item)}")
    m = _RANGE_RE.fullmatch(item)
    if m is None:
        raise where.error(field, f"bad range {item!r}; write an integer or \"lo-hi\" "
                                 f"with 0 <= lo <= hi <= {maximum}")
    lo = int(m.group(1))
    hi = lo if m.group(2) is None else int(m.group(2))
    if hi > maximum:
        raise where.error(field, f"range {item!r} is out of range; {allowed}")
    if lo > hi:
        raise where.error(field, f"range {item!r} has lo > hi; write \"lo-hi\" with lo <= hi")
    return (lo, hi)


def _addresses(where: _Where, field: str, value: object) -> tuple[IPNetwork | str, ...]:
    out: list[IPNetwork | str] = []
    for item in _items(where, field, value):
        if not isinstance(item, str):
            raise where.error(field, f"must be a string or a list of strings, not {_show(item)}")
        if item.startswith(("/", "@")):
            out.append(item)
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise where.error(field, f"{item!r} is neither an IP network (such as "
                                     f"\"10.0.0.0/8\" or \"::1\") nor a unix glob (starting "
                                     f"with '/' for a path or '@' for an abstract name)"
                              ) from None
    return tuple(out)


def _check_satisfiable(where: _Where, families: tuple[str, ...] | None,
                       ports: object, addresses: tuple[IPNetwork | str, ...] | None) -> None:
    """Reject a rule whose fields contradict each other, so that it could never match."""
    possible = set(FAMILIES if families is None else families)
    if ports is not None:
        if not possible & _IP_FAMILIES:
            raise where.error("port", "never matches: a port matches only inet/inet6 "
                                      "requests, and the rule's family excludes them")
        possible &= _IP_FAMILIES
    for item in addresses or ():
        kinds = {"unix"} if isinstance(item, str) else _IP_FAMILIES
        if not possible & kinds:
            limit = "family and port" if ports is not None else "family"
            raise where.error("address", f"item {str(item)!r} never matches: it matches only "
                                         f"{'/'.join(sorted(kinds))} requests, which the "
                                         f"rule's {limit} exclude")


def _choices_text(allowed: Iterable[str]) -> str:
    return ", ".join(repr(a) for a in allowed)


_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
               dict: "table"}


def _show(value: object) -> str:
    """A value and its TOML type, for error messages."""
    kind = _TOML_TYPES.get(type(value), type(value).__name__)
    return f"{value!r} ({kind})"
