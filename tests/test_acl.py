r"""The monitor's access-control rules (impl.monitor.acl).

Rules are written as Python dicts and turned into TOML by :func:`toml_doc`,
so the parser is exercised on every test.  The Hypothesis property at the
end compares :meth:`Acl.decide` with :func:`reference_decide`, a plain loop
over the same dicts written independently of the module.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import json
import os
import select
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impl.monitor.acl import (
    Acl,
    AclError,
    Decision,
    Peer,
    Request,
    default_acl,
    load_acl,
    parse_acl,
)

SOURCE = "t.toml"
CHILD_TIMEOUT = 30


# ---------------------------------------------------------------------------
# Helpers


def toml_value(value: object) -> str:
    """*value* (str, int, float, bool or a list of them) as a TOML value."""
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are valid in TOML basic strings
    return repr(value)


def toml_doc(default: object, rules: list[dict]) -> str:
    """A TOML ACL document; *default* None leaves the key out."""
    lines = [] if default is None else [f"default = {toml_value(default)}"]
    for rule in rules:
        lines.append("[[rule]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in rule.items()]
    return "\n".join(lines) + "\n"


def acl_of(default: str, *rules: dict) -> Acl:
    return parse_acl(toml_doc(default, list(rules)), SOURCE)


def peer(uid: int = 1000, gid: int = 1000, exe: str = "/usr/bin/python3.11",
         cmdline: str = "python3 server.py") -> Peer:
    return Peer(4242, uid, gid, exe, cmdline)


def req(direction: str = "connect", family: str = "inet", address: str = "127.0.0.1",
        port: int | None = 80) -> Request:
    if family == "unix" and port == 80:
        port = None
    return Request(direction, family, address, port)


def unix(address: str, direction: str = "connect") -> Request:
    return Request(direction, "unix", address, None)


# ---------------------------------------------------------------------------
# Order and default


def test_first_match_wins_and_order_matters():
    allow_uid = {"name": "allow-1000", "action": "allow", "uid": 1000}
    deny_port = {"name": "deny-80", "action": "deny", "port": 80}
    both = (peer(uid=1000), req(port=80))  # matched by both rules

    assert acl_of("deny", allow_uid, deny_port).decide(*both) == Decision(True, "allow-1000", 0)
    assert acl_of("deny", deny_port, allow_uid).decide(*both) == Decision(False, "deny-80", 0)
    # Only the second rule matches: its index is reported, not the first's.
    assert acl_of("allow", allow_uid, deny_port).decide(peer(uid=7), req(port=80)) == \
        Decision(False, "deny-80", 1)


@pytest.mark.parametrize("default", ["allow", "deny"])
def test_default_applies_when_nothing_matches(default):
    acl = acl_of(default, {"action": "allow" if default == "deny" else "deny", "uid": 1})
    decision = acl.decide(peer(uid=2), req())
    assert decision == Decision(default == "allow", "default", None)
    assert acl.decide(peer(uid=1), req()).allowed is (default == "deny")


def test_rules_without_name_are_named_by_index():
    acl = acl_of("deny", {"action": "deny", "uid": 5}, {"action": "allow"})
    assert [r.name for r in acl.rules] == ["rule 0", "rule 1"]
    assert acl.decide(peer(uid=6), req()) == Decision(True, "rule 1", 1)


def test_no_rules_and_default_acl():
    assert acl_of("deny").decide(peer(), req()) == Decision(False, "default", None)
    builtin = default_acl()
    assert (builtin.rules, builtin.default, builtin.source) == ((), "allow", "<builtin>")
    assert builtin.decide(peer(), req(direction="listen")).allowed


def test_direction_filtering():
    acl = acl_of("allow", {"name": "no-listen", "action": "deny", "direction": "listen"})
    assert not acl.decide(peer(), req(direction="listen")).allowed
    assert acl.decide(peer(), req(direction="connect")) == Decision(True, "default", None)


def test_all_given_fields_must_match():
    acl = acl_of("deny", {"action": "allow", "uid": 1000, "port": 80, "family": "inet"})
    assert acl.decide(peer(uid=1000), req(port=80)).allowed
    assert not acl.decide(peer(uid=1001), req(port=80)).allowed
    assert not acl.decide(peer(uid=1000), req(port=81)).allowed
    assert not acl.decide(peer(uid=1000), req(family="inet6", address="::1", port=80)).allowed


# ---------------------------------------------------------------------------
# Each field, matching and not matching

# (rule fields, peer, request, matches?)
FIELD_CASES = [
    # uid / gid: ints, inclusive ranges, lists
    ({"uid": "2000-2999"}, peer(uid=1999), req(), False),
    ({"uid": "2000-2999"}, peer(uid=2000), req(), True),
    ({"uid": "2000-2999"}, peer(uid=2999), req(), True),
    ({"uid": "2000-2999"}, peer(uid=3000), req(), False),
    ({"uid": 0}, peer(uid=0), req(), True),
    ({"uid": 0}, peer(uid=1), req(), False),
    ({"uid": [5, "10-12"]}, peer(uid=5), req(), True),
    ({"uid": [5, "10-12"]}, peer(uid=6), req(), False),
    ({"uid": [5, "10-12"]}, peer(uid=12), req(), True),
    ({"uid": "7"}, peer(uid=7), req(), True),
    ({"gid": 100}, peer(gid=100), req(), True),
    ({"gid": 100}, peer(uid=100, gid=101), req(), False),
    ({"gid": "100-200"}, peer(gid=200), req(), True),
    ({"gid": "100-200"}, peer(gid=201), req(), False),
    # port: ints and ranges; never a unix request
    ({"port": [80, "8000-8999"]}, peer(), req(port=80), True),
    ({"port": [80, "8000-8999"]}, peer(), req(port=81), False),
    ({"port": [80, "8000-8999"]}, peer(), req(port=7999), False),
    ({"port": [80, "8000-8999"]}, peer(), req(port=8000), True),
    ({"port": [80, "8000-8999"]}, peer(), req(port=8999), True),
    ({"port": [80, "8000-8999"]}, peer(), req(port=9000), False),
    ({"port": "0-65535"}, peer(), unix("/run/app/a.sock"), False),
    ({"port": 0}, peer(), req(direction="listen", port=0), True),
    # IPv4 networks
    ({"address": "127.0.0.0/8"}, peer(), req(address="127.255.255.255"), True),
    ({"address": "127.0.0.0/8"}, peer(), req(address="128.0.0.0"), False),
    ({"address": "127.0.0.0/8"}, peer(), req(address="126.255.255.255"), False),
    ({"address": "10.1.2.3/8"}, peer(), req(address="10.9.9.9"), True),  # strict=False
    ({"address": "10.0.0.1"}, peer(), req(address="10.0.0.1"), True),
    ({"address": "10.0.0.1"}, peer(), req(address="10.0.0.2"), False),
    # IPv6 networks; versions never cross except through IPv4-mapped addresses
    ({"address": "fd00::/8"}, peer(), req(family="inet6", address="fd12::1"), True),
    ({"address": "fd00::/8"}, peer(), req(family="inet6", address="fe80::1"), False),
    ({"address": "::1"}, peer(), req(family="inet6", address="::1"), True),
    ({"address": "::1"}, peer(), req(family="inet6", address="::2"), False),
    ({"address": "::1"}, peer(), req(address="127.0.0.1"), False),
    # ::/0 holds ::ffff:127.0.0.1, the same endpoint; "IPv6 only" is family = "inet6"
    ({"address": "::/0"}, peer(), req(address="127.0.0.1"), True),
    ({"address": "::/0", "family": "inet6"}, peer(), req(address="127.0.0.1"), False),
    ({"address": "0.0.0.0/0"}, peer(), req(family="inet6", address="::1"), False),
    ({"address": "fe80::/10"}, peer(), req(family="inet6", address="fe80::1%lo"), True),
    ({"address": "10.0.0.0/8"}, peer(), req(family="inet6", address="::ffff:10.0.0.1"), True),
    ({"address": "10.0.0.0/8"}, peer(), req(family="inet6", address="::ffff:11.0.0.1"), False),
    ({"address": "::ffff:0:0/96"}, peer(), req(address="10.0.0.1"), True),
    # wildcard listen addresses are matched as the text they are
    ({"address": "127.0.0.0/8"}, peer(), req("listen", address="0.0.0.0"), False),
    ({"address": "0.0.0.0"}, peer(), req("listen", address="0.0.0.0"), True),
    ({"address": "0.0.0.0/0"}, peer(), req("listen", address="0.0.0.0"), True),
    ({"address": "::1"}, peer(), req("listen", family="inet6", address="::"), False),
    ({"address": "::/0"}, peer(), req("listen", family="inet6", address="::"), True),
    # unix path globs
    ({"address": "/run/app/*.sock"}, peer(), unix("/run/app/a.sock"), True),
    ({"address": "/run/app/*.sock"}, peer(), unix("/run/app/a.sockx"), False),
    ({"address": "/run/app/*.sock"}, peer(), unix("/run/other/a.sock"), False),
    ({"address": "/run/app/*.sock"}, peer(), unix("run/app/a.sock"), False),  # relative
    ({"address": "/tmp/s"}, peer(), unix("/tmp/s"), True),
    # abstract names: "\0name" is matched as "@name", and never as a path
    ({"address": "@abstract*"}, peer(), unix("\0abstract-1"), True),
    ({"address": "@abstract*"}, peer(), unix("\0other"), False),
    ({"address": "@abstract*"}, peer(), unix("@abstract-1"), False),  # a relative path
    ({"address": "/x*"}, peer(), unix("\0/x1"), False),
    # an address item of one kind never matches the other kind
    ({"address": "/run/*"}, peer(), req(address="127.0.0.1"), False),
    ({"address": "0.0.0.0/0"}, peer(), unix("/run/a"), False),
    ({"address": ["0.0.0.0/0", "/run/*"]}, peer(), unix("/run/a"), True),
    # program and cmdline globs, case-sensitive
    ({"program": "/usr/bin/python3*"}, peer(exe="/usr/bin/python3.11"), req(), True),
    ({"program": "/usr/bin/python3*"}, peer(exe="/usr/local/bin/python3"), req(), False),
    ({"program": "/usr/bin/python3*"}, peer(exe="/USR/BIN/PYTHON3"), req(), False),
    ({"program": ["/opt/*", "/usr/bin/curl"]}, peer(exe="/usr/bin/curl"), req(), True),
    ({"program": "*"}, peer(exe=""), req(), True),
    ({"program": "/*"}, peer(exe=""), req(), False),
    ({"cmdline": "*server.py*"}, peer(cmdline="python3 /srv/server.py --port 80"), req(), True),
    ({"cmdline": "*server.py*"}, peer(cmdline="python3 client.py"), req(), False),
    ({"cmdline": ["curl *", "wget *"]}, peer(cmdline="wget http://x"), req(), True),
    # family and direction
    ({"family": "inet6"}, peer(), req(), False),
    ({"family": "inet6"}, peer(), req(family="inet6", address="::1"), True),
    ({"family": ["inet", "unix"]}, peer(), unix("/a"), True),
    ({"direction": "listen"}, peer(), req("connect"), False),
    ({"direction": "listen"}, peer(), req("listen"), True),
    ({"direction": ["listen", "connect"]}, peer(), req("connect"), True),
]


@pytest.mark.parametrize(("fields", "who", "what", "expected"), FIELD_CASES,
                         ids=[f"{i}-{'-'.join(c[0])}" for i, c in enumerate(FIELD_CASES)])
def test_field_matching(fields, who, what, expected):
    # The rule's action is the opposite of the default, so a match is visible.
    acl = acl_of("deny", {"name": "r", "action": "allow", **fields})
    assert acl.decide(who, what) == (Decision(True, "r", 0) if expected
                                     else Decision(False, "default", None))
    # ... and the same with actions flipped: matching does not depend on them.
    flipped = acl_of("allow", {"name": "r", "action": "deny", **fields})
    assert flipped.decide(who, what).allowed is not expected


# ---------------------------------------------------------------------------
# Errors


def test_error_message_format():
    text = toml_doc("deny", [{"name": "ok", "action": "allow"},
                             {"name": "web", "action": "allow", "port": 70000}])
    with pytest.raises(AclError) as info:
        parse_acl(text, "/etc/sd/acl.toml")
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.source, err.index, err.rule_name, err.field) == \
        ("/etc/sd/acl.toml", 1, "web", "port")
    assert str(err).startswith("/etc/sd/acl.toml: rule 1 ('web'): field 'port': ")
    assert "70000" in str(err) and "0-65535" in str(err)


# Errors inside a rule: (fields of rule 1, field named, text that says what is allowed)
RULE_ERRORS = [
    pytest.param({"prot": 80}, "prot", "'port'", id="unknown-key"),
    pytest.param({"action": None}, "action", "'allow', 'deny'", id="action-missing"),
    pytest.param({"action": "permit"}, "action", "'allow', 'deny'", id="action-unknown"),
    pytest.param({"action": 1}, "action", "'allow', 'deny'", id="action-type"),
    pytest.param({"action": ["allow"]}, "action", "must be a string", id="action-list"),
    pytest.param({"direction": "accept"}, "direction", "'listen', 'connect'",
                 id="direction-unknown"),
    pytest.param({"direction": ["listen", 1]}, "direction", "'listen', 'connect'",
                 id="direction-type"),
    pytest.param({"direction": []}, "direction", "empty list", id="direction-empty"),
    pytest.param({"family": "inet4"}, "family", "'inet', 'inet6', 'unix'", id="family-unknown"),
    pytest.param({"uid": -1}, "uid", "0-4294967294", id="uid-negative"),
    pytest.param({"uid": 2**32}, "uid", "0-4294967294", id="uid-too-big"),
    pytest.param({"uid": "3000-2000"}, "uid", "lo > hi", id="uid-lo-gt-hi"),
    pytest.param({"uid": "abc"}, "uid", "lo-hi", id="uid-bad-string"),
    pytest.param({"uid": "-5"}, "uid", "lo-hi", id="uid-negative-string"),
    pytest.param({"uid": 1.5}, "uid", "integer", id="uid-float"),
    pytest.param({"uid": True}, "uid", "integer", id="uid-bool"),
    pytest.param({"uid": []}, "uid", "empty list", id="uid-empty"),
    pytest.param({"gid": [1, "2-x"]}, "gid", "lo-hi", id="gid-bad-range"),
    pytest.param({"port": 70000}, "port", "0-65535", id="port-too-big"),
    pytest.param({"port": -1}, "port", "0-65535", id="port-negative"),
    pytest.param({"port": "8000-70000"}, "port", "0-65535", id="port-range-too-big"),
    pytest.param({"port": "9-8"}, "port", "lo > hi", id="port-lo-gt-hi"),
    pytest.param({"address": "10.0.0.0/33"}, "address", "IP network", id="address-bad-prefix"),
    pytest.param({"address": "not-an-ip"}, "address", "unix glob", id="address-neither"),
    pytest.param({"address": "127.0.0.*"}, "address", "IP network", id="address-ip-glob"),
    pytest.param({"address": 5}, "address", "string", id="address-type"),
    pytest.param({"program": 5}, "program", "glob", id="program-type"),
    pytest.param({"cmdline": ["x", 1]}, "cmdline", "glob", id="cmdline-type"),
    pytest.param({"name": 5}, "name", "non-empty string", id="name-type"),
    pytest.param({"name": ""}, "name", "non-empty string", id="name-empty"),
    pytest.param({"name": "default"}, "name", "reserved", id="name-reserved"),
    pytest.param({"name": "ok"}, "name", "unique", id="name-duplicate"),
    pytest.param({"family": "unix", "port": 80}, "port", "never matches", id="unix-with-port"),
    pytest.param({"family": "unix", "address": "10.0.0.0/8"}, "address", "never matches",
                 id="unix-with-network"),
    pytest.param({"family": ["inet", "inet6"], "address": "/run/*"}, "address",
                 "never matches", id="inet-with-path"),
    pytest.param({"port": 80, "address": "@x"}, "address", "never matches",
                 id="port-with-abstract"),
]


@pytest.mark.parametrize(("fields", "field", "allowed"), RULE_ERRORS)
def test_rule_errors_name_rule_and_field(fields, field, allowed):
    rule = {"action": "allow", **fields}
    rule = {k: v for k, v in rule.items() if v is not None}  # None: leave the key out
    text = toml_doc("deny", [{"name": "ok", "action": "allow"}, rule])
    with pytest.raises(AclError) as info:
        parse_acl(text, SOURCE)
    err, msg = info.value, str(info.value)
    assert (err.source, err.index, err.field) == (SOURCE, 1, field)
    shown = rule["name"] if isinstance(rule.get("name"), str) and rule["name"] else "rule 1"
    assert err.rule_name == shown
    assert msg.startswith(f"{SOURCE}: rule 1 ({shown!r}): field {field!r}: "), msg
    assert allowed in msg


TOP_ERRORS = [
    pytest.param("default = \n", None, "TOML syntax error", id="syntax"),
    pytest.param('default = "deny"\n[[rule]]\naction = "allow"\naction = "deny"\n', None,
                 "line 4", id="syntax-duplicate-key"),
    pytest.param("", "default", "required", id="default-missing"),
    pytest.param('[[rule]]\naction = "allow"\n', "default", "required", id="default-missing-2"),
    pytest.param('default = "maybe"\n', "default", "'allow', 'deny'", id="default-unknown"),
    pytest.param("default = 1\n", "default", "'allow', 'deny'", id="default-type"),
    pytest.param('default = "deny"\nrules = []\n', "rules", "'default', 'rule'",
                 id="unknown-top-key"),
    pytest.param('default = "deny"\n[rule]\naction = "allow"\n', "rule", "[[rule]]",
                 id="rule-not-array"),
    pytest.param('default = "deny"\nrule = [1]\n', "rule", "[[rule]]", id="rule-not-tables"),
]


@pytest.mark.parametrize(("text", "field", "allowed"), TOP_ERRORS)
def test_top_level_errors(text, field, allowed):
    with pytest.raises(AclError) as info:
        parse_acl(text, SOURCE)
    err, msg = info.value, str(info.value)
    assert (err.source, err.index, err.field) == (SOURCE, None, field)
    prefix = f"{SOURCE}: " if field is None else f"{SOURCE}: field {field!r}: "
    assert msg.startswith(prefix), msg
    assert allowed in msg


# ---------------------------------------------------------------------------
# Files


def test_load_acl_from_file_and_reload(tmp_path):
    path = tmp_path / "acl.toml"
    path.write_text(toml_doc("allow", [{"name": "no-db", "action": "deny", "port": 5432}]))
    acl = load_acl(path)
    assert acl.source == str(path)
    assert acl.decide(peer(), req(port=5432)) == Decision(False, "no-db", 0)

    # A reload reads the file again; the old Acl object is unchanged.
    path.write_text(toml_doc("deny", [{"name": "db", "action": "allow", "port": 5432}]))
    new = load_acl(str(path))
    assert new.decide(peer(), req(port=5432)) == Decision(True, "db", 0)
    assert new.decide(peer(), req(port=80)) == Decision(False, "default", None)
    assert acl.decide(peer(), req(port=5432)).allowed is False


def test_load_acl_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_acl(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('default = "deny"\n[[rule]]\naction = "allow"\nport = "x"\n')
    with pytest.raises(AclError, match=rf"^{bad}: rule 0 \('rule 0'\): field 'port': "):
        load_acl(bad)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'default = "deny"\n# caf\xe9\n')
    with pytest.raises(AclError, match="UTF-8") as info:
        load_acl(latin)
    assert info.value.source == str(latin)


# ---------------------------------------------------------------------------
# describe()


def test_describe_is_json_and_round_trips():
    rules = [
        {"name": "a", "action": "allow", "direction": ["listen", "connect"],
         "uid": [1000, "2000-2999"], "gid": "5", "program": "/usr/bin/python3*",
         "cmdline": ["*server.py*"], "family": "inet", "address": ["10.1.2.3/8", "::1"],
         "port": [80, "8000-8999"]},
        {"action": "deny", "address": ["/run/*.sock", "@abs*"]},
    ]
    acl = acl_of("deny", *rules)
    described = json.loads(json.dumps(acl.describe()))
    assert described[0] == {
        "index": 0, "name": "a", "action": "allow", "direction": ["listen", "connect"],
        "uid": [1000, "2000-2999"], "gid": [5], "program": ["/usr/bin/python3*"],
        "cmdline": ["*server.py*"], "family": ["inet"], "address": ["10.0.0.0/8", "::1/128"],
        "port": [80, "8000-8999"],
    }
    assert described[1] == {"index": 1, "name": "rule 1", "action": "deny",
                            "address": ["/run/*.sock", "@abs*"]}
    assert described[2] == {"index": None, "name": "default", "action": "deny"}
    # The description is itself a valid file that gives the same rules.
    again = acl_of("deny", *[{k: v for k, v in d.items() if k != "index"}
                             for d in described[:-1]])
    assert again.rules == acl.rules


# ---------------------------------------------------------------------------
# Peer and Request


def test_peer_from_own_pid():
    me = Peer.from_pid(os.getpid(), os.getuid(), os.getgid())
    assert (me.pid, me.uid, me.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert me.exe == os.path.realpath(sys.executable)
    assert me.cmdline == " ".join(sys.orig_argv)


def test_peer_from_child_then_zombie():
    code = "import sys; print('ready', flush=True); sys.stdin.read()"
    args = [sys.executable, "-c", code, "one", "two words"]
    child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    pidfd = os.pidfd_open(child.pid)
    try:
        # Wait until the child runs: Popen returns once exec has begun, but
        # the kernel fills in /proc/<pid>/cmdline a little later ("" until then).
        ready, _, _ = select.select([child.stdout], [], [], CHILD_TIMEOUT)
        assert ready and child.stdout.readline() == b"ready\n", "child did not start"
        alive = Peer.from_pid(child.pid, 1, 2)
        assert alive == Peer(child.pid, 1, 2, os.path.realpath(sys.executable), " ".join(args))
        child.stdin.close()
        # Exited but not reaped: the pid cannot be reused, /proc has no exe or cmdline.
        ready, _, _ = select.select([pidfd], [], [], CHILD_TIMEOUT)
        assert ready, f"child did not exit within {CHILD_TIMEOUT} s"
        dead = Peer.from_pid(child.pid, 1, 2)
        assert (dead.exe, dead.cmdline) == ("", "")
    finally:
        os.close(pidfd)
        child.kill()
        child.wait(timeout=CHILD_TIMEOUT)
        child.stdin.close()
        child.stdout.close()


def test_peer_from_pid_that_cannot_exist():
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    for pid in (pid_max + 1, 0, -1):
        p = Peer.from_pid(pid, 0, 0)
        assert (p.pid, p.exe, p.cmdline) == (pid, "", "")


@pytest.mark.parametrize(("args", "mentions"), [
    (("accept", "inet", "127.0.0.1", 80), "direction"),
    (("connect", "inet4", "127.0.0.1", 80), "family"),
    (("connect", "inet", "127.0.0.1", 70000), "port"),
    (("connect", "inet", "127.0.0.1", -1), "port"),
    (("connect", "inet", "127.0.0.1", None), "port"),
    (("connect", "inet", "127.0.0.1", True), "port"),
    (("connect", "inet", "::1", 80), "IPv4"),
    (("connect", "inet6", "127.0.0.1", 80), "IPv6"),
    (("connect", "inet", "localhost", 80), "IPv4"),
    (("connect", "inet", "01.2.3.4", 80), "IPv4"),
    (("connect", "unix", "/a", 0), "port"),
    (("connect", "unix", b"/a", None), "str"),
])
def test_bad_request_raises_value_error(args, mentions):
    with pytest.raises(ValueError, match=mentions):
        Request(*args)


def test_request_forms():
    assert unix("\0name").shown_address == "@name"
    assert unix("\0name").abstract and not unix("@name").abstract
    assert unix("/p").shown_address == "/p"
    assert str(unix("\0name", "listen")) == "listen unix @name"
    assert str(req(address="10.0.0.1", port=8)) == "connect inet 10.0.0.1:8"
    assert str(req(family="inet6", address="::1", port=8)) == "connect inet6 [::1]:8"
    # A scope is accepted, as the kernel does, and ignored for matching.
    assert req(family="inet6", address="fe80::1%eth0").ip == ipaddress.IPv6Address("fe80::1")


def test_decision_str_names_the_rule():
    assert str(Decision(False, "no-db", 3)) == "denied by rule 3 ('no-db')"
    assert str(Decision(True, "default", None)) == "allowed by the default"


def test_acl_is_immutable():
    acl = acl_of("deny", {"action": "allow"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        acl.default = "allow"  # type: ignore[misc]
    with pytest.raises(ValueError, match="default"):
        Acl((), "maybe")


# ---------------------------------------------------------------------------
# Property: decide() equals a plain reference loop over the rule dicts

UIDS = range(0, 7)
PORTS = [0, 80, 443, 8080]
EXES = ["/usr/bin/python3.11", "/usr/bin/curl", ""]
CMDLINES = ["python3 server.py", "curl http://x", ""]
PROGRAM_GLOBS = ["/usr/bin/python3*", "/usr/bin/*", "*", "/opt/*", ""]
CMDLINE_GLOBS = ["*server.py*", "curl *", "*", "python3 ?erver.py"]
IP_ITEMS = ["127.0.0.0/8", "10.0.0.0/8", "0.0.0.0/0", "0.0.0.0", "::1", "::/0", "fd00::/8",
            "::ffff:0:0/96", "10.0.0.1"]
UNIX_ITEMS = ["/run/app/*.sock", "/tmp/*", "/tmp/x", "@abstract*", "@*"]
REQUEST_ADDRESSES = {
    "inet": ["127.0.0.1", "10.0.0.1", "0.0.0.0", "192.168.1.1"],
    "inet6": ["::1", "::", "fd00::5", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "fe80::1%lo"],
    "unix": ["/run/app/a.sock", "/tmp/x", "/tmp/y/z", "\0abstract-1", "\0other", "@abstract-1"],
}


def one_or_list(values: st.SearchStrategy) -> st.SearchStrategy:
    return values | st.lists(values, min_size=1, max_size=3)


id_item = st.integers(0, 6) | st.tuples(st.integers(0, 6), st.integers(0, 6)).map(
    lambda t: f"{min(t)}-{max(t)}")
port_item = st.sampled_from(PORTS) | st.sampled_from(["0-100", "80-443", "1000-9000"])


@st.composite
def rule_dicts(draw) -> dict:
    """One rule as it is written in the file, with fields that can all match."""
    rule: dict = {"action": draw(st.sampled_from(["allow", "deny"]))}

    def maybe(key, values):
        if draw(st.booleans()):
            rule[key] = draw(one_or_list(values))

    maybe("direction", st.sampled_from(["listen", "connect"]))
    maybe("uid", id_item)
    maybe("gid", id_item)
    maybe("program", st.sampled_from(PROGRAM_GLOBS))
    maybe("cmdline", st.sampled_from(CMDLINE_GLOBS))
    maybe("family", st.sampled_from(["inet", "inet6", "unix"]))
    families = set(as_list(rule.get("family", ["inet", "inet6", "unix"])))
    if families & {"inet", "inet6"}:
        maybe("port", port_item)
    if "port" in rule:
        families &= {"inet", "inet6"}
    pool = (IP_ITEMS if families & {"inet", "inet6"} else []) + \
        (UNIX_ITEMS if "unix" in families else [])
    maybe("address", st.sampled_from(pool))
    return rule


@st.composite
def peers_and_requests(draw) -> tuple[Peer, Request]:
    who = Peer(draw(st.integers(1, 99999)), draw(st.sampled_from(UIDS)),
               draw(st.sampled_from(UIDS)), draw(st.sampled_from(EXES)),
               draw(st.sampled_from(CMDLINES)))
    family = draw(st.sampled_from(sorted(REQUEST_ADDRESSES)))
    address = draw(st.sampled_from(REQUEST_ADDRESSES[family]))
    port = None if family == "unix" else draw(st.sampled_from(PORTS))
    return who, Request(draw(st.sampled_from(["listen", "connect"])), family, address, port)


def as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def ref_in_range(value: int, item: int | str) -> bool:
    if isinstance(item, int):
        return value == item
    lo, _, hi = item.partition("-")
    return int(lo) <= value <= int(hi or lo)


def ref_address(item: str, r: Request) -> bool:
    if item.startswith("/"):
        return r.family == "unix" and not r.address.startswith("\0") \
            and fnmatch.fnmatchcase(r.address, item)
    if item.startswith("@"):
        return r.family == "unix" and r.address.startswith("\0") \
            and fnmatch.fnmatchcase("@" + r.address[1:], item)
    if r.family == "unix":
        return False
    net = ipaddress.ip_network(item, strict=False)
    ip = ipaddress.ip_address(r.address.split("%")[0])
    same = [ip]
    if ip.version == 4:
        same.append(ipaddress.IPv6Address("::ffff:" + str(ip)))
    elif ip.ipv4_mapped:
        same.append(ip.ipv4_mapped)
    return any(a.version == net.version and a in net for a in same)


def ref_matches(rule: dict, p: Peer, r: Request) -> bool:
    checks = {
        "direction": lambda v: r.direction == v,
        "family": lambda v: r.family == v,
        "uid": lambda v: ref_in_range(p.uid, v),
        "gid": lambda v: ref_in_range(p.gid, v),
        "port": lambda v: r.port is not None and ref_in_range(r.port, v),
        "program": lambda v: fnmatch.fnmatchcase(p.exe, v),
        "cmdline": lambda v: fnmatch.fnmatchcase(p.cmdline, v),
        "address": lambda v: ref_address(v, r),
    }
    for key, value in rule.items():
        if key in checks and not any(checks[key](v) for v in as_list(value)):
            return False
    return True


def reference_decide(default: str, rules: list[dict], p: Peer, r: Request) -> Decision:
    for i, rule in enumerate(rules):
        if ref_matches(rule, p, r):
            return Decision(rule["action"] == "allow", rule.get("name", f"rule {i}"), i)
    return Decision(default == "allow", "default", None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(default=st.sampled_from(["allow", "deny"]),
       rules=st.lists(rule_dicts(), max_size=6),
       named=st.booleans(),
       asks=st.lists(peers_and_requests(), min_size=1, max_size=8))
def test_decide_equals_reference_loop(default, rules, named, asks):
    if named:  # names drawn apart from the rules, so they stay unique
        rules = [{"name": f"r{i}", **rule} for i, rule in enumerate(rules)]
    acl = parse_acl(toml_doc(default, rules), SOURCE)
    assert len(acl.rules) == len(rules)
    for who, what in asks:
        assert acl.decide(who, what) == reference_decide(default, rules, who, what), \
            (who, what)
