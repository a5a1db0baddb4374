"""Shared conformance test classes: every built-in and third-party plugin should pass them.

Modelled on ``optuna/testing/pytest_samplers.py``: subclass the class in your own test module and point it
at your plugin; pytest collects the inherited tests.
"""
