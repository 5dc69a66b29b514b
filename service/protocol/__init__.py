"""The request layer REST, gRPC and v1 share: datatypes, tensors, parameters, validation.

Front ends turn wire bytes into ``InferRequest`` through these functions only, so every protocol
accepts and rejects the same requests with the same messages. Nothing here does I/O.
"""
