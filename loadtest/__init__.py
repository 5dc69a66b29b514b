"""Locust scenarios and a capacity runner for any KServe v2 server.

``locust -f loadtest/`` imports every ``.py`` file here whose name does not start with ``_``:
the ``users_*.py`` files hold the User classes and ``shape_step.py`` the optional step shape.
Shared code lives in ``_*.py`` modules, which Locust skips; ``cli.py`` only defines a typer app.
"""
