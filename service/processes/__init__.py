"""The process model: one process, or with ``--workers N`` a supervisor, one executor owning the
models and N front-end workers talking to it over a Unix socket."""
