"""socksdirect: a user-space socket system after SocksDirect (SIGCOMM 2019).

The per-socket ring is in :mod:`impl.ring`; tokens and fork semantics will
live in :mod:`impl.token` and :mod:`impl.fork`.
"""

__version__ = "0.1.0"
