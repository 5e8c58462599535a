"""A stand-in vLLM OpenAI-compatible server on loopback, for tests: vLLM's documented API and refusals.

It follows vLLM's `serving_models.py`, its API server and the "Dynamically serving LoRA Adapters"
docs: `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` exist only when runtime updating is on
(else FastAPI's 404 `{"detail": "Not Found"}`); a load reads the adapter folder from disk and refuses
a known name (400 "has already been loaded"), missing files (404 "No adapter found for <path>") and a
rank above `--max-lora-rank` (400, read from adapter_config.json `r`); unload of an unknown name is
404; `/v1/models` lists the base (no parent) and each adapter with its path as `root`; chat streams
SSE `data:` chunks ending `data: [DONE]`, and an unknown `model` is 404 "The model `x` does not exist".
Errors use vLLM's `{"error": {message, type, param, code}}` body. `--api-key` is checked as a Bearer
token on /v1 routes. Replies come from `standin_reply` (model name + question + hash), so a test can
tell which adapter answered. Switches: slow chunks, a chat failing mid-stream, the server going down,
and `restart()`, which forgets adapters loaded at runtime as a real vLLM restart does.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from ollama_standin import reply_pieces, standin_reply

# `--max-lora-rank` accepts only these values; vLLM's default is 16.
ALLOWED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VllmStandIn:
    """Start with `await standin.start()` (returns the base URL); stop with `await standin.stop()`."""

    def __init__(self, model: str = "google/gemma-3-270m-it", *, max_lora_rank: int = 16, max_loras: int = 4,
                 runtime_lora_updating: bool = True, api_key: str | None = None, max_model_len: int = 4096):
        if max_lora_rank not in ALLOWED_MAX_LORA_RANKS:
            raise ValueError(f"--max-lora-rank must be one of {ALLOWED_MAX_LORA_RANKS}")
        self.model = model
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras  # adapters per batch on the GPU; more may be registered (LRU cache)
        self.runtime_lora_updating = runtime_lora_updating
        self.api_key = api_key
        self.max_model_len = max_model_len
        self.adapters: dict[str, str] = {}  # lora_name -> lora_path, in load order
        self.load_count = 0
        # Failure switches for tests.
        self.fail_next_chat: str | None = None  # error event after the first content chunk
        self.delay_s = 0.0  # before each streamed chunk
        self.scripted_replies: dict[str, str] = {}  # last user message -> exact reply
        self.requests: list[tuple[str, str, Any]] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: web.AppRunner | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        if self.runtime_lora_updating:  # vLLM registers these routes only with the variable set
            app.router.add_post("/v1/load_lora_adapter", self.load_lora_adapter)
            app.router.add_post("/v1/unload_lora_adapter", self.unload_lora_adapter)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()
        if not self.port:
            self.port = self._runner.addresses[0][1]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def go_down(self) -> None:
        await self.stop()

    async def come_back(self) -> None:
        await self.start()

    async def restart(self) -> None:
        """A `vllm serve` restart: adapters loaded at runtime are gone."""
        await self.stop()
        self.adapters.clear()
        await self.start()

    # ---- helpers -------------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if self.api_key and request.path.startswith("/v1") and \
                request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        unmatched = request.match_info.http_exception
        if isinstance(unmatched, web.HTTPNotFound):  # FastAPI's answer for a route vLLM did not register
            return web.json_response({"detail": "Not Found"}, status=404)
        return await handler(request)

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            raise _error(400, "JSON decode error", "BadRequestError") from None
        if not isinstance(body, dict):
            raise _error(400, "Input should be a valid dictionary", "BadRequestError")
        self.requests.append((request.method, request.path, body))
        return body

    # ---- LoRA routes ---------------------------------------------------------------------------
    async def load_lora_adapter(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            raise _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in self.adapters:
            raise _error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        folder = Path(path)
        config_file = folder / "adapter_config.json"
        if not config_file.is_file() or not any(folder.glob("adapter_model.*")):
            raise _error(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise _error(400, f"Loading lora {name} failed: invalid adapter_config.json ({e})", "BadRequestError")
        rank = int(config.get("r", 8))
        if rank > self.max_lora_rank:
            raise _error(400, f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}.",
                         "BadRequestError")
        self.adapters[name] = path
        self.load_count += 1
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora_adapter(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        name = body.get("lora_name")
        if not name and not body.get("lora_int_id"):
            raise _error(400, "either 'lora_name' and 'lora_int_id' needs to be provided.", "InvalidUserInput")
        if name not in self.adapters:
            raise _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del self.adapters[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    # ---- models, health ------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        cards = [{"id": self.model, "object": "model", "created": created, "owned_by": "vllm",
                  "root": self.model, "parent": None, "max_model_len": self.max_model_len}]
        cards += [{"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": path,
                   "parent": self.model, "max_model_len": None} for name, path in self.adapters.items()]
        return web.json_response({"object": "list", "data": cards})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    # ---- chat ----------------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        model = body.get("model") or self.model
        if model != self.model and model not in self.adapters:
            raise _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        messages = body.get("messages") or []
        if not messages:
            raise _error(400, "messages must not be empty", "BadRequestError")
        for key in ("temperature", "top_p", "top_k", "max_tokens", "seed"):
            if key in body and (isinstance(body[key], bool) or not isinstance(body[key], (int, float))):
                raise _error(400, f"{key}: Input should be a valid number", "BadRequestError")
        last_user = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        pieces = reply_pieces(self.scripted_replies.get(last_user) or standin_reply(model, messages))
        finish = "stop"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and limit < len(pieces):
            pieces, finish = pieces[:limit], "length"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        fail, self.fail_next_chat = self.fail_next_chat, None
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        if not body.get("stream"):
            await asyncio.sleep(self.delay_s)
            return web.json_response({"id": chunk_id, "object": "chat.completion", "model": model, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces)}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)

        async def send(obj: dict[str, Any] | str) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await response.write(f"data: {data}\n\n".encode())

        def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            return {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

        await send(chunk({"role": "assistant", "content": ""}))
        for i, piece in enumerate(pieces):
            await asyncio.sleep(self.delay_s)
            await send(chunk({"content": piece}, finish if i == len(pieces) - 1 else None))
            if fail and i == 0:
                await send({"error": {"message": fail, "type": "InternalServerError", "param": None, "code": 500}})
                await send("[DONE]")
                await response.write_eof()
                return response
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({"id": chunk_id, "object": "chat.completion.chunk", "model": model, "choices": [],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                                  "total_tokens": prompt_tokens + len(pieces)}})
        await send("[DONE]")
        await response.write_eof()
        return response


def _error(status: int, message: str, kind: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 404: web.HTTPNotFound}[status]
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return cls(text=json.dumps(body), content_type="application/json")
