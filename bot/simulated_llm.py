"""A simulated OpenAI-compatible LLM on loopback, for ``penny demo``: no real model, no real money.

It serves ``POST /v1/chat/completions`` (whole, or streamed as server-sent events ending in a usage
chunk when ``stream_options.include_usage`` asks for one) and ``POST /v1/embeddings``, shaped as the
OpenAI API reference shapes them, so Penny's own client, gateway, cache, limiter, budgets and ledger
run unchanged against it. Any other path is a 404.

Answers are made up, deterministically, from the numbered passages Penny puts in its prompt
(``bot/answer.py``): the two sentences sharing the most words with the question, each cited as
``[n]``, after :data:`LABEL`. ``usage`` counts about four characters a token, as OpenAI's tokenizers
do on English; a first token takes :attr:`SimulatedLLM.latency_s` and each word a little more, so an
answer streams in like a real one. Embeddings are hashed bags of words (texts sharing words are
close), for an ``openai:`` embedder.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import re
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["LABEL", "SimulatedLLM", "simulated_answer", "simulated_embedding", "token_count"]

LABEL = "(simulated LLM — no real model, no real money)"

_PASSAGE_HEAD = re.compile(r"^\[(\d{1,2})\] .*$", re.MULTILINE)
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)
# Words too common to say what a question is about.
_STOP = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how", "i", "in",
    "is", "it", "me", "my", "of", "on", "or", "our", "the", "to", "we", "what", "when", "where", "which",
    "who", "why", "will", "with", "you", "your",
})
_EMBED_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


def token_count(text: str) -> int:
    """About how many tokens ``text`` is: four characters a token, at least one."""
    return max(1, math.ceil(len(text) / 4))


def simulated_answer(messages: Sequence[Any]) -> str:
    """The simulated answer to a chat: :data:`LABEL`, then the prompt's passage sentences sharing
    the most words with the last user message, each cited by its passage's number."""
    question = ""
    system = ""
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            continue
        if message.get("role") == "user":
            question = message["content"]
        elif message.get("role") == "system":
            system = message["content"]
    asked = _words(question)
    scored: list[tuple[int, int, str]] = []  # (-overlap, position, "sentence [n]")
    for number, text in _passages(system):
        for sentence in _SENTENCE_END.split(_prose(text)):
            overlap = len(asked & _words(sentence))
            if overlap and 20 <= len(sentence) <= 400:
                scored.append((-overlap, len(scored), f"{sentence} [{number}]"))
    if not scored:
        return f"{LABEL} The passages I was given do not cover this."
    best = sorted(scored)[:2]
    return f"{LABEL} " + " ".join(text for _, _, text in sorted(best, key=lambda item: item[1]))


