"""`ModelServer` on a vLLM OpenAI-compatible server that the user starts, with runtime LoRA loading:

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE --enable-lora --max-loras N --max-lora-rank R

Why vLLM: one base model in GPU memory serves every guild's adapter, several adapters in one batch,
and a new version is loaded without reloading the base. Each version is loaded under its own name,
`<prefix>-<guild>-v<N>`, and never under a name used before: vLLM keys its adapter cache by name, so
re-using a name after a retrain could serve the old weights.

What vLLM does (its `serving_models.py` and the "Dynamically serving LoRA Adapters" docs):
- `POST /v1/load_lora_adapter {lora_name, lora_path}` loads the adapter from a path *on the vLLM
  host* (200, plain text); 400 "has already been loaded" for a known name; 400 "LoRA rank r is
  greater than max_lora_rank m"; 404 "No adapter found for <path>" when the files are not there.
  Without VLLM_ALLOW_RUNTIME_LORA_UPDATING the two routes do not exist (404 `{"detail":"Not Found"}`).
- `POST /v1/unload_lora_adapter {lora_name}`; 404 "cannot be found" for an unknown name.
- `GET /v1/models` lists the base (no parent) and each loaded adapter (`root` = its path).
- `POST /v1/chat/completions` with `model` = the adapter name streams SSE `data:` lines ending
  `data: [DONE]`; an unknown model is 404 "The model `x` does not exist". Adapters loaded at
  runtime are forgotten when vLLM restarts: an answer for a version vLLM no longer knows loads it
  again once, then retries.

Where the adapter goes: with `adapter_dir` set, publish copies the adapter files to
`<adapter_dir>/<name>/`, a folder the vLLM host also reads (the same disk, an NFS share or a
container volume); `server_adapter_dir` is that folder's path as the vLLM host sees it when it is
mounted elsewhere. Without `adapter_dir`, vLLM is given the version's own adapter folder (vLLM on
the same machine as the trainer). Every failure leaves as a `ModelServerError` (or
`ModelServerUnavailable`) whose message says what to do; the API key never appears in one.
"""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from serving.merge import ADAPTER_CONFIG
from serving.protocol import GenerationOptions, ModelServerError, ModelServerUnavailable, ServerHealth
from storage.records import ModelVersion

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
START_HINT = ("start it with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE --enable-lora` "
              "or set VLLM_BASE_URL")
RUNTIME_UPDATES_OFF = ("vLLM at {host} does not allow loading adapters at runtime: restart it with "
                       "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment and --enable-lora")
# The health probe unloads this name: a 404 "cannot be found" proves the runtime routes exist.
PROBE_NAME = "guildtune-health-probe"


