"""The process model: one process, or with ``--workers N`` a supervisor, the executors owning the
models (one by default, ``--executors``) and N front-end workers talking to them over Unix
sockets."""
