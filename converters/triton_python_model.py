"""Triton python-backend model that runs the ``model.onnx`` beside it with ONNX Runtime.

Written by ``infergate convert python-backend`` as ``<model>/<version>/model.py`` so that a Triton
build with only the python backend (e.g. the CPU tritonserver 2.51 bundled with PyTriton) can serve
the repository. Self-contained: numpy + onnxruntime only. The requests of a dynamic batch are
concatenated along axis 0 (inputs listed in ``infergate.pad_inputs`` are zero-padded to the
longest),
run in one session call, and split back per request.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

PAD_PARAMETER = "infergate.pad_inputs"
_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _pad_to(array, shape):
    """Zero-pad ``array`` at the end of each axis to ``shape``."""
    if tuple(array.shape) == tuple(shape):
        return array
    widths = [(0, int(target) - int(size)) for size, target in zip(array.shape, shape)]
    return np.pad(array, widths)


def merge_requests(arrays_per_request, input_names, pad_inputs):
    """Concatenate per-request inputs; returns (feed, batch sizes) or raises ValueError."""
    feed = {}
    for name in input_names:
        parts = [arrays[name] for arrays in arrays_per_request]
        tails = {tuple(p.shape[1:]) for p in parts}
        if len(tails) > 1:
            if name not in pad_inputs:
                raise ValueError(
                    f"input '{name}' has different shapes {sorted(tails)} in one batch"
                )
            longest = [max(sizes) for sizes in zip(*tails)]
            parts = [_pad_to(p, [p.shape[0], *longest]) for p in parts]
        feed[name] = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    sizes = [int(arrays[input_names[0]].shape[0]) for arrays in arrays_per_request]
    return feed, sizes


def split_outputs(outputs, sizes):
    """Cut batched outputs back into one dict per request."""
    bounds = np.cumsum([0, *sizes])
    return [
        {name: value[bounds[i] : bounds[i + 1]] for name, value in outputs.items()}
        for i in range(len(sizes))
    ]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = os.path.dirname(os.path.abspath(__file__))
        options = ort.SessionOptions()
        threads = os.environ.get("INFERGATE_ORT_THREADS")
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(
            os.path.join(here, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]
        }
        self.input_dtypes = {i.name: _ORT_TO_NUMPY.get(i.type) for i in self.session.get_inputs()}
        pad = config.get("parameters", {}).get(PAD_PARAMETER, {}).get("string_value", "")
        self.pad_inputs = {name.strip() for name in pad.split(",") if name.strip()}
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def _inputs(self, request):
        arrays = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input '{name}'")
            array = tensor.as_numpy()
            dtype = self.input_dtypes.get(name)
            arrays[name] = array.astype(dtype, copy=False) if dtype is not None else array
        return arrays

    def _respond(self, outputs):
        tensors = [
            pb_utils.Tensor(
                name, np.ascontiguousarray(outputs[name]).astype(self.output_dtypes[name])
            )
            for name in self.output_names
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _run(self, feed):
        values = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, values))

    def execute(self, requests):
        responses = [None] * len(requests)
        good, arrays = [], []
        for index, request in enumerate(requests):
            try:
                arrays.append(self._inputs(request))
                good.append(index)
            except Exception as exc:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if good and self.batched:
            try:
                feed, sizes = merge_requests(arrays, self.input_names, self.pad_inputs)
                for index, outputs in zip(good, split_outputs(self._run(feed), sizes)):
                    responses[index] = self._respond(outputs)
                good = []
            except Exception:
                pass  # fall back to one request at a time so one bad request fails alone
        for index, feed in zip(good, arrays):
            if responses[index] is not None:
                continue
            try:
                responses[index] = self._respond(self._run(feed))
            except Exception as exc:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        return responses

    def finalize(self):
        self.session = None
