"""The embedded ONNX Runtime backend: placement from config.pbtxt, sessions, IO binding, the GPU
memory budget and Triton's model_warmup."""
