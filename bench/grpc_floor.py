"""The gRPC floor: a constant-answer KServe v2 ``grpc.aio`` servicer (no model, no batching).

What one Python process spends per gRPC infer call on the stack alone (grpc.aio, the protobuf
messages of tritonclient's protos), so ``bench/workers_bench.py`` can put infergate's gRPC cost
beside it in the same run. It answers ``ModelInfer`` for ``digits_mlp`` (a [1, 64] FP32 input,
a [1, 10] FP32 answer, always the same bytes) and the calls perf_analyzer makes before it loads
(server and model liveness and metadata, the model's config, statistics).

    .venv/bin/python bench/grpc_floor.py --port 8101     # serve until SIGTERM
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from tritonclient.grpc import model_config_pb2 as config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

MODEL = "digits_mlp"
INPUT, OUTPUT = ("input", [1, 64]), ("output", [1, 10])


class ConstantServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Parses each request as any servicer must, answers it with the same tensor."""

    def __init__(self) -> None:
        self.count = 0
        self.answer = bytes(4 * OUTPUT[1][1])

    async def ServerLive(self, request, context):  # noqa: N802 - the proto's names
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):  # noqa: N802
        return pb.ModelReadyResponse(ready=request.name == MODEL)

    async def ServerMetadata(self, request, context):  # noqa: N802
        return pb.ServerMetadataResponse(name="grpc-floor", version="0", extensions=[])

    async def ModelMetadata(self, request, context):  # noqa: N802
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=MODEL,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[tensor(name=INPUT[0], datatype="FP32", shape=[-1, INPUT[1][1]])],
            outputs=[tensor(name=OUTPUT[0], datatype="FP32", shape=[-1, OUTPUT[1][1]])],
        )

    async def ModelConfig(self, request, context):  # noqa: N802
        fp32 = config_pb2.TYPE_FP32
        config = config_pb2.ModelConfig(
            name=MODEL,
            platform="onnxruntime_onnx",
            max_batch_size=32,
            input=[config_pb2.ModelInput(name=INPUT[0], data_type=fp32, dims=[INPUT[1][1]])],
            output=[config_pb2.ModelOutput(name=OUTPUT[0], data_type=fp32, dims=[OUTPUT[1][1]])],
        )
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request, context):  # noqa: N802
        stats = pb.ModelStatistics(
            name=MODEL, version="1", inference_count=self.count, execution_count=self.count
        )
        stats.inference_stats.success.count = self.count
        return pb.ModelStatisticsResponse(model_stats=[stats])

    async def ModelInfer(self, request, context):  # noqa: N802
        if request.model_name != MODEL or len(request.raw_input_contents) != 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not the floor's model")
        self.count += 1
        response = pb.ModelInferResponse(model_name=MODEL, model_version="1", id=request.id)
        output = response.outputs.add()
        output.name, output.datatype = OUTPUT[0], "FP32"
        output.shape.extend(OUTPUT[1])
        response.raw_output_contents.append(self.answer)
        return response


async def serve(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(ConstantServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"grpc floor serving on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
