"""Embedders: shape, normalisation, determinism, offline loading, PENNY_EMBEDDER parsing, and the
OpenAI-compatible embedder against a real HTTP server on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
import pytest

from proxy_core.errors import ConfigurationError, UpstreamError
from proxy_core.semantic.embedders import (
    Embedder,
    OpenAICompatibleEmbedder,
    WordLlamaEmbedder,
    embedder_from_spec,
    openai_sdk_embed_fn,
)
from tests.fake_openai import FakeOpenAI, Fault

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["How do refunds work?", "What's the refund policy?", "Where are the staging logs?"]


def test_wordllama_shape_norm_and_determinism() -> None:
    embedder = WordLlamaEmbedder()
    assert isinstance(embedder, Embedder)
    assert (embedder.name, embedder.dims) == ("local:wordllama", 256)
    vectors = embedder.embed(QUESTIONS)
    assert vectors.shape == (3, 256)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors, embedder.embed(QUESTIONS))
    np.testing.assert_array_equal(vectors[1], embedder.embed([QUESTIONS[1]])[0])
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2]  # paraphrase closer than an unrelated question


def test_wordllama_truncated_dims_and_edge_inputs() -> None:
    small = WordLlamaEmbedder(128)
    assert (small.name, small.dims) == ("local:wordllama?dims=128", 128)
    vectors = small.embed(QUESTIONS)
    assert vectors.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert small.embed([]).shape == (0, 128)
    blank = small.embed([""])
    assert blank.shape == (1, 128) and np.isfinite(blank).all()
    # One text takes a shorter path than a batch: the same vector, bit for bit.
    odd = ["", " \t\n", "😀 über straße", "x" * 5_000, "What's the CPU limit for a worker?"]
    for embedder in (small, WordLlamaEmbedder()):
        batch = embedder.embed_raw(odd)
        for i, text in enumerate(odd):
            np.testing.assert_array_equal(embedder.embed_raw([text])[0], batch[i])
    with pytest.raises(ConfigurationError, match="PENNY_EMBEDDER"):
        WordLlamaEmbedder(100)


def test_a_lone_surrogate_is_embedded_not_refused() -> None:
    """JSON's ``"\\ud800"`` decodes to a lone surrogate; the tokenizer raised TypeError on it."""
    embedder = WordLlamaEmbedder()
    one = embedder.embed(["hi \ud800 there"])
    batch = embedder.embed(["hi \ud800 there", "\udfff"])
    np.testing.assert_array_equal(one[0], batch[0])
    np.testing.assert_array_equal(one[0], embedder.embed(["hi \ufffd there"])[0])
    sent: list[list[str]] = []
    OpenAICompatibleEmbedder("openai:x", 2, lambda t: sent.append(t) or [[1.0, 0.0]] * len(t)).embed(["a\udc80"])
    assert sent == [["a\ufffd"]]  # valid UTF-8 on the wire


