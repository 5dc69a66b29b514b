"""Front ends: wire bytes <-> ``InferRequest``/``InferResponse`` and nothing else (REST, gRPC,
OpenAI's ``/v1``), and the servers that run them in one event loop."""
