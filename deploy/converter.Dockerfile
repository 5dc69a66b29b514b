# syntax=docker/dockerfile:1
# TensorRT plan builder for the compose `converter` service (profile `tools`).
# NVIDIA's TensorRT 10.5 container (24.10 release, matches Triton 24.10) with trtexec, plus the
# protobuf model-config bindings the build script uses to read/write config.pbtxt.
FROM nvcr.io/nvidia/tensorrt:24.10-py3
RUN pip install --no-cache-dir "tritonclient[grpc]==2.51.0"
COPY deploy/converter/build_plans.py /opt/infergate/build_plans.py
WORKDIR /models
ENTRYPOINT ["python3", "/opt/infergate/build_plans.py"]
CMD ["/models"]
