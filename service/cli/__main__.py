"""``python -m service.cli``: the ``infergate`` command."""

from service.cli import app

if __name__ == "__main__":
    app()
