"""Backends execute formed batches for one model version: embedded ONNX Runtime or remote Triton."""
