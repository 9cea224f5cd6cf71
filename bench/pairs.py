"""Shared by the cache-quality benches: where the labelled pair files are, the fit / held-out split
of the balanced QQP file, the embedders measured (MiniLM through ``bench/embed_server.py``), and
an on-disk cache of their vectors so repeated runs do not re-embed 12,000 questions.

The pair files are not in this repository. They are read from ``$PENNY_PAIRS_DIR`` if set, else
from ``../shared/data`` next to the checkout (where the project keeps them); a missing file stops
with a message that says where it looked, not a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from proxy_core.semantic.decision import LabelledPair, load_pairs
from proxy_core.semantic.embedders import Embedder, WordLlamaEmbedder, embedder_from_spec, openai_sdk_embed_fn

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
BALANCED = "cache-pairs-qqp-balanced-dev.jsonl"
STRESS = "cache-pairs-dev.jsonl"
NEARMISS = "cache-pairs-nearmiss-dev.jsonl"
MINILM_SPEC = "openai:all-MiniLM-L6-v2?dimensions=384"

__all__ = [
    "BALANCED", "MINILM_SPEC", "NEARMISS", "STRESS", "CachedEmbedder", "data_dir", "embedders", "pair_file",
    "pairs", "split", "write_split",
]  # fmt: skip


def data_dir() -> Path:
    """``$PENNY_PAIRS_DIR``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("PENNY_PAIRS_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def pair_file(name: str) -> Path:
    path = data_dir() / name
    if not path.is_file():
        sys.exit(
            f"{path} not found. The labelled pair files are not in this repository: put them in "
            f"{ROOT.parent / 'shared' / 'data'} (the project's shared data directory) or point "
            "PENNY_PAIRS_DIR at the directory that holds them."
        )
    return path


def pairs(name: str) -> list[LabelledPair]:
    return load_pairs(pair_file(name))


def is_held_out(pair: LabelledPair) -> bool:
    """The balanced file's split: by a hash of the pair's text, so it does not depend on order."""
    digest = hashlib.blake2b(f"{pair.a}\n{pair.b}".encode(), digest_size=8).digest()
    return digest[0] % 2 == 1


def split(all_pairs: Sequence[LabelledPair]) -> tuple[list[LabelledPair], list[LabelledPair]]:
    """(fit part, held-out part). Fitting and choosing happen on the first; the second is only reported."""
    fit = [p for p in all_pairs if not is_held_out(p)]
    held = [p for p in all_pairs if is_held_out(p)]
    return fit, held


def write_split(all_pairs: Sequence[LabelledPair]) -> tuple[Path, Path]:
    """The two parts as JSON Lines under var/pairs/, for ``penny cache eval``."""
    out = VAR / "pairs"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for part, rows in zip(("fit", "heldout"), split(all_pairs), strict=True):
        path = out / f"cache-pairs-qqp-balanced-{part}.jsonl"
        path.write_text("".join(json.dumps({"a": p.a, "b": p.b, "label": p.label}) + "\n" for p in rows))
        paths.append(path)
    return paths[0], paths[1]


class CachedEmbedder:
    """An embedder whose vectors are kept in memory and under var/embeddings/ (per model)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self._memo: dict[str, NDArray[np.float32]] = {}
        key = hashlib.blake2b(inner.name.encode(), digest_size=6).hexdigest()
        self._path = VAR / "embeddings" / f"{key}.npz"
        if self._path.is_file():
            with np.load(self._path) as saved:
                texts = json.loads(str(saved["texts"]))
                self._memo = dict(zip(texts, saved["vectors"], strict=True))

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dims(self) -> int:
        return self.inner.dims

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            for t, v in zip(missing, self.inner.embed(missing), strict=True):
                self._memo[t] = v
            self._save()
        if not texts:
            return np.zeros((0, self.dims), np.float32)
        return np.stack([self._memo[t] for t in texts])

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        texts = list(self._memo)
        np.savez(self._path, texts=json.dumps(texts), vectors=np.stack([self._memo[t] for t in texts]))


def _start_minilm(port: int) -> subprocess.Popen[bytes]:
    python = ROOT / ".venv-quality" / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python} not found; see bench/QUALITY.md for how to create .venv-quality")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [str(python), "-m", "bench.embed_server", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                sys.exit("bench/embed_server.py exited; run it by hand (python -m bench.embed_server) to see why")
            time.sleep(1)
    proc.terminate()
    sys.exit("embed_server.py did not answer within 180 s")


class _LazyMiniLM:
    """all-MiniLM-L6-v2 through Penny's ``openai:`` embedder and the real openai SDK, against
    ``url`` or, when none is given, a bench/embed_server.py started on first use (only when some
    text is not in the on-disk cache yet)."""

    def __init__(self, url: str | None, port: int) -> None:
        self._url = url
        self._port = port
        self._inner: Embedder | None = None
        self.server: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return MINILM_SPEC

    @property
    def dims(self) -> int:
        return 384

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if self._inner is None:
            import openai

            if self._url is None:
                self.server = _start_minilm(self._port)
            url = self._url or f"http://127.0.0.1:{self._port}/v1"
            client = openai.OpenAI(base_url=url, api_key="not-used", max_retries=0, timeout=300)
            self._inner = embedder_from_spec(MINILM_SPEC, openai_embed_fn=openai_sdk_embed_fn(client))
        return self._inner.embed(texts)


@contextmanager
def embedders(*, minilm: bool, minilm_url: str | None = None, port: int = 8765) -> Iterator[list[CachedEmbedder]]:
    """WordLlama, and MiniLM when asked (bench/embed_server.py from .venv-quality is started for
    the run if a text needs embedding and no ``minilm_url`` is given)."""
    out = [CachedEmbedder(WordLlamaEmbedder())]
    lazy = _LazyMiniLM(minilm_url, port) if minilm or minilm_url else None
    if lazy is not None:
        out.append(CachedEmbedder(lazy))
    try:
        yield out
    finally:
        if lazy is not None and lazy.server is not None:
            lazy.server.terminate()
            lazy.server.wait(timeout=30)