def simulated_embedding(text: str, dims: int) -> list[float]:
    """A unit vector for ``text``: each word adds ±1 on a few dimensions its hash picks."""
    vector = [0.0] * dims
    for word in _WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=16).digest()
        for i in range(0, 16, 2):
            vector[int.from_bytes(digest[i:i + 2], "little") % dims] += 1.0 if digest[i] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class SimulatedLLM:
    """The simulated API on ``127.0.0.1`` at a free port, served from a daemon thread::

        with SimulatedLLM() as llm:
            client = openai.OpenAI(api_key="sk-simulated", base_url=llm.base_url)
    """

    def __init__(self, *, latency_s: float = 0.3, word_delay_s: float = 0.012) -> None:
        self.latency_s = latency_s
        self.word_delay_s = word_delay_s
        self.calls = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.llm = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="penny-simulated-llm", daemon=True)

    @property
    def base_url(self) -> str:
        """The ``OPENAI_BASE_URL`` to point a client at."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> SimulatedLLM:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()  # a delayed answer wakes up and finishes at once
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SimulatedLLM:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _count(self) -> int:
        with self._lock:
            self.calls += 1
            return self.calls

    def _pause(self, seconds: float) -> None:
        self._closed.wait(seconds)

    def chat(self, request: dict[str, Any], call: int) -> dict[str, Any]:
        """The whole chat completion for ``request``."""
        messages = request.get("messages")
        content = simulated_answer(messages if isinstance(messages, list) else [])
        finish = "stop"
        limit = request.get("max_completion_tokens", request.get("max_tokens"))
        if isinstance(limit, int) and token_count(content) > limit:
            content, finish = content[: max(1, limit) * 4], "length"
        prompt = 3 + sum(token_count(str(m.get("content", ""))) + 4 for m in messages or [] if isinstance(m, dict))
        completion = token_count(content)
        return {
            "id": f"chatcmpl-simulated-{call}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(request.get("model") or "simulated"),
            "system_fingerprint": "penny-simulated",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": 0}},
        }

    def chat_events(self, request: dict[str, Any], call: int) -> Iterator[bytes]:
        """The same completion as server-sent events: a role chunk, a chunk a word, the finish
        reason, the usage (when asked for) and ``[DONE]``."""
        whole = self.chat(request, call)
        options = request.get("stream_options")
        with_usage = isinstance(options, dict) and options.get("include_usage") is True

        def event(choices: list[dict[str, Any]], usage: object = None) -> bytes:
            chunk = {key: whole[key] for key in ("id", "created", "model", "system_fingerprint")}
            chunk.update(object="chat.completion.chunk", choices=choices)
            if with_usage:
                chunk["usage"] = usage
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        def delta(body: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": body, "logprobs": None, "finish_reason": finish}]

        choice = whole["choices"][0]
        yield event(delta({"role": "assistant", "content": ""}))
        for word in re.findall(r"\S+\s*", choice["message"]["content"]):
            self._pause(self.word_delay_s)
            yield event(delta({"content": word}))
        yield event(delta({}, choice["finish_reason"]))
        if with_usage:
            yield event([], whole["usage"])
        yield b"data: [DONE]\n\n"

    def embeddings(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The embeddings of ``request["input"]`` (None: the input is not text)."""
        raw = request.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(text, str) for text in inputs):
            return None
        model = str(request.get("model") or "simulated")
        dimensions = request.get("dimensions")
        dims = dimensions if isinstance(dimensions, int) and dimensions > 0 else _EMBED_DIMS.get(model, 1536)
        data = []
        for index, text in enumerate(inputs):
            vector = simulated_embedding(text, dims)
            encoded: object = vector
            if request.get("encoding_format") == "base64":  # what the openai SDK asks for by default
                encoded = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(token_count(text) for text in inputs)
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def _prose(text: str) -> str:
    """A passage's running text on one line: no code blocks, tables, headings or list markers."""
    text = _CODE_BLOCK.sub(" ", text)
    lines = (line.strip().lstrip("-*>0123456789. ").strip() for line in text.splitlines())
    return " ".join(line for line in lines if line and not line.startswith(("|", "#", "```")))


def _passages(system: str) -> list[tuple[int, str]]:
    """The numbered passages of Penny's prompt: ``[n] label (path)`` then the passage's text."""
    heads = list(_PASSAGE_HEAD.finditer(system))
    return [(int(head.group(1)), system[head.end():heads[i + 1].start() if i + 1 < len(heads) else len(system)])
            for i, head in enumerate(heads)]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    llm: SimulatedLLM

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that hung up mid-answer is not worth a traceback


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return  # print nothing: requests carry an Authorization header

    def do_GET(self) -> None:
        self._body()
        self._json(404, _error(f"Unknown path {self.path}: this simulated LLM serves POST /v1/chat/completions "
                               "and /v1/embeddings"))

    def do_POST(self) -> None:
        llm = self.server.llm
        raw = self._body()
        path = self.path.split("?", 1)[0]
        if path not in ("/v1/chat/completions", "/v1/embeddings"):
            self._json(404, _error(f"Unknown path {path}: this simulated LLM serves POST /v1/chat/completions "
                                   "and /v1/embeddings"))
            return
        try:
            request = json.loads(raw)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            self._json(400, _error("The request body must be a JSON object."))
            return
        if path == "/v1/embeddings":
            result = llm.embeddings(request)
            if result is None:
                self._json(400, _error("'input' must be a string or a list of strings."))
            else:
                self._json(200, result)
            return
        call = llm._count()
        llm._pause(llm.latency_s)
        if request.get("stream") is True:
            self._stream(llm.chat_events(request, call))
        else:
            self._json(200, llm.chat(request, call))

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _json(self, status: int, body: object) -> None:
        payload = json.dumps(body).encode()
        with contextlib.suppress(OSError):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def _stream(self, events: Iterator[bytes]) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in events:
                self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
