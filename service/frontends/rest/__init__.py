"""KServe v2 REST (JSON and binary tensors), KServe v1 ``:predict`` and OpenAI's ``/v1`` routes."""
