"""KServe v2 / Triton ``GRPCInferenceService`` on ``grpc.aio``."""
