"""Build the cffi extension ``impl.ring._ring_c`` (out-of-line API mode).

``setup.py`` names ``impl/ring/_build.py:ffibuilder``, so ``pip install -e .``
compiles it; for development, compile in place with::

    .venv/bin/python impl/ring/_build.py

The C code is ``ring.h``.  The ring layout is not repeated there: this script
loads ``layout.py`` and passes every offset as an ``SD_*`` macro, and exposes
the same names back to Python so that ``impl.ring`` can refuse a stale build
whose layout differs from the current ``layout.py``.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
MODULE = "impl.ring._ring_c"


def _load_layout():
    # Load layout.py by path: at build time the package may not be importable.
    spec = importlib.util.spec_from_file_location("_sd_ring_layout", HERE / "layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layout_macros() -> dict[str, str]:
    """Return the ``SD_*`` macro definitions that ring.h needs, from layout.py."""
    lay = _load_layout()
    macros = {f"SD_{name}": str(getattr(lay, name)) for name in lay.__all__
              if name.startswith("OFF_")}
    macros["SD_DATA_OFF"] = str(lay.DATA_OFF)
    macros["SD_MAGIC"] = f"{lay.MAGIC:#x}ULL"
    return macros


def _cdef_block() -> str:
    text = (HERE / "ring.h").read_text()
    start = text.index("/* BEGIN CDEF")
    start = text.index("\n", start) + 1
    return text[start:text.index("/* END CDEF */")]


# Constants read back from the compiled module ("..." = "ask the compiler").
_EXPORTED = ["SD_PEEK", "SD_ARM", "SD_NOTOK", "SD_WAITALL", "SD_ERR_CLOSED", "SD_ERR_PIPE",
             "SD_ERR_MAGIC", "SD_ERR_CAPACITY", "SD_ERR_HEAD_AHEAD", "SD_ERR_TAIL_BEYOND",
             "SD_ERR_ARG", "SD_ERR_TOKEN", "SD_TOK_BUSY", "SD_TOK_WANT", "SD_TOK_SHIFT",
             "SD_PEND_WAKE", "SD_PEND_WANTED"]

ffibuilder = FFI()
ffibuilder.cdef(_cdef_block() + "".join(
    f"#define {name} ...\n" for name in _EXPORTED + sorted(layout_macros())))
ffibuilder.set_source(
    MODULE,
    '#include "ring.h"\n',
    include_dirs=[str(HERE)],
    define_macros=sorted(layout_macros().items()),
    extra_compile_args=["-O2", "-std=gnu11"],
    # One file name for both builds (pip and in place): an abi3 module from
    # one would otherwise sit beside, and lose to, a stale cpython-311 one.
    py_limited_api=False,
    depends=[str(HERE / "ring.h"), str(HERE / "layout.py")],
)


def main() -> int:
    """Compile the extension in place, next to this file.

    The build runs in a scratch directory and the finished module is renamed
    into place, so a process that has the old one loaded keeps a valid
    mapping instead of seeing the file rewritten under it.
    """
    with tempfile.TemporaryDirectory(prefix="sd-ring-build-") as tmp:
        built = pathlib.Path(ffibuilder.compile(tmpdir=tmp, verbose=False))
        target = HERE / built.name
        staged = target.with_name(target.name + ".new")
        shutil.copy2(built, staged)
        os.replace(staged, target)
    for other in HERE.glob("_ring_c*.so"):
        if other != target:
            other.unlink()  # a differently named build would shadow or confuse
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
