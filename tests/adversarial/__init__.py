"""Hostile clients against a live stack; see conftest.py for the bounds and the stack."""
