"""Question embedders for the semantic cache, chosen by ``PENNY_EMBEDDER``.

Two kinds, one :class:`Embedder` protocol (``(n, dims)`` float32 rows, each of unit length, so a
dot product is the cosine):

- ``local:wordllama`` — WordLlama's static token embeddings shipped inside the ``wordllama``
  wheel (16 MB, no torch). Loaded once per process, never touches the network, microseconds per
  question. ``local:wordllama?dims=128`` (or 64) keeps the first dimensions (Matryoshka).
- ``openai:<model>`` — any OpenAI-compatible embeddings endpoint through a caller-supplied
  function (the gateway wires it to the billed upstream). ``?dimensions=N`` asks the endpoint for
  ``N`` dimensions (text-embedding-3-*) and is required for models whose size Penny does not know.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

import numpy as np
from numpy.typing import NDArray

from proxy_core.cache import well_formed
from proxy_core.errors import ConfigurationError, UpstreamError

if TYPE_CHECKING:
    from openai import OpenAI

__all__ = [
    "ENV_VAR",
    "Embedder",
    "OpenAICompatibleEmbedder",
    "OpenAIEmbedFn",
    "WordLlamaEmbedder",
    "embedder_from_spec",
    "normalize_rows",
    "openai_sdk_embed_fn",
]

ENV_VAR = "PENNY_EMBEDDER"
ACCEPTED_FORMS = "local:wordllama, local:wordllama?dims=64|128|256, openai:<model>, openai:<model>?dimensions=<n>"

Vectors = NDArray[np.float32]

# Sizes of OpenAI's own embedding models when no ``dimensions`` is asked for.
_OPENAI_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
_WORDLLAMA_DIMS = (64, 128, 256)  # the wheel ships the 256-d matrix; smaller sizes are prefixes of it


@runtime_checkable
class Embedder(Protocol):
    """Turns questions into unit vectors; vectors of different ``name`` never mix in one index."""

    @property
    def name(self) -> str: ...

    @property
    def dims(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


class OpenAIEmbedFn(Protocol):
    """One embeddings call: ``texts`` in, one vector per text out, in order."""

    def __call__(self, texts: list[str], *, model: str, dimensions: int | None) -> list[list[float]]: ...


def normalize_rows(vectors: NDArray[Any]) -> Vectors:
    """Rows scaled to unit length as float32. An all-zero row (nothing to embed) stays zero."""
    out = np.asarray(vectors, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    unit: Vectors = np.zeros_like(out)
    np.divide(out, norms, out=unit, where=norms > 0)
    return unit


# -- WordLlama -------------------------------------------------------------------------------------

_wordllama_lock = threading.Lock()
_wordllama_models: dict[int, Any] = {}


def _wordllama_model(dims: int) -> Any:
    """The process-wide WordLlama model truncated to ``dims``; loaded on first use, thread-safe."""
    model = _wordllama_models.get(dims)
    if model is not None:
        return model
    with _wordllama_lock:
        model = _wordllama_models.get(dims)
        if model is None:
            model = _load_wordllama(dims)
            _wordllama_models[dims] = model
    return model


def _load_wordllama(dims: int) -> Any:
    spec = importlib.util.find_spec("wordllama")
    if spec is None or spec.origin is None:
        raise ConfigurationError(f"{ENV_VAR}=local:wordllama needs the 'wordllama' package (pip install wordllama).")
    package_dir = Path(spec.origin).parent
    # Refuse before loading rather than let WordLlama fall back to a Hugging Face download: the
    # tokenizer loader goes to the network when its bundled file is missing.
    for needed in ("weights/l2_supercat_256.safetensors", "tokenizers/l2_supercat_tokenizer_config.json"):
        if not (package_dir / needed).is_file():
            raise ConfigurationError(
                f"{ENV_VAR}=local:wordllama: the wordllama package has no bundled {needed}; "
                "reinstall wordllama (Penny never downloads weights)."
            )
    # wordllama.inference calls logging.basicConfig(level=INFO) at import; keep the root logger as
    # the application configured it.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from wordllama import WordLlama
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    return WordLlama.load(
        config="l2_supercat",
        cache_dir=package_dir,
        dim=256,
        trunc_dim=None if dims == 256 else dims,
        disable_download=True,
    )


class _Named:
    """The read-only ``name`` and ``dims`` of an :class:`Embedder`, set once when it is made."""

    def __init__(self, name: str, dims: int) -> None:
        self._name = name
        self._dims = dims

    @property
    def name(self) -> str:
        return self._name

    @property
    def dims(self) -> int:
        return self._dims


class WordLlamaEmbedder(_Named):
    """Mean of WordLlama's static token vectors (l2_supercat, bundled), unit length.

    Case is kept: the tokenizer is cased and "US" and "us" are different questions.
    """

    def __init__(self, dims: int = 256) -> None:
        if dims not in _WORDLLAMA_DIMS:
            raise ConfigurationError(f"{ENV_VAR}: WordLlama dims must be one of {_WORDLLAMA_DIMS}, got {dims}.")
        super().__init__("local:wordllama" if dims == 256 else f"local:wordllama?dims={dims}", dims)

    def load(self) -> None:
        """Load the weights now (e.g. at start-up) instead of on the first question."""
        _wordllama_model(self._dims)

    def embed(self, texts: Sequence[str]) -> Vectors:
        return normalize_rows(self.embed_raw(texts))

    def embed_raw(self, texts: Sequence[str]) -> Vectors:
        """Mean token vectors before normalisation (their length says how much a word weighs)."""
        if len(texts) == 0:
            return np.zeros((0, self._dims), dtype=np.float32)
        model = _wordllama_model(self._dims)
        if len(texts) == 1:
            # A cache lookup embeds one question: WordLlama's batch path (encode_batch, masks,
            # padding) costs ~40% more. Same arithmetic: the token vectors' float32 sum over the count.
            table = model.embedding
            # A lone surrogate would make the tokenizer raise TypeError: it reads U+FFFD instead.
            ids = np.clip(model.tokenizer.encode(well_formed(texts[0]), add_special_tokens=False).ids,
                          0, len(table) - 1)
            out = np.zeros((1, self._dims), dtype=np.float32)
            if len(ids):
                out[0] = table[ids].sum(axis=0, dtype=np.float32) / np.float32(len(ids))
            return out
        raw = model.embed([well_formed(t) for t in texts], norm=False, batch_size=256)
        return np.asarray(raw, dtype=np.float32)


# -- OpenAI-compatible -----------------------------------------------------------------------------


class OpenAICompatibleEmbedder(_Named):
    """Vectors from an OpenAI-compatible embeddings endpoint, through ``embed_fn``.

    ``embed_fn`` takes a batch of texts and returns one vector per text; this class batches, checks
    the shape of what came back (a wrong count or size is a malformed upstream answer) and
    normalises the rows.
    """

    def __init__(
        self,
        name: str,
        dims: int,
        embed_fn: Callable[[list[str]], list[list[float]]],
        *,
        batch_size: int = 256,
    ) -> None:
        if dims <= 0:
            raise ConfigurationError(f"{ENV_VAR}: embedding dims must be positive, got {dims}.")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        super().__init__(name, dims)
        self._embed_fn = embed_fn
        self._batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self._dims), dtype=np.float32)
        for start in range(0, len(texts), self._batch_size):
            batch = [well_formed(t) if t.strip() else " " for t in texts[start : start + self._batch_size]]
            rows = self._embed_fn(batch)
            if len(rows) != len(batch):
                raise UpstreamError(
                    f"{self._name}: the embeddings endpoint returned {len(rows)} vectors for {len(batch)} texts",
                    kind="malformed",
                )
            block = np.asarray(rows, dtype=np.float32)
            if block.ndim != 2 or block.shape[1] != self._dims:
                raise UpstreamError(
                    f"{self._name}: expected {self._dims}-dimensional vectors, got shape {block.shape}",
                    kind="malformed",
                )
            out[start : start + len(batch)] = block
        return normalize_rows(out)


def openai_sdk_embed_fn(client: OpenAI) -> OpenAIEmbedFn:
    """An :class:`OpenAIEmbedFn` that calls ``client.embeddings.create`` directly (unmetered).

    For tools and quality runs; the gateway wires its own metered function instead. openai errors
    become :class:`UpstreamError` here, once.
    """
    import openai

    def embed(texts: list[str], *, model: str, dimensions: int | None) -> list[list[float]]:
        try:
            if dimensions is None:
                response = client.embeddings.create(model=model, input=texts)
            else:
                response = client.embeddings.create(model=model, input=texts, dimensions=dimensions)
        except openai.APIStatusError as exc:
            raise UpstreamError(f"embeddings call failed with HTTP {exc.status_code}", status=exc.status_code) from exc
        except openai.APITimeoutError as exc:
            raise UpstreamError("embeddings call timed out", kind="timeout") from exc
        except openai.APIConnectionError as exc:
            raise UpstreamError("cannot reach the embeddings endpoint", kind="connection") from exc
        ordered = sorted(response.data, key=lambda d: d.index)
        return [list(d.embedding) for d in ordered]

    return embed


# -- PENNY_EMBEDDER --------------------------------------------------------------------------------


def embedder_from_spec(spec: str, *, openai_embed_fn: OpenAIEmbedFn | None = None) -> Embedder:
    """The embedder named by a ``PENNY_EMBEDDER`` value.

    ``openai:`` specs need ``openai_embed_fn`` (the caller owns the client and the bill).
    """
    scheme, _, rest = spec.strip().partition(":")
    target, _, query = rest.partition("?")
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise _bad_spec(spec, "cannot read its ?parameters") from None

    if scheme == "local" and target == "wordllama":
        _only(spec, params, {"dims"})
        dims = _int_param(spec, params, "dims") or 256
        if dims not in _WORDLLAMA_DIMS:
            raise _bad_spec(spec, f"dims must be one of {', '.join(map(str, _WORDLLAMA_DIMS))}")
        return WordLlamaEmbedder(dims)

    if scheme == "openai" and target:
        _only(spec, params, {"dimensions"})
        asked = _int_param(spec, params, "dimensions")
        size = asked if asked is not None else _OPENAI_DIMS.get(target)
        if size is None:
            raise _bad_spec(spec, f"Penny does not know the size of {target!r}; add ?dimensions=<n>")
        if openai_embed_fn is None:
            raise ConfigurationError(f"{ENV_VAR}={spec} needs an OpenAI embeddings client, and none was given.")
        call = openai_embed_fn
        model = target

        def embed_fn(texts: list[str]) -> list[list[float]]:
            return call(texts, model=model, dimensions=asked)

        return OpenAICompatibleEmbedder(spec.strip(), size, embed_fn)

    raise _bad_spec(spec, "unknown embedder")


def _bad_spec(spec: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"{ENV_VAR}={spec!r}: {why}. Accepted forms: {ACCEPTED_FORMS}.")


def _only(spec: str, params: dict[str, str], allowed: set[str]) -> None:
    extra = sorted(set(params) - allowed)
    if extra:
        raise _bad_spec(spec, f"unknown parameter {', '.join(extra)}")


def _int_param(spec: str, params: dict[str, str], key: str) -> int | None:
    if key not in params:
        return None
    raw = params[key]
    if not raw.isdigit() or int(raw) <= 0:
        raise _bad_spec(spec, f"{key} must be a positive whole number")
    return int(raw)
