"""Embeddings throughput, side by side in one run on the same cores (not a test).

Texts of 8-64 words from a fixed, seeded corpus. Requests of 1 and of 32 texts through:
infergate ``POST /v1/embeddings`` (a real ``infergate serve``, per-text cache on), in-process
sentence-transformers ``encode`` and raw ONNX Runtime on pre-tokenized, padded input (the same
model.onnx as version 1). Then infergate with half of each request's texts seen before, against the
same requests with none seen, and the cosine of infergate's embeddings with sentence-transformers'.
Reports texts/s, tokens/s, p50/p99 per request; writes ``bench/results/embeddings.json``.

    .venv/bin/python bench/embeddings_bench.py [--requests-32 40] [--requests-1 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from converters.example_models import minilm_dir  # noqa: E402
from tests.helpers import start_gateway  # noqa: E402

MODEL = "minilm_embed/1"
ROUNDS = 4  # alternations of the no-repeat and half-repeated runs
_WORD_LIST = (
    "the a gateway model request batch cache redis vector search index passage query document "
    "embedding token latency throughput server client network memory core thread queue worker "
    "retrieval ranking semantic similarity sentence paragraph question answer user product price "
    "order shipping review customer support ticket error log metric trace deploy cluster node "
    "pod service container image build test release version update fix feature design team week "
    "report market stock rate growth revenue cost budget plan goal risk data table column row "
    "file page section chapter title author book paper study result method experiment sample "
    "and of to in for on with by from at about over under after before while because so but or"
)
WORDS = _WORD_LIST.split()


def corpus(count: int, seed: int) -> list[str]:
    """``count`` distinct texts of 8-64 words, the same for every run with this seed."""
    rng = np.random.default_rng(seed)
    texts = []
    for index in range(count):
        words = rng.choice(WORDS, size=int(rng.integers(8, 65))).tolist()
        words[0] = words[0].capitalize()
        texts.append(" ".join(words) + f" ({seed}-{index}).")
    return texts


def summary(latencies: Sequence[float], texts: int, tokens: int, elapsed: float) -> dict:
    ms = np.array(latencies) * 1000
    return {
        "texts_per_s": round(texts / elapsed, 1),
        "tokens_per_s": round(tokens / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "requests": len(latencies),
    }


def chunks(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]


def run_in_process(requests: list[list[str]], encode: Callable[[list[str]], object]) -> dict:
    latencies = []
    start = time.perf_counter()
    for batch in requests:
        began = time.perf_counter()
        encode(batch)
        latencies.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - start
    return {"latencies": latencies, "elapsed": elapsed}


async def run_gateway(base_url: str, requests: list[list[str]], concurrency: int) -> dict:
    """``concurrency`` clients sending the requests in order; usage gives the token count."""
    latencies: list[float] = []
    tokens = 0
    queue = list(reversed(requests))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as client:

        async def worker() -> None:
            nonlocal tokens
            while queue:
                batch = queue.pop()
                began = time.perf_counter()
                body = {"model": MODEL, "input": batch, "encoding_format": "base64"}
                response = await client.post("/v1/embeddings", json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - began)
                tokens += response.json()["usage"]["prompt_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"latencies": latencies, "elapsed": elapsed, "tokens": tokens}


def gateway_embeddings(base_url: str, texts: list[str]) -> np.ndarray:
    body = {"model": MODEL, "input": texts, "encoding_format": "float", "user": "bench"}
    response = httpx.post(f"{base_url}/v1/embeddings", json=body, timeout=120)
    response.raise_for_status()
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def half_repeated(requests: list[list[str]], seen: list[str]) -> list[list[str]]:
    """Each request with its first half swapped for texts the gateway has already embedded."""
    out, cursor = [], 0
    for batch in requests:
        half = len(batch) // 2
        out.append(seen[cursor : cursor + half] + batch[half:])
        cursor += half
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests-32", type=int, default=40, help="requests of 32 texts")
    parser.add_argument("--requests-1", type=int, default=300, help="requests of 1 text")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embeddings.json")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    cores = os.cpu_count() or 1
    n32, n1 = args.requests_32 * 32, args.requests_1
    texts = {name: corpus(n, seed) for name, n, seed in (("t32", n32, 1), ("t1", n1, 2))}
    fresh32, seen32 = corpus(n32, 3), corpus(n32 // 2 + 32, 4)
    hf = AutoTokenizer.from_pretrained(str(minilm_dir()))
    token_count = {
        k: sum(len(hf(t, truncation=True, max_length=256)["input_ids"]) for t in v)
        for k, v in texts.items()
    }
    results: dict = {
        "machine": {"cpus": cores, "python": platform.python_version(), "note": "shared machine"},
        "corpus": {"texts_32": n32, "texts_1": n1, "words_per_text": [8, 64]},
    }

    # sentence-transformers in-process (torch, all cores)
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    st.encode(texts["t1"][:32], batch_size=32)  # warm-up
    for size, key in ((32, "t32"), (1, "t1")):
        run = run_in_process(chunks(texts[key], size), lambda b: st.encode(b, batch_size=32))
        results[f"sentence_transformers_{size}"] = summary(
            run["latencies"], len(texts[key]), token_count[key], run["elapsed"]
        )

    # raw ONNX Runtime on pre-tokenized, padded input (tokenization not timed)
    model_path = ROOT / "model_repo" / "minilm_embed" / "1" / "model.onnx"
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for size, key in ((32, "t32"), (1, "t1")):
        feeds = []
        for batch in chunks(texts[key], size):
            enc = hf(batch, padding=True, truncation=True, max_length=256, return_tensors="np")
            feeds.append({k: v.astype(np.int64) for k, v in enc.items()})
        session.run(None, feeds[0])
        latencies, start = [], time.perf_counter()
        for feed in feeds:
            began = time.perf_counter()
            session.run(["sentence_embedding"], feed)
            latencies.append(time.perf_counter() - began)
        results[f"onnxruntime_pretokenized_{size}"] = summary(
            latencies, len(texts[key]), token_count[key], time.perf_counter() - start
        )

    # infergate /v1/embeddings (a real server, per-text cache in-process)
    gateway = start_gateway(ROOT / "model_repo", env={"INFERGATE_CACHE_ENABLED": "true"})
    try:
        base = gateway.base_url
        asyncio.run(run_gateway(base, chunks(corpus(64, 9), 32), 2))  # warm-up
        for size, key, concurrency in ((32, "t32", 2), (1, "t1", 4)):
            run = asyncio.run(run_gateway(base, chunks(texts[key], size), concurrency))
            results[f"infergate_{size}"] = summary(
                run["latencies"], len(texts[key]), run["tokens"], run["elapsed"]
            )
            results[f"infergate_{size}"]["concurrency"] = concurrency
        # half repeated vs none repeated, same sizes, cache on for both; interleaved in rounds so
        # that load from elsewhere on a shared machine falls on both alike
        asyncio.run(run_gateway(base, chunks(seen32, 32), 2))  # the gateway has now seen these
        plain = chunks(fresh32, 32)
        repeated = half_repeated(chunks(corpus(n32, 5), 32), seen32)
        runs: dict[str, list[dict]] = {"no_repeat": [], "half_repeated": []}
        step = max(1, len(plain) // ROUNDS)
        for first in range(0, len(plain), step):
            for name, requests in (("no_repeat", plain), ("half_repeated", repeated)):
                part = requests[first : first + step]
                runs[name].append(asyncio.run(run_gateway(base, part, 2)))
        for name, parts in runs.items():
            results[f"infergate_32_{name}"] = summary(
                [x for part in parts for x in part["latencies"]],
                n32,
                sum(part["tokens"] for part in parts),
                sum(part["elapsed"] for part in parts),
            )
        sample = texts["t32"][:64]
        got = gateway_embeddings(base, sample)
    finally:
        gateway.stop()
    want = st.encode(sample, normalize_embeddings=True)
    cosine = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)

    st32 = results["sentence_transformers_32"]["texts_per_s"]
    ig32 = results["infergate_32"]["texts_per_s"]
    speedup = (
        results["infergate_32_half_repeated"]["texts_per_s"]
        / results["infergate_32_no_repeat"]["texts_per_s"]
    )
    results["checks"] = {
        "infergate_32_vs_sentence_transformers": round(ig32 / st32, 3),
        "target_at_least": 0.8,
        "half_repeated_speedup": round(speedup, 3),
        "speedup_target_at_least": 1.8,
        "min_cosine_vs_sentence_transformers": round(float(cosine.min()), 6),
        "cosine_target_at_least": 0.9999,
        "torch_threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name, row in results.items():
        print(f"{name:36s} {row}")


if __name__ == "__main__":
    main()
