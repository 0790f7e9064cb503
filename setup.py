"""Build hook: setuptools needs this file to compile the cffi ring helpers at install."""

from setuptools import setup

setup(cffi_modules=["impl/ring/_build.py:ffibuilder"])
