"""Unmodified stdlib programs that tests/test_dropin_programs.py and bench/dropin.py run.

Each is an ordinary program: it imports only the standard library (never
``impl``), and runs the same with ``python prog.py`` and with
``python -m impl.run prog.py``.  A server prints one JSON line with its port
once it listens, serves until its stdin reaches end of file, then prints a
JSON report of what it served; a client prints a JSON report of what it got.
The only trace of socksdirect in them is ``getattr(sock, "transport",
"stdlib")``, which reads what carried a connection without importing impl.
"""