def test_wordllama_loads_offline_and_leaves_logging_alone(tmp_path: Path) -> None:
    """In a fresh process with every socket connection refused and an empty HOME."""
    script = (
        "import logging, socket\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('network used')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from proxy_core.semantic.embedders import WordLlamaEmbedder\n"
        "v = WordLlamaEmbedder().embed(['How do I deploy?'])\n"
        "assert v.shape == (1, 256)\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
        "print('ok')\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert not (tmp_path / ".cache").exists()


# -- PENNY_EMBEDDER --------------------------------------------------------------------------------


def test_spec_local_forms() -> None:
    assert embedder_from_spec("local:wordllama").dims == 256
    assert embedder_from_spec(" local:wordllama?dims=64 ").dims == 64


@pytest.mark.parametrize(
    "spec",
    ["", "wordllama", "local:minilm", "local:wordllama?dims=100", "local:wordllama?dims=x", "local:wordllama?size=64",
     "openai:", "cohere:embed-v3", "openai:my-model", "openai:text-embedding-3-small?dimensions=-1"],
)  # fmt: skip
def test_spec_errors_name_the_variable_and_the_forms(spec: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        embedder_from_spec(spec, openai_embed_fn=lambda texts, *, model, dimensions: [])
    message = str(info.value)
    assert "PENNY_EMBEDDER" in message
    assert "local:wordllama" in message and "openai:<model>" in message


def test_spec_openai_needs_a_client() -> None:
    with pytest.raises(ConfigurationError, match="needs an OpenAI embeddings client"):
        embedder_from_spec("openai:text-embedding-3-small")


def test_spec_openai_passes_model_and_dimensions() -> None:
    calls: list[tuple[list[str], str, int | None]] = []

    def embed(texts: list[str], *, model: str, dimensions: int | None) -> list[list[float]]:
        calls.append((texts, model, dimensions))
        return [[1.0] + [0.0] * ((dimensions or 1536) - 1) for _ in texts]

    default = embedder_from_spec("openai:text-embedding-3-small", openai_embed_fn=embed)
    assert (default.name, default.dims) == ("openai:text-embedding-3-small", 1536)
    default.embed(["a"])
    small = embedder_from_spec("openai:text-embedding-3-small?dimensions=256", openai_embed_fn=embed)
    assert small.dims == 256
    small.embed(["b", "c"])
    custom = embedder_from_spec("openai:all-MiniLM-L6-v2?dimensions=384", openai_embed_fn=embed)
    assert custom.dims == 384
    assert calls[0] == (["a"], "text-embedding-3-small", None)
    assert calls[1] == (["b", "c"], "text-embedding-3-small", 256)


# -- OpenAI-compatible -----------------------------------------------------------------------------


def test_openai_compatible_batches_checks_and_normalises() -> None:
    batches: list[list[str]] = []

    def embed(texts: list[str]) -> list[list[float]]:
        batches.append(texts)
        return [[3.0, 4.0] for _ in texts]

    embedder = OpenAICompatibleEmbedder("openai:x", 2, embed, batch_size=2)
    vectors = embedder.embed(["a", "b", "c", ""])
    assert [len(b) for b in batches] == [2, 2]
    assert batches[1][1] == " "  # the endpoint rejects empty strings
    np.testing.assert_allclose(vectors, [[0.6, 0.8]] * 4, rtol=1e-6)
    assert embedder.embed([]).shape == (0, 2)

    with pytest.raises(UpstreamError, match="returned 1 vectors for 2 texts") as info:
        OpenAICompatibleEmbedder("openai:x", 2, lambda t: [[1.0, 0.0]]).embed(["a", "b"])
    assert info.value.kind == "malformed"
    with pytest.raises(UpstreamError, match="expected 3-dimensional"):
        OpenAICompatibleEmbedder("openai:x", 3, lambda t: [[1.0, 0.0] for _ in t]).embed(["a"])


def test_openai_sdk_embed_fn_over_http(fake: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
    embedder = embedder_from_spec(
        "openai:text-embedding-3-small?dimensions=64", openai_embed_fn=openai_sdk_embed_fn(client)
    )
    vectors = embedder.embed(["How do I deploy?", "how do i deploy", "Where are the logs?"])
    assert vectors.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1.0, abs=1e-5)  # fake: bag of lower-cased words
    (request,) = fake.requests_to("embeddings")
    assert request.body["model"] == "text-embedding-3-small"
    assert request.body["dimensions"] == 64


def test_openai_sdk_errors_become_upstream_errors(fake: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
    embedder = embedder_from_spec("openai:text-embedding-3-small", openai_embed_fn=openai_sdk_embed_fn(client))
    fake.script(Fault.status(503), endpoint="embeddings")
    with pytest.raises(UpstreamError) as info:
        embedder.embed(["a"])
    assert info.value.status == 503
    assert "sk-test" not in str(info.value)
