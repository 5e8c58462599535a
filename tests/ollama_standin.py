"""A stand-in Ollama HTTP server on loopback, for tests: Ollama's documented API and its refusals.

It follows the facts in ../shared/notes/ollama.md: blobs stored by sha256 and verified, `create`
from a base tag with Safetensors `adapters` (only for llama/gemma2 bases, else "unsupported
architecture", as Ollama does), or from full safetensors `files` (config.json architecture checked),
NDJSON progress and chat streams, mid-stream errors as a final `{"error"}` line with HTTP 200,
404 `model 'x' not found`. A GGUF adapter is accepted at create for any base, as Ollama does, but the
first load fails where Ollama's runner would: the bases Ollama runs on its own engine (Gemma 3, Qwen 3)
answer "loras are not yet implemented" (unless `engine_applies_lora`), and an adapter written for another
architecture fails as llama.cpp's loader does. Replies are derived from the model name and the last user message
(`standin_reply`), so a test can tell which tag answered. Switches inject failures: a create that
fails mid-stream, a chat that fails mid-stream, slow answers, a create or load that hangs, and the
server going down.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import struct
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]{0,79}(/[a-zA-Z0-9][a-zA-Z0-9_.\-]{0,79})?$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9_.\-]{0,79}$")

# Base tags a test can create from without importing them first: tag -> general.architecture.
KNOWN_BASE_TAGS = {
    "gemma3:270m": "gemma3",
    "gemma2:2b": "gemma2",
    "llama3.2:1b": "llama",
    "llama3.2:latest": "llama",
    "qwen2.5:0.5b": "qwen2",
}
# Safetensors LoRA adapters convert only for these base architectures.
ADAPTER_ARCHITECTURES = {"llama", "gemma2"}
# Architectures Ollama always runs on its own engine (`OllamaEngineRequired`), which fails to load a
# model with a LoRA adapter ("loras are not yet implemented"); the others run on llama.cpp, which applies it.
OLLAMA_ENGINE_ARCHITECTURES = {"gemma3", "gemma3n", "qwen3", "qwen3moe", "mistral3", "llama4", "mllama"}
ENGINE_LORA_ERROR = "llama runner process has terminated: failed to initialize model: loras are not yet implemented"
# Full safetensors imports: HF architectures -> Ollama architecture (no Qwen3, no plain Mistral).
FILE_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MixtralForCausalLM": "llama",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
    "Qwen2ForCausalLM": "qwen2",
    "Phi3ForCausalLM": "phi3",
}
QUANTIZE_TYPES = {"q4_k_m", "q4_k_s", "q8_0"}
QUANTIZABLE_DTYPES = {"F16", "BF16", "F32"}
PARAMETER_TYPES: dict[str, type | tuple[type, ...]] = {
    "num_ctx": int, "num_predict": int, "num_keep": int, "seed": int, "top_k": int,
    "repeat_last_n": int, "temperature": (int, float), "top_p": (int, float),
    "min_p": (int, float), "repeat_penalty": (int, float), "presence_penalty": (int, float),
    "frequency_penalty": (int, float), "stop": list,
}
TEMPLATE_BLOCKS = ("if", "range", "with", "define", "block")
VERSION = "0.0.0-standin"


def standin_reply(model: str, messages: list[dict[str, Any]]) -> str:
    """What the stand-in answers: names the model, quotes the question, adds a stable hash."""
    last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    digest = hashlib.sha256(f"{model}\n{last_user}".encode()).hexdigest()[:8]
    return f"[{model}] on {last_user!r}: answer {digest}"


def reply_pieces(text: str) -> list[str]:
    """The stand-in's "tokens": one word with its trailing space each."""
    return re.findall(r"\S+\s*", text)


def full_name(name: str) -> str:
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def valid_name(name: str) -> bool:
    base, _, tag = full_name(name).rpartition(":")
    return bool(NAME_RE.match(base)) and bool(TAG_RE.match(tag))