class VllmServer:
    """Serves each guild's versions as LoRA adapters of one vLLM server (see the module docstring).

    base_url: vLLM's address (`/v1` optional). api_key: what vLLM was started with `--api-key`.
    adapter_dir / server_adapter_dir: where adapters are copied, here and as vLLM sees it.
    model: the base's served name (default: read from /v1/models). timeout_s bounds preload,
    remove and health; chat uses each request's own `GenerationOptions.timeout_s`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        adapter_dir: str | Path | None = None,
        server_adapter_dir: str | None = None,
        name_prefix: str = "guildtune",
        model: str | None = None,
        timeout_s: float = 60.0,
        publish_timeout_s: float = 300.0,
    ) -> None:
        self._url, self.host = _normalize_url(base_url or DEFAULT_BASE_URL)
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        self.server_adapter_dir = server_adapter_dir.rstrip("/") if server_adapter_dir else None
        self.name_prefix = name_prefix
        self.base_name = model
        self.timeout_s = timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.last_stats: dict[str, Any] = {}  # counts of the last finished chat, for the bot's logs
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Deadlines are enforced with asyncio around each call; httpx only bounds connecting.
        self._http = httpx.AsyncClient(base_url=self._url, headers=headers, timeout=httpx.Timeout(None, connect=10.0))

    # ---- naming --------------------------------------------------------------------------------
    def name_for(self, version: ModelVersion) -> str:
        return f"{self.name_prefix}-{version.guild_id}-v{version.number}"

    async def model_for(self, version: ModelVersion | None) -> str:
        return self.name_for(version) if version is not None else await self._base()

    # ---- chat ----------------------------------------------------------------------------------
    async def chat(
        self, version: ModelVersion | None, messages: list[dict[str, str]], options: GenerationOptions
    ) -> AsyncIterator[str]:
        """Stream the reply; the whole answer (a reload after a vLLM restart included) must finish
        within `options.timeout_s`."""
        deadline = asyncio.get_running_loop().time() + options.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                model = await self.model_for(version)
        except Exception as e:  # noqa: BLE001
            raise self._translate(e, "finding the base model", timeout_s=options.timeout_s) from e
        action = f"answering with {model}"
        try:
            try:
                async for piece in self._stream(model, messages, options, deadline):
                    yield piece
                return
            except _UnknownModel as e:
                if version is None:
                    raise ModelServerError(f"vLLM at {self.host} does not serve '{model}': {e}") from e
            log.warning("vLLM has no adapter %s (was it restarted?): loading it again", model)
            async with asyncio.timeout_at(deadline):
                await self.publish(version)
            async for piece in self._stream(model, messages, options, deadline):
                yield piece
        except ModelServerError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure leaves as a ModelServerError
            raise self._translate(e, action, timeout_s=options.timeout_s) from e

    async def _stream(
        self, model: str, messages: list[dict[str, str]], options: GenerationOptions, deadline: float
    ) -> AsyncIterator[str]:
        body = {"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
                **_sampling(options)}
        finish, usage = None, {}
        async with asyncio.timeout_at(deadline):
            response = await self._http.send(self._http.build_request("POST", "/v1/chat/completions", json=body),
                                             stream=True)
        try:
            if response.status_code != 200:
                async with asyncio.timeout_at(deadline):
                    await response.aread()
                message = _error_message(response)
                if response.status_code == 404 and "does not exist" in message:
                    raise _UnknownModel(message)
                raise self._refused(response, f"answering with {model}")
            lines = response.aiter_lines()
            while True:
                # The deadline guards only our own awaits, never the consumer's time between pieces.
                async with asyncio.timeout_at(deadline):
                    try:
                        line = await anext(lines)
                    except StopAsyncIteration:
                        break
                if not line.startswith("data:"):
                    continue  # blank separators and SSE comments
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event or event.get("object") == "error":
                    raise ModelServerError(f"vLLM failed while answering with {model}: {_event_error(event)}")
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content
                    finish = choice.get("finish_reason") or finish
                usage = event.get("usage") or usage
            self.last_stats = {"model": model, "done_reason": finish,
                               "eval_count": usage.get("completion_tokens"),
                               "prompt_eval_count": usage.get("prompt_tokens")}
        finally:
            await response.aclose()

    # ---- publish -------------------------------------------------------------------------------
    async def publish(self, version: ModelVersion) -> str:
        """Place the adapter where vLLM reads it and load it under the version's name; returns the
        name. A version vLLM already serves from the same path is not loaded twice."""
        name = self.name_for(version)
        source = Path(version.adapter_path)
        if not (source / ADAPTER_CONFIG).is_file() or not any(source.glob("*.safetensors")):
            raise ModelServerError(
                f"version {version.number} of guild {version.guild_id} cannot be published: {source} "
                f"has no {ADAPTER_CONFIG} and adapter weights (*.safetensors); retrain to produce them."
            )
        try:
            async with asyncio.timeout(self.publish_timeout_s):
                served_path = await asyncio.to_thread(self._place, name, source)
                known = await self._adapters()
                if name in known:
                    return self._same_or_refuse(name, known[name], served_path)
                response = await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": served_path})
                if response.status_code == 200:
                    log.info("vLLM loaded %s from %s", name, served_path)
                    return name
                message = _error_message(response)
                if response.status_code == 400 and "already been loaded" in message:  # another process won
                    return self._same_or_refuse(name, (await self._adapters()).get(name), served_path)
                raise self._load_refused(response, name, served_path)
        except ModelServerError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._translate(e, f"publishing {name}", timeout_s=self.publish_timeout_s) from e

    def _place(self, name: str, source: Path) -> str:
        """Copy the adapter into the shared folder (once, atomically); return the path vLLM reads."""
        if self.adapter_dir is None:
            return str(source.resolve())
        target = self.adapter_dir / name
        files = [p for p in sorted(source.iterdir()) if p.is_file()]
        if target.is_dir():
            if all((target / p.name).is_file() and (target / p.name).read_bytes() == p.read_bytes() for p in files):
                return self._served_path(target)
            raise ModelServerError(
                f"{target} already holds a different adapter named {name}: a name is never reused (vLLM "
                f"could serve stale weights). Remove that folder if it is left over from another database, "
                f"or set another GUILDTUNE_TAG_PREFIX."
            )
        self.adapter_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.adapter_dir))
        try:
            for p in files:
                shutil.copy2(p, staging / p.name)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self._served_path(target)

    def _served_path(self, target: Path) -> str:
        if self.server_adapter_dir:
            return f"{self.server_adapter_dir}/{target.name}"
        return str(target.resolve())

    def _same_or_refuse(self, name: str, loaded_from: str | None, served_path: str) -> str:
        if loaded_from in (None, served_path):
            return name
        raise ModelServerError(
            f"vLLM at {self.host} already serves an adapter named {name} from {loaded_from}, not from "
            f"{served_path}: a name is never reused (it could serve stale weights). Restart vLLM or set "
            f"another GUILDTUNE_TAG_PREFIX."
        )

    def _load_refused(self, response: httpx.Response, name: str, served_path: str) -> ModelServerError:
        message = _error_message(response)
        if _route_missing(response):
            return ModelServerError(RUNTIME_UPDATES_OFF.format(host=self.host) + ".")
        if "max_lora_rank" in message:
            return ModelServerError(
                f"vLLM refused {name}: {message} Restart vLLM with a larger --max-lora-rank (at least the "
                f"adapter's r), or train with a smaller lora_r."
            )
        if response.status_code == 404 or "No adapter found" in message:
            where = ("GUILDTUNE_VLLM_ADAPTER_DIR must be a folder the vLLM host reads too, and "
                     "GUILDTUNE_VLLM_SERVER_ADAPTER_DIR its path there" if self.adapter_dir else
                     "vLLM runs on another machine: set GUILDTUNE_VLLM_ADAPTER_DIR to a folder both share")
            return ModelServerError(f"vLLM at {self.host} found no adapter at {served_path} ({message}): {where}.")
        return self._refused(response, f"loading {name}")

    # ---- preload / remove ----------------------------------------------------------------------
    async def preload(self, version: ModelVersion | None) -> None:
        """Make sure vLLM serves the version (its load already warmed it); the base is always loaded."""
        if version is None:
            return
        name = self.name_for(version)
        try:
            async with asyncio.timeout(self.timeout_s):
                if name not in await self._adapters():
                    await self.publish(version)
        except ModelServerError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._translate(e, f"loading {name}") from e

    async def remove(self, version: ModelVersion) -> None:
        """Unload the version and delete its copy in the shared folder; a version already gone is fine."""
        name = self.name_for(version)
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        except Exception as e:  # noqa: BLE001
            raise self._translate(e, f"unloading {name}") from e
        if _route_missing(response):
            raise ModelServerError(RUNTIME_UPDATES_OFF.format(host=self.host) + f" (unloading {name}).")
        if response.status_code not in (200, 404):
            raise self._refused(response, f"unloading {name}")
        if self.adapter_dir is not None and (self.adapter_dir / name).is_dir():
            await asyncio.to_thread(shutil.rmtree, self.adapter_dir / name, True)

    # ---- health --------------------------------------------------------------------------------
    async def health(self) -> ServerHealth:
        try:
            async with asyncio.timeout(min(self.timeout_s, 10.0)):
                cards = await self._models()
                probe = await self._post("/v1/unload_lora_adapter", {"lora_name": PROBE_NAME})
        except Exception as e:  # noqa: BLE001
            return ServerHealth(ok=False, detail=str(self._translate(e, "checking health")))
        base = next((c["id"] for c in cards if not c.get("parent")), None)
        loaded = [c["id"] for c in cards if c.get("parent")]
        if base is None:
            return ServerHealth(ok=False, loaded=loaded, detail=f"vLLM at {self.host} lists no base model.")
        if _route_missing(probe):
            return ServerHealth(ok=False, loaded=loaded, detail=RUNTIME_UPDATES_OFF.format(host=self.host) + ".")
        if self.base_name and self.base_name != base:
            return ServerHealth(ok=False, loaded=loaded, detail=(
                f"vLLM at {self.host} serves {base}, not the configured {self.base_name}."))
        return ServerHealth(ok=True, loaded=loaded,
                            detail=f"vLLM at {self.host} serves {base} with {len(loaded)} adapters loaded.")

    async def close(self) -> None:
        await self._http.aclose()

    # ---- HTTP helpers --------------------------------------------------------------------------
    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self._http.post(path, json=body)

    async def _models(self) -> list[dict[str, Any]]:
        response = await self._http.get("/v1/models")
        if response.status_code != 200:
            raise self._refused(response, "listing models")
        return list(response.json().get("data") or [])

    async def _adapters(self) -> dict[str, str]:
        """Loaded adapter name -> the path vLLM loaded it from."""
        return {c["id"]: c.get("root") for c in await self._models() if c.get("parent")}

    async def _base(self) -> str:
        if self.base_name is None:
            cards = await self._models()
            base = next((c["id"] for c in cards if not c.get("parent")), None)
            if base is None:
                raise ModelServerError(f"vLLM at {self.host} lists no base model in /v1/models.")
            self.base_name = base
        return self.base_name

    # ---- errors --------------------------------------------------------------------------------
    def _refused(self, response: httpx.Response, action: str) -> ModelServerError:
        message = _error_message(response)
        if response.status_code == 401:
            return ModelServerError(f"vLLM at {self.host} refused the API key while {action}: set VLLM_API_KEY "
                                    f"to the --api-key vLLM was started with.")
        if 400 <= response.status_code < 500:
            return ModelServerError(f"vLLM refused {action}: {message}")
        return ModelServerError(f"vLLM failed while {action} (HTTP {response.status_code}): {message}")

    def _translate(self, e: BaseException, action: str, *, timeout_s: float | None = None) -> ModelServerError:
        """Turn a transport or protocol failure into a message a person can act on."""
        if isinstance(e, ModelServerError):
            return e
        if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError)):
            return ModelServerUnavailable(f"vLLM at {self.host} is not reachable ({action}): {START_HINT}.")
        if isinstance(e, (TimeoutError, httpx.TimeoutException)):
            limit = timeout_s if timeout_s is not None else self.timeout_s
            return ModelServerUnavailable(f"vLLM at {self.host} did not finish {action} within {limit:g}s: "
                                          f"it may be busy; try again, or raise the timeout.")
        if isinstance(e, httpx.TransportError):
            return ModelServerUnavailable(f"the connection to vLLM at {self.host} broke while {action} "
                                          f"({type(e).__name__}): is `vllm serve` still running?")
        if isinstance(e, (json.JSONDecodeError, KeyError, TypeError, AttributeError)):
            return ModelServerError(f"vLLM at {self.host} sent a reply this client cannot read while {action}: "
                                    f"check that VLLM_BASE_URL points at vLLM's OpenAI-compatible server.")
        return ModelServerError(f"unexpected error while {action}: {type(e).__name__}: {e}")


class _UnknownModel(Exception):
    """vLLM answered 404 'The model `x` does not exist' (an adapter it forgot or never had)."""


def _sampling(options: GenerationOptions) -> dict[str, Any]:
    out: dict[str, Any] = {"temperature": options.temperature, "top_p": options.top_p, "top_k": options.top_k,
                           "max_tokens": options.max_tokens}
    if options.seed is not None:
        out["seed"] = options.seed
    return out


def _error_message(response: httpx.Response) -> str:
    """The message of a vLLM error body, in its old (`{"message"}`) or new (`{"error": {...}}`) shape."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(body, dict):
        return _event_error(body)
    return str(body)[:500]


def _event_error(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message", error))
    if isinstance(error, str):
        return error
    return str(body.get("message") or body.get("detail") or body)[:500]


def _route_missing(response: httpx.Response) -> bool:
    """FastAPI's own 404 for a route vLLM did not register (runtime LoRA updating off)."""
    if response.status_code != 404:
        return False
    try:
        return response.json() == {"detail": "Not Found"}
    except ValueError:
        return False


def _normalize_url(raw: str) -> tuple[str, str]:
    """(URL for the client, URL for messages): scheme added, a trailing /v1 dropped, no user:password shown."""
    text = raw.strip()
    url = urlsplit(text if "://" in text else f"http://{text}")
    path = url.path.rstrip("/")
    path = path[: -len("/v1")] if path.endswith("/v1") else path
    client = urlunsplit((url.scheme, url.netloc, path, "", ""))
    shown = urlunsplit((url.scheme, url.netloc.rpartition("@")[2], path, "", ""))
    return client, shown
