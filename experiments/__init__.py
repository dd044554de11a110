"""Runnable studies: ``python -m experiments`` lists them, ``python -m experiments NAME`` runs one."""
