"""The fake CuPy's cupyx (tests only): see tests/fakecupy/cupy/__init__.py."""
