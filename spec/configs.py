"""The one registry of TLC configs that the project checks.

Every model that ``make modelcheck`` runs, and every one that ``make test``
runs through ``tests/test_*_tlc.py``, is a :class:`CheckedConfig` in
:data:`CONFIGS`.  Each says what TLC must conclude: ``"ok"``, or the kind of
violation a known-bad variant must be rejected with (proof that the check
can fail).  A new spec adds its lines here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spec import tlavalue
from spec.tlc import KINDS, TLCResult, meets, run_tlc

__all__ = [
    "CFG_SECTION", "CONFIGS", "TLA_DIR", "CheckedConfig", "by_name", "outcome", "read_constants",
]

TLA_DIR = Path(__file__).resolve().parent / "tla"


@dataclass(frozen=True)
class CheckedConfig:
    """One model checked by TLC: *module* in *spec_dir* with *config*.

    *expect* is ``"ok"`` or the violation kind TLC must report (``"deadlock"``,
    ``"property"``, ``"invariant"``, ...).  *in_make_test* puts it in the
    quick set (``make test``, ``python -m spec.modelcheck --quick``); the
    others are too slow for that and run in ``make modelcheck`` only.
    *deadlock* False turns TLC's deadlock check off, for a known-bad variant
    whose starving process is also a deadlock of the finite model, so that
    the temporal property it breaks is what TLC reports, every run.
    """

    spec_dir: Path
    module: str
    config: str
    expect: str
    in_make_test: bool
    note: str
    deadlock: bool = True

    def __post_init__(self) -> None:
        if self.expect != "ok" and self.expect not in KINDS:
            raise ValueError(
                f"expect must be 'ok' or one of {', '.join(KINDS)}; got {self.expect!r}"
            )

    @property
    def name(self) -> str:
        """The config's file name without ``.cfg``: how the command line names it."""
        return Path(self.config).stem

    @property
    def config_path(self) -> Path:
        """The absolute path of the config file."""
        return self.spec_dir / self.config

    def constants(self) -> dict[str, Any]:
        """The constants the config assigns (see :func:`read_constants`)."""
        return read_constants(self.config_path)

    def run(self, **kwargs: Any) -> TLCResult:
        """Run TLC on this model; *kwargs* go to :func:`spec.tlc.run_tlc`.

        The deadlock check stays on unless *deadlock* is False: the specs
        here end in an explicit stuttering ``Done`` step, so a state without
        successors is a real deadlock.
        """
        kwargs.setdefault("deadlock", self.deadlock)
        return run_tlc(self.spec_dir, self.module, self.config, **kwargs)


CONFIGS: tuple[CheckedConfig, ...] = (
    CheckedConfig(
        TLA_DIR, "MCRingCredit", "MCRingCredit.cfg", "ok", False,
        "RingCredit, exhaustive: both transports, batch larger than the ring",
    ),
    CheckedConfig(
        TLA_DIR, "MCRingCredit", "MCRingCreditSmall.cfg", "ok", True,
        "RingCredit, small: every action fires, the credit request is needed",
    ),
    CheckedConfig(
        TLA_DIR, "MCRingCredit", "MCRingCreditBatch.cfg", "ok", False,
        "RingCredit, exhaustive: both transports, batch below the ring",
    ),
    CheckedConfig(
        TLA_DIR, "MCRingCredit", "MCRingCreditBatchSmall.cfg", "ok", True,
        "RingCredit, small: full batches returned without a request",
    ),
    CheckedConfig(
        TLA_DIR, "MCRingCredit", "MCRingCreditBad.cfg", "deadlock", True,
        "RingCredit without the credit request: the credit deadlock",
    ),
    CheckedConfig(
        TLA_DIR, "MCRingWakeup", "MCRingWakeup.cfg", "ok", True,
        "RingWakeup on x86-TSO: both fences and the re-check, no lost wake-up",
    ),
    CheckedConfig(
        TLA_DIR, "MCRingWakeup", "MCRingWakeupNoFence.cfg", "invariant", True,
        "RingWakeup without the fences: the lost wake-up (NoLostWakeup)",
    ),
    CheckedConfig(
        TLA_DIR, "MCRingWakeup", "MCRingWakeupNoRecheck.cfg", "invariant", True,
        "RingWakeup without the reader's re-check: the lost wake-up (NoLostWakeup)",
    ),
    CheckedConfig(
        TLA_DIR, "MCConnect", "MCConnect.cfg", "ok", False,
        "Connect, exhaustive: 3 processes, 2 addresses, backlog 2, 2 conn ids, 2 ACLs",
    ),
    CheckedConfig(
        TLA_DIR, "MCConnect", "MCConnectSmall.cfg", "ok", True,
        "Connect, small: every action fires, self-connection, full backlog, reload",
    ),
    CheckedConfig(
        TLA_DIR, "MCConnect", "MCConnectLeadsTo.cfg", "ok", False,
        "Connect, small: the liveness properties in their leads-to form",
    ),
    CheckedConfig(
        TLA_DIR, "MCConnect", "MCConnectBad.cfg", "invariant", True,
        "Connect with queues forgotten on Unlisten/Cleanup: a conn queued at no listener",
    ),
    CheckedConfig(
        TLA_DIR, "MCConnect", "MCConnectBadLiveness.cfg", "property", True,
        "Connect with queues forgotten, liveness only: a queued conn never resolved",
    ),
    CheckedConfig(
        TLA_DIR, "MCConnect", "MCConnectBadAcl.cfg", "property", True,
        "Connect with the ACL checked on the ring path only: a kernel bypass (NoBypass)",
    ),
    CheckedConfig(
        TLA_DIR, "MCTokenSharing", "MCTokenSharing.cfg", "ok", False,
        "TokenSharing, exhaustive safety: 3 processes, 4 threads, both tokens, 2 mortal",
    ),
    CheckedConfig(
        TLA_DIR, "MCTokenSharing", "MCTokenSharingLiveness.cfg", "ok", False,
        "TokenSharing, liveness: 3 processes, 4 threads, the send token, 2 mortal",
    ),
    CheckedConfig(
        TLA_DIR, "MCTokenSharing", "MCTokenSharingSmall.cfg", "ok", True,
        "TokenSharing, small: every action fires, both tokens, the creator mortal",
    ),
    CheckedConfig(
        TLA_DIR, "MCTokenSharing", "MCTokenSharingBadBusy.cfg", "invariant", True,
        "TokenSharing with Take/Release not waiting for busy: two in the ring",
    ),
    CheckedConfig(
        TLA_DIR, "MCTokenSharing", "MCTokenSharingBadRecall.cfg", "property", True,
        "TokenSharing without the new holder's RECALL: a process starves",
        deadlock=False,
    ),
    CheckedConfig(
        TLA_DIR, "MCTokenSharing", "MCTokenSharingBadReclaim.cfg", "invariant", True,
        "TokenSharing with Reclaim dropping the queue: a request lost (RequestsKept)",
    ),
    CheckedConfig(
        TLA_DIR, "MCTokenSharing", "MCTokenSharingBadReclaimLiveness.cfg", "property", True,
        "TokenSharing with Reclaim dropping the queue, liveness only: never granted",
        deadlock=False,
    ),
    CheckedConfig(
        TLA_DIR, "MCFork", "MCFork.cfg", "ok", False,
        "Fork, exhaustive safety: 3 processes (a grandchild), 2 fds, 2-byte calls, 2 mortal",
    ),
    CheckedConfig(
        TLA_DIR, "MCFork", "MCForkLiveness.cfg", "ok", False,
        "Fork, liveness: first send, dead reaped, unheld closed; 3 processes, 2 mortal",
    ),
    CheckedConfig(
        TLA_DIR, "MCFork", "MCForkSmall.cfg", "ok", True,
        "Fork, small: every action fires, both processes mortal, safety and liveness",
    ),
    CheckedConfig(
        TLA_DIR, "MCFork", "MCForkBadCount.cfg", "invariant", True,
        "Fork without the hold pipe: EOF while the child holds the end",
    ),
    CheckedConfig(
        TLA_DIR, "MCFork", "MCForkBadResource.cfg", "invariant", True,
        "Fork with the child keeping the parent's resources (ResourceOwned)",
    ),
    CheckedConfig(
        TLA_DIR, "MCFork", "MCForkBadToken.cfg", "invariant", True,
        "Fork with the child copying the parent's tokens (OneTokenHolder)",
    ),
)


