"""Small unmodified programs that tests/test_run.py runs under ``python -m impl.run``."""