def safetensors_dtypes(data: bytes) -> dict[str, str]:
    """Tensor name -> dtype from a safetensors file; ValueError when it is not one."""
    if len(data) < 8:
        raise ValueError("file too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("safetensors header length exceeds the file size")
    header = json.loads(data[8 : 8 + n])
    end = 0
    dtypes = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtypes[name] = info["dtype"]
        end = max(end, info["data_offsets"][1])
    if 8 + n + end != len(data):
        raise ValueError("safetensors data size does not match its header")
    return dtypes


def gguf_adapter_architecture(data: bytes) -> str:
    """Validate a GGUF LoRA adapter as Ollama's and llama.cpp's loaders do; return its architecture.
    ValueError with the loader's complaint otherwise."""
    import gguf

    if data[:4] != b"GGUF":
        raise ValueError("invalid file magic")
    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        reader = gguf.GGUFReader(f.name)

        def text(key: str) -> str:
            field = reader.get_field(key)
            return bytes(field.parts[field.data[0]]).decode() if field is not None else ""

        if text("general.type") != "adapter":
            raise ValueError(f"expect general.type to be 'adapter', but got: {text('general.type')}")
        if text("adapter.type") != "lora":
            raise ValueError(f"expect adapter.type to be 'lora', but got: {text('adapter.type')}")
        alpha = reader.get_field("adapter.lora.alpha")
        if alpha is None or alpha.types[0] != gguf.GGUFValueType.FLOAT32:
            raise ValueError("adapter.lora.alpha is missing or not a float32")
        dims = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    halves: dict[str, dict[str, list[int]]] = {}
    for name, shape in dims.items():
        base, dot, which = name.rpartition(".")
        if not dot or which not in ("lora_a", "lora_b"):
            raise ValueError(f"LoRA tensor '{name}' has unexpected suffix")
        halves.setdefault(base, {})[which] = shape
    if not halves:
        raise ValueError("no LoRA tensors in the adapter")
    for base, pair in halves.items():
        if len(pair) != 2:
            raise ValueError(f"LoRA tensor pair for '{base}' is missing one component")
        if len(pair["lora_a"]) != 2 or len(pair["lora_b"]) != 2 or pair["lora_a"][1] != pair["lora_b"][0]:
            raise ValueError("lora_a tensor is not transposed (hint: adapter from \"finetune\" example is no longer supported)")
    return text("general.architecture")


def check_go_template(template: str) -> None:
    """Parse just enough of Go's text/template to refuse what Ollama's parser refuses most often."""
    depth, pos = 0, 0
    while (start := template.find("{{", pos)) != -1:
        stop = template.find("}}", start + 2)
        if stop == -1:
            raise ValueError("template: unclosed action")
        action = template[start + 2 : stop].strip("- \t\n")
        word = action.split(" ", 1)[0]
        if word in TEMPLATE_BLOCKS:
            depth += 1
        elif word == "end":
            depth -= 1
            if depth < 0:
                raise ValueError("template: unexpected {{end}}")
        elif word == "else" and depth == 0:
            raise ValueError("template: unexpected {{else}}")
        pos = stop + 2
    if depth:
        raise ValueError("template: unexpected EOF")


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to stay loaded; None = forever (negative), as Ollama reads keep_alive."""
    if value is None:
        return 300.0
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            match = re.fullmatch(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)", text)
            if not match:
                raise ValueError(f'time: invalid duration "{text}"') from None
            scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]
            seconds = float(match.group(1)) * scale
    return None if seconds < 0 else seconds


@dataclass
class StoredModel:
    name: str
    architecture: str
    parent: str = ""
    template: str = ""
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)
    adapter_architecture: str = ""  # of a GGUF adapter: llama.cpp refuses to load a mismatch
    files: dict[str, str] = field(default_factory=dict)
    quantize: str | None = None
    digest: str = ""
    size: int = 0
    modified_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": self.parent,
            "format": "gguf",
            "family": self.architecture,
            "families": [self.architecture],
            "parameter_size": "tiny",
            "quantization_level": (self.quantize or "F16").upper(),
        }


class OllamaStandIn:
    """Start with `await standin.start()` (returns the base URL); stop with `await standin.stop()`."""

    def __init__(self, base_models: dict[str, str] | None = None, *, adapters_supported: bool = True,
                 engine_applies_lora: bool = False):
        self.blobs: dict[str, bytes] = {}
        self.models: dict[str, StoredModel] = {}
        for tag, arch in (KNOWN_BASE_TAGS if base_models is None else base_models).items():
            self.models[full_name(tag)] = StoredModel(full_name(tag), arch, digest=_digest(tag.encode()))
        self.loaded: dict[str, float | None] = {}  # name -> monotonic expiry (None: forever)
        self.adapters_supported = adapters_supported  # False: newer Ollama that dropped adapters
        self.engine_applies_lora = engine_applies_lora  # True: an Ollama whose own engine applies LoRA
        # Failure switches for tests.
        self.fail_next_create: str | None = None  # error line after the first progress line
        self.fail_next_chat: str | None = None  # error line after the first chat chunk
        self.delay_s: float = 0.0  # before each chat chunk and each create progress line
        self.corrupt_next_blob = False  # flip a byte of the next upload, as a broken link would
        # "create" / "load": such requests hang (a stuck Ollama) until `release_stalled()`, then fail;
        # `stalled` lists the ones that started hanging, so a test knows its client is waiting there.
        self.stall: set[str] = set()
        self.stalled: list[str] = []
        self._release = asyncio.Event()
        # Exact replies for tests: last user message -> reply text (otherwise `standin_reply`).
        self.scripted_replies: dict[str, str] = {}
        # What happened, for assertions.
        self.requests: list[tuple[str, str, Any]] = []
        self.load_events: list[str] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: web.AppRunner | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("HEAD", "/api/blobs/{digest}", self.head_blob)
        app.router.add_post("/api/blobs/{digest}", self.post_blob)
        app.router.add_post("/api/create", self.create)
        app.router.add_post("/api/chat", self.chat)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_post("/api/show", self.show)
        app.router.add_delete("/api/delete", self.delete)
        app.router.add_post("/api/copy", self.copy)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/", self.root)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]
        return self.url

    def release_stalled(self) -> None:
        """End every hanging request (with a 500) and stop stalling new ones."""
        self.stall.clear()
        self._release.set()
        self._release = asyncio.Event()

    async def _stall(self, what: str) -> None:
        if what in self.stall:
            self.stalled.append(what)
            release = self._release
            await release.wait()
            raise _error(500, f"stand-in: the stalled {what} was released")

    async def stop(self) -> None:
        self.release_stalled()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def go_down(self) -> None:
        """Stop listening but keep every blob and model, like `ollama serve` being stopped."""
        await self.stop()

    async def come_back(self) -> None:
        await self.start()

    # ---- helpers -------------------------------------------------------------------------------
    def find(self, name: str) -> StoredModel | None:
        return self.models.get(full_name(name))

    def require(self, name: str) -> StoredModel:
        """The model, or Ollama's 404 `model 'x' not found`."""
        model = self.find(name)
        if model is None:
            raise _error(404, f"model '{name}' not found")
        return model

    def is_loaded(self, name: str) -> bool:
        name = full_name(name)
        if name not in self.loaded:
            return False
        expiry = self.loaded[name]
        if expiry is not None and expiry <= time.monotonic():
            del self.loaded[name]
            return False
        return True

    async def _json(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw:
            raise _error(400, "missing request body")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as e:
            raise _error(400, f"invalid character in request body: {e.msg}") from None
        if not isinstance(body, dict):
            raise _error(400, "json: cannot unmarshal into Go value of type api.Request")
        self.requests.append((request.method, request.path, body))
        return body

    def _blob(self, digest: str, relname: str) -> bytes:
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise _error(400, f"invalid digest for {relname}: invalid digest format")
        blob = self.blobs.get(digest.replace("-", ":", 1).lower())
        if blob is None:
            raise _error(400, f"blob not found for {relname} (digest {digest}): file does not exist")
        return blob

    # ---- blobs ---------------------------------------------------------------------------------
    async def head_blob(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        if not DIGEST_RE.match(digest):
            raise _error(400, "invalid digest format")
        if digest.replace("-", ":", 1).lower() in self.blobs:
            return web.Response(status=200)
        return web.Response(status=404)

    async def post_blob(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        if not DIGEST_RE.match(digest):
            raise _error(400, "invalid digest format")
        key = digest.replace("-", ":", 1).lower()
        data = await request.read()
        self.requests.append(("POST", request.path, len(data)))
        if self.corrupt_next_blob and data:
            self.corrupt_next_blob = False
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if key in self.blobs:
            return web.Response(status=200)
        actual = _digest(data)
        if actual != key:
            raise _error(400, f'digest mismatch, expected "{key}", got "{actual}"')
        self.blobs[key] = data
        return web.Response(status=201)

    # ---- create --------------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        name = body.get("model") or body.get("name") or ""
        if not valid_name(name):
            raise _error(400, "invalid model name")
        model, steps = self._plan_create(full_name(name), body)
        await self._stall("create")
        fail = self.fail_next_create
        self.fail_next_create = None
        if body.get("stream") is False:
            for _ in steps:
                await asyncio.sleep(self.delay_s)
            if fail:
                raise _error(500, fail)
            self.models[model.name] = model
            return web.json_response({"status": "success"})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for i, status in enumerate(steps):
            await asyncio.sleep(self.delay_s)
            await _write_line(response, {"status": status})
            if fail and i == 0:
                await _write_line(response, {"error": fail})
                await response.write_eof()
                return response
        self.models[model.name] = model
        await _write_line(response, {"status": "success"})
        await response.write_eof()
        return response

    def _plan_create(self, name: str, body: dict[str, Any]) -> tuple[StoredModel, list[str]]:
        """Validate a create request the way Ollama does; return the model and progress lines."""
        files = body.get("files") or {}
        adapters = body.get("adapters") or {}
        for mapping in (files, adapters):
            if not isinstance(mapping, dict):
                raise _error(400, "json: cannot unmarshal files into map[string]string")
            for relname in mapping:
                if relname.startswith("/") or ".." in relname.split("/"):
                    raise _error(400, "file path must be relative")
        template = body.get("template") or ""
        if template:
            try:
                check_go_template(template)
            except ValueError as e:
                raise _error(400, str(e)) from None
        parameters = body.get("parameters") or {}
        for key, value in parameters.items():
            if key not in PARAMETER_TYPES:
                raise _error(400, f"unknown parameter '{key}'")
            if not isinstance(value, PARAMETER_TYPES[key]) or isinstance(value, bool):
                raise _error(400, f"invalid value for parameter '{key}'")
        quantize = body.get("quantize") or None
        if quantize and quantize.lower() not in QUANTIZE_TYPES:
            raise _error(400, f"unsupported quantization type {quantize}")

        model = StoredModel(
            name, "", template=template, system=body.get("system") or "", parameters=parameters,
            adapters=dict(adapters), files=dict(files), quantize=quantize,
        )
        steps: list[str] = []
        if body.get("from"):
            base = self.find(body["from"])
            if base is None:
                raise _error(400, f"model '{body['from']}' not found")
            model.architecture, model.parent = base.architecture, base.name
            model.template = template or base.template
            model.system = model.system or base.system
            model.parameters = parameters or base.parameters
            steps.append(f"using existing layer {base.digest}")
            if adapters:
                steps += self._check_adapters(base, adapters, model)
        elif files:
            model.architecture, file_steps = self._check_files(files, quantize)
            steps += file_steps
        else:
            raise _error(400, "neither 'from' or 'files' was specified")
        payload = json.dumps(body, sort_keys=True).encode()
        model.digest = _digest(payload)
        used = {**files, **adapters}.values()
        model.size = sum(len(self.blobs.get(str(d).replace("-", ":", 1).lower(), b"")) for d in used)
        steps += ["writing manifest"]
        return model, steps

    def _check_adapters(self, base: StoredModel, adapters: dict[str, str], model: StoredModel) -> list[str]:
        if not self.adapters_supported:
            raise _error(400, "LoRA adapters are no longer supported")
        blobs = {rel: self._blob(d, rel) for rel, d in adapters.items()}
        ggufs = [rel for rel, data in blobs.items() if rel.endswith(".gguf") or data[:4] == b"GGUF"]
        if ggufs:
            if len(ggufs) != len(blobs):
                raise _error(400, "mixed model file types")
            if len(ggufs) > 1:
                raise _error(400, "only one adapter is currently supported")
            try:
                model.adapter_architecture = gguf_adapter_architecture(blobs[ggufs[0]])
            except ValueError as e:
                raise _error(400, f"{ggufs[0]}: {e}") from None
            return [f"creating new layer {_digest(blobs[ggufs[0]])}"]
        if "adapter_config.json" not in {rel.rsplit("/", 1)[-1] for rel in blobs}:
            raise _error(400, "no adapter_config.json among the adapter files")
        weights = [rel for rel in blobs if rel.endswith(".safetensors")]
        if not weights:
            raise _error(400, "no safetensors or gguf files found")
        if base.architecture not in ADAPTER_ARCHITECTURES:
            raise _error(400, "unsupported architecture")
        for rel in weights:
            try:
                names = safetensors_dtypes(blobs[rel])
            except (ValueError, KeyError, json.JSONDecodeError) as e:
                raise _error(400, f"{rel}: invalid safetensors file: {e}") from None
            if not any("lora_A" in n or "lora_B" in n for n in names):
                raise _error(400, f"{rel}: no LoRA tensors (lora_A/lora_B) found")
        return ["converting adapter", f"creating new layer {_digest(b''.join(blobs.values()))}"]

    def _check_files(self, files: dict[str, str], quantize: str | None) -> tuple[str, list[str]]:
        blobs = {rel: self._blob(d, rel) for rel, d in files.items()}
        weights = [rel for rel in blobs if rel.endswith(".safetensors")]
        if not weights:
            raise _error(400, "unknown type")
        config_rel = next((rel for rel in blobs if rel.rsplit("/", 1)[-1] == "config.json"), None)
        if config_rel is None:
            raise _error(400, "config.json not found among the model files")
        try:
            config = json.loads(blobs[config_rel])
        except json.JSONDecodeError:
            raise _error(400, "config.json: invalid JSON") from None
        archs = config.get("architectures") or []
        if not archs or archs[0] not in FILE_ARCHITECTURES:
            raise _error(400, "unsupported architecture")
        if not any(rel.rsplit("/", 1)[-1] in ("tokenizer.json", "tokenizer.model") for rel in blobs):
            raise _error(400, "tokenizer.json or tokenizer.model not found among the model files")
        dtypes: set[str] = set()
        for rel in weights:
            try:
                dtypes |= set(safetensors_dtypes(blobs[rel]).values())
            except (ValueError, KeyError, json.JSONDecodeError) as e:
                raise _error(400, f"{rel}: invalid safetensors file: {e}") from None
        steps = ["converting model"]
        if quantize:
            if not dtypes <= QUANTIZABLE_DTYPES:
                raise _error(400, "quantization is only supported for F16 and F32 models")
            steps.append(f"quantizing F16 model to {quantize.upper()}")
        steps.append(f"creating new layer {_digest(b''.join(blobs[r] for r in weights))}")
        return FILE_ARCHITECTURES[archs[0]], steps

    # ---- chat ----------------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        name = body.get("model") or ""
        if not name:
            raise _error(400, "model is required")
        model = self.require(name)
        self._check_runner(model)
        try:
            keep_alive = parse_keep_alive(body.get("keep_alive"))
        except ValueError as e:
            raise _error(400, str(e)) from None
        options = body.get("options") or {}
        for key, value in options.items():
            expected = PARAMETER_TYPES.get(key)
            if expected and (not isinstance(value, expected) or isinstance(value, bool)):
                raise _error(400, f'option "{key}" must be of type {expected}')
        messages = body.get("messages") or []
        if not messages:  # load (or unload with keep_alive 0) without generating
            await self._stall("load")
            await asyncio.sleep(self.delay_s)
            if keep_alive == 0:
                self.loaded.pop(model.name, None)
                return web.json_response(self._final(model, "unload", 0, 0))
            self._load(model, keep_alive)
            return web.json_response(self._final(model, "load", 0, 0))
        self._load(model, keep_alive)
        last_user = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        reply = self.scripted_replies.get(last_user) or standin_reply(model.name, messages)
        pieces = reply_pieces(reply)
        limit = options.get("num_predict", -1)
        done_reason = "stop"
        if isinstance(limit, int) and 0 <= limit < len(pieces):
            pieces, done_reason = pieces[:limit], "length"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        if not any(m.get("role") == "system" for m in messages):  # the model's SYSTEM is used instead
            prompt_tokens += len(model.system.split())
        fail = self.fail_next_chat
        self.fail_next_chat = None
        if body.get("stream") is False:
            await asyncio.sleep(self.delay_s)
            if fail:
                raise _error(500, fail)
            final = self._final(model, done_reason, len(pieces), prompt_tokens)
            final["message"]["content"] = "".join(pieces)
            return web.json_response(final)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for i, piece in enumerate(pieces):
            await asyncio.sleep(self.delay_s)
            await _write_line(response, {
                "model": model.name, "created_at": _now(),
                "message": {"role": "assistant", "content": piece}, "done": False,
            })
            if fail and i == 0:
                await _write_line(response, {"error": fail})
                await response.write_eof()
                return response
        await _write_line(response, self._final(model, done_reason, len(pieces), prompt_tokens))
        if keep_alive == 0:
            self.loaded.pop(model.name, None)
        await response.write_eof()
        return response

    def _check_runner(self, model: StoredModel) -> None:
        """Refuse to load what Ollama's runners cannot: the 500 a crashed runner start gives."""
        if not model.adapter_architecture:
            return
        if model.architecture in OLLAMA_ENGINE_ARCHITECTURES and not self.engine_applies_lora:
            raise _error(500, ENGINE_LORA_ERROR)
        if model.adapter_architecture != model.architecture:
            raise _error(500, "llama runner process has terminated: error loading model: "
                              "failed to apply lora adapter: model arch and LoRA arch mismatch")

    def _load(self, model: StoredModel, keep_alive: float | None) -> None:
        if not self.is_loaded(model.name):
            self.load_events.append(model.name)
        self.loaded[model.name] = None if keep_alive is None else time.monotonic() + keep_alive

    def _final(self, model: StoredModel, reason: str, eval_count: int, prompt_count: int) -> dict[str, Any]:
        return {
            "model": model.name, "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done": True, "done_reason": reason,
            "total_duration": 1_000_000 * (eval_count + 1), "load_duration": 1_000_000,
            "prompt_eval_count": prompt_count, "prompt_eval_duration": 1000 * prompt_count,
            "eval_count": eval_count, "eval_duration": 1_000_000 * eval_count,
        }

    # ---- model management ----------------------------------------------------------------------
    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [
            {"name": m.name, "model": m.name, "modified_at": m.modified_at, "size": m.size,
             "digest": m.digest.removeprefix("sha256:"), "details": m.details()}
            for m in self.models.values()
        ]})

    async def show(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        name = body.get("model") or body.get("name") or ""
        model = self.require(name)
        lines = [f"FROM {model.parent or model.name}"]
        lines += [f"ADAPTER {d}" for d in model.adapters.values()]
        if model.template:
            lines.append(f'TEMPLATE """{model.template}"""')
        if model.system:
            lines.append(f'SYSTEM """{model.system}"""')
        params = []
        for key, value in model.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                params.append(f"{key:<30} {json.dumps(item) if isinstance(item, str) else item}")
        lines += [f"PARAMETER {p}" for p in params]
        return web.json_response({
            "modelfile": "\n".join(lines), "template": model.template, "system": model.system,
            "parameters": "\n".join(params), "details": model.details(),
            "model_info": {"general.architecture": model.architecture},
            "capabilities": ["completion"], "modified_at": model.modified_at,
        })

    async def delete(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        name = body.get("model") or body.get("name") or ""
        model = self.require(name)
        del self.models[model.name]
        self.loaded.pop(model.name, None)
        return web.Response(status=200)

    async def copy(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        source = self.find(body.get("source") or "")
        if source is None:
            raise _error(404, f"model '{body.get('source')}' not found")
        destination = body.get("destination") or ""
        if not valid_name(destination):
            raise _error(400, "invalid model name")
        copied = StoredModel(**{**source.__dict__, "name": full_name(destination)})
        self.models[copied.name] = copied
        return web.Response(status=200)

    async def ps(self, request: web.Request) -> web.Response:
        models = []
        for name in list(self.loaded):
            if not self.is_loaded(name) or name not in self.models:
                continue
            expiry = self.loaded[name]
            expires = (datetime.now(timezone.utc) + timedelta(days=3650 if expiry is None else
                       max(0.0, expiry - time.monotonic()) / 86400))
            m = self.models[name]
            models.append({"name": name, "model": name, "digest": m.digest.removeprefix("sha256:"),
                           "size": m.size, "size_vram": 0, "expires_at": expires.isoformat(),
                           "details": m.details(), "context_length": 4096})
        return web.json_response({"models": models})

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _error(status: int, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 404: web.HTTPNotFound, 500: web.HTTPInternalServerError}[status]
    return cls(text=json.dumps({"error": message}), content_type="application/json")


async def _write_line(response: web.StreamResponse, obj: dict[str, Any]) -> None:
    await response.write(json.dumps(obj).encode() + b"\n")