def by_name(name: str) -> CheckedConfig:
    """Return the registered config called *name* (file name, ``.cfg`` optional).

    Raises ``KeyError`` naming the registered configs when there is none.
    """
    stem = name.removesuffix(".cfg")
    for cfg in CONFIGS:
        if cfg.name == stem:
            return cfg
    known = ", ".join(c.name for c in CONFIGS)
    raise KeyError(f"no registered config {name!r}; registered: {known}")


def outcome(cfg: CheckedConfig, result: TLCResult) -> tuple[bool, str]:
    """Return (as expected?, a short verdict) for *result* of checking *cfg*.

    The verdict is ``ok``, ``rejected as expected: <kind>``, or ``FAIL: ...``.
    """
    if meets(result, cfg.expect):
        if cfg.expect == "ok":
            return True, "ok"
        return True, f"rejected as expected: {cfg.expect}"
    if result.ok:
        return False, f"FAIL: expected {cfg.expect}, but no error was found"
    found = "; ".join(f"{v.kind}" + (f" {v.name}" if v.name else "") for v in result.violations)
    return False, f"FAIL: expected {cfg.expect}, found {found}"


# A constant assignment in a .cfg: `Name = value` or `Name <- Def`.
_ASSIGN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+?)\s*$")
CFG_SECTION = re.compile(
    r"^\s*(CONSTANTS?|INIT|NEXT|SPECIFICATION|INVARIANTS?|PROPERTY|PROPERTIES|"
    r"SYMMETRY|VIEW|CONSTRAINTS?|ACTION_CONSTRAINTS?|CHECK_DEADLOCK|POSTCONDITION|"
    r"ALIAS)\b(.*)$"
)


def read_constants(path: str | Path) -> dict[str, Any]:
    """Return the constants a TLC config file assigns, as Python values.

    Reads ``CONSTANT``/``CONSTANTS`` sections of ``Name = value`` lines (the
    value parsed with :func:`spec.tlavalue.parse`; a model value assignment
    ``m = m`` gives a :class:`spec.tlavalue.ModelValue`).  Substitutions
    (``Name <- Def``) are not values and are left out.  ``\\*`` comments are
    ignored.
    """
    constants: dict[str, Any] = {}
    in_constants = False
    for raw in Path(path).read_text().splitlines():
        line = raw.split("\\*", 1)[0]
        if not line.strip():
            continue
        m = CFG_SECTION.match(line)
        if m:
            in_constants = m.group(1).startswith("CONSTANT")
            line = m.group(2)
            if not line.strip():
                continue
        if in_constants and (a := _ASSIGN.match(line)):
            constants[a.group(1)] = tlavalue.parse(a.group(2))
    return constants
