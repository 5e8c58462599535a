"""`ModelServer` on Ollama: each trained version becomes its own tag, `<prefix>-<guild>:v<N>`.

Publishing follows what Ollama accepts (../shared/notes/ollama.md), lightest first, always creating
the tag FROM THE CLEAN BASE TAG (never from a previous fine-tune: adapters would stack):
- llama and gemma2 bases: the PEFT adapter files are uploaded as blobs (`adapters`), converted by Ollama;
- Gemma 3 and Qwen 2 bases: the LoRA is written as one GGUF adapter file (serving/gguf_adapter.py,
  llama.cpp's layout) and referenced as the adapter; a few MB per version instead of a whole model.
  Ollama accepts such a file at create for any architecture, but only its llama.cpp runner applies it:
  its own engine (Gemma 3 in the releases read) fails the first load with "loras are not yet
  implemented". So the new tag is loaded once before it counts as published, and where the load is
  refused the tag is deleted and the version published merged; the refusal is remembered per
  architecture so later versions go straight to the merged path;
- everything else, or an adapter a LoRA file cannot carry: merged into the base and imported as `files`.
The chat template, its stop tokens and the system prompt are always passed explicitly.
The active version is a pointer in our database, not an Ollama tag; this class never flips it.
Ollama parses control tokens anywhere in the prompt, so every text we send (messages, the SYSTEM
prompt) has its control-token strings broken by an invisible word joiner (serving/ollama_templates.py).
Every failure leaves as a `ModelServerError` (or `ModelServerUnavailable`) whose message says
what went wrong and what to do.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import ollama
import pydantic

from serving.chat_encoding import neutralize_control_tokens
from serving.gguf_adapter import GgufAdapterUnsupported, adapter_problem, why_not_gguf, write_gguf_adapter
from serving.merge import ADAPTER_CONFIG, merge_adapter, read_base_config
from serving.ollama_templates import ChatFormat, chat_format_for, ollama_control_tokens
from serving.protocol import GenerationOptions, ModelServerError, ModelServerUnavailable, ServerHealth
from storage.records import GuildSettings, ModelVersion

log = logging.getLogger(__name__)

DEFAULT_HOST = "http://127.0.0.1:11434"
# Base architectures (HF model_type) whose Safetensors LoRA adapters Ollama converts.
ADAPTER_ARCHITECTURES = {"llama", "gemma2"}
# The file name a GGUF adapter blob is given in `adapters` (Ollama detects GGUF by the suffix).
GGUF_ADAPTER_NAME = "adapter.gguf"
# What Ollama's own engine answers when asked to load a model with a LoRA adapter.
ENGINE_REFUSES_LORA = "loras are not yet implemented"


class OllamaServer:
    """Serves each guild's versions from an Ollama server through `ollama.AsyncClient`.

    base_tag: the Ollama tag of the clean base model (`ollama pull` it first), answers when a guild
    has no version yet. base_model_dir: the same base as a Hugging Face folder, used to merge
    adapters for architectures Ollama cannot take an adapter for (a version's own `base_model`
    wins when it is set). quantize: e.g. "q4_K_M", applied to merged imports. timeout_s bounds
    preload and health calls (chat uses each request's own `GenerationOptions.timeout_s`);
    publish_timeout_s bounds a whole publish.
    """

    def __init__(
        self,
        host: str | None = None,
        base_tag: str = "gemma3:270m",
        base_model_dir: str | Path | None = None,
        tag_prefix: str = "guildtune",
        quantize: str | None = None,
        timeout_s: float = 600.0,
        *,
        keep_alive: str | float = "30m",
        system_prompt: str = GuildSettings.system_prompt,
        work_dir: str | Path | None = None,
        publish_timeout_s: float = 1800.0,
    ) -> None:
        self._url, self.host = _normalize_host(host or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST)
        self.base_tag = base_tag
        self.base_model_dir = str(base_model_dir) if base_model_dir else None
        self.tag_prefix = tag_prefix
        self.quantize = quantize
        self.timeout_s = timeout_s
        self.keep_alive = keep_alive
        self.system_prompt = system_prompt
        self.work_dir = str(work_dir) if work_dir else None
        self.publish_timeout_s = publish_timeout_s  # merge + upload + create (quantizing takes a while)
        self.last_stats: dict[str, Any] = {}  # counts of the last finished chat, for the bot's logs
        # Base architectures whose runner refused a GGUF adapter at load: published merged from then on.
        self.lora_refused: set[str] = set()
        # Deadlines are enforced with asyncio around each call; httpx only bounds connecting.
        self._client = ollama.AsyncClient(host=self._url, timeout=httpx.Timeout(None, connect=10.0))

    # ---- naming --------------------------------------------------------------------------------
    def tag_for(self, version: ModelVersion | None) -> str:
        if version is None:
            return self.base_tag
        return f"{self.tag_prefix}-{version.guild_id}:v{version.number}"

    # ---- chat ----------------------------------------------------------------------------------
    async def chat(
        self, version: ModelVersion | None, messages: list[dict[str, str]], options: GenerationOptions
    ) -> AsyncIterator[str]:
        """Stream the reply; the whole answer must finish within `options.timeout_s`."""
        tag = self.tag_for(version)
        action = f"answering with {tag}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.timeout_s
        stream = None
        try:
            async with asyncio.timeout_at(deadline):
                control = await asyncio.to_thread(ollama_control_tokens, self._base_folder(version))
                sent = [{k: neutralize_control_tokens(v, control) if k != "role" and isinstance(v, str) else v
                         for k, v in m.items()} for m in messages]
                stream = await self._client.chat(
                    model=tag, messages=sent, options=_ollama_options(options),
                    stream=True, keep_alive=self.keep_alive,
                )
            while True:
                # The deadline guards only our own awaits, never the consumer's time between pieces.
                async with asyncio.timeout_at(deadline):
                    try:
                        part = await anext(stream)
                    except StopAsyncIteration:
                        break
                if part.message and part.message.content:
                    yield part.message.content
                if part.done:
                    self.last_stats = {
                        "model": tag, "done_reason": part.done_reason, "eval_count": part.eval_count,
                        "eval_duration_ns": part.eval_duration, "prompt_eval_count": part.prompt_eval_count,
                    }
        except ModelServerError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure leaves as a ModelServerError
            raise self._translate(e, action, tag=tag, timeout_s=options.timeout_s) from e
        finally:
            if stream is not None:
                await stream.aclose()

    async def preload(self, version: ModelVersion | None) -> None:
        """Load the tag into memory (`chat` with no messages) so the first answer is not slow."""
        tag = self.tag_for(version)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._client.chat(model=tag, messages=[], keep_alive=self.keep_alive)
        except Exception as e:  # noqa: BLE001
            raise self._translate(e, f"loading {tag}", tag=tag) from e

    # ---- publish -------------------------------------------------------------------------------
    async def publish(self, version: ModelVersion, *, system: str | None = None) -> str:
        """Create the version's tag from its adapter; returns the tag. On failure nothing is left."""
        tag = self.tag_for(version)
        adapter_dir = Path(version.adapter_path)
        if not (adapter_dir / ADAPTER_CONFIG).is_file():
            raise ModelServerError(
                f"version {version.number} of guild {version.guild_id} cannot be published: "
                f"{adapter_dir} has no {ADAPTER_CONFIG} (the trainer's adapter folder is missing "
                f"or incomplete; retrain to produce it again)."
            )
        base_model = self._base_folder(version) or version.base_model
        if not base_model:
            raise ModelServerError("no base model folder is configured: set base_model_dir for OllamaServer.")
        try:
            adapter_config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
            base_config = read_base_config(base_model)
            chat_format = chat_format_for(adapter_dir, base_model)
        except (OSError, ValueError) as e:
            raise ModelServerError(f"cannot publish {tag}: {e}") from e
        system = self.system_prompt if system is None else system
        control = await asyncio.to_thread(ollama_control_tokens, self._base_folder(version))
        system = neutralize_control_tokens(system, control)
        architecture = str(base_config.get("model_type", ""))
        route, reason = _publish_route(base_config, adapter_config)
        if route == "gguf" and architecture in self.lora_refused:
            route, reason = "merged", f"Ollama at {self.host} does not apply LoRA adapters to {architecture} models"
        try:
            async with asyncio.timeout(self.publish_timeout_s):
                try:
                    if route == "safetensors":
                        await self._create_with_adapter(tag, adapter_dir, chat_format, system)
                        return tag
                    if route == "gguf":
                        await self._create_with_gguf_adapter(tag, adapter_dir, base_config, chat_format, system)
                        return tag
                except ollama.ResponseError as e:
                    if not _adapter_refused(e):
                        raise
                    reason = f"this Ollama refused the adapter ({e.error})"
                except _LoraNotApplied as e:
                    if e.remember:
                        self.lora_refused.add(architecture)
                    reason = str(e)
                log.info("publishing %s as a merged model: %s", tag, reason)
                await self._create_merged(tag, adapter_dir, base_model, chat_format, system)
                return tag
        except BaseException as e:
            await self._forget(tag)
            if isinstance(e, ModelServerError) or not isinstance(e, Exception):
                raise
            raise self._translate(e, f"publishing {tag}", tag=tag, timeout_s=self.publish_timeout_s) from e

    def _base_folder(self, version: ModelVersion | None) -> str | None:
        """The version's own base when it is a folder, else the configured folder (None when neither)."""
        if version is not None and version.base_model and Path(version.base_model).is_dir():
            return version.base_model
        return self.base_model_dir

    async def _create_with_adapter(self, tag: str, adapter_dir: Path, fmt: ChatFormat, system: str) -> None:
        await self._require_base()
        files = [adapter_dir / ADAPTER_CONFIG, *sorted(adapter_dir.glob("*.safetensors"))]
        if len(files) < 2:
            raise ModelServerError(f"{adapter_dir} holds no adapter weights (*.safetensors): retrain.")
        adapters = await self._upload(adapter_dir, files)
        await self._create(tag, from_=self.base_tag, adapters=adapters, template=fmt.template,
                           system=system, parameters={"stop": list(fmt.stop)})

    async def _create_with_gguf_adapter(
        self, tag: str, adapter_dir: Path, base_config: dict[str, Any], fmt: ChatFormat, system: str
    ) -> None:
        """Write the LoRA as one GGUF file, create the tag from the base with it, and load it once:
        raises _LoraNotApplied (the tag deleted) when Ollama's runner refuses LoRA for this base."""
        await self._require_base()
        with self._staging("guildtune-gguf-") as tmp:
            try:
                path = await asyncio.to_thread(write_gguf_adapter, adapter_dir, base_config,
                                               Path(tmp) / GGUF_ADAPTER_NAME)
            except GgufAdapterUnsupported as e:  # found in the weights themselves: merge instead
                raise _LoraNotApplied(f"the adapter cannot be written as a GGUF LoRA: {e}", remember=False) from e
            except (OSError, KeyError, ValueError) as e:
                raise ModelServerError(f"cannot write the adapter of {tag} as GGUF: {e} (retrain to "
                                       f"produce the adapter again)") from e
            adapters = {GGUF_ADAPTER_NAME: await self._client.create_blob(path)}
        await self._create(tag, from_=self.base_tag, adapters=adapters, template=fmt.template,
                           system=system, parameters={"stop": list(fmt.stop)})
        try:
            await self._client.chat(model=tag, messages=[], keep_alive=self.keep_alive)
        except ollama.ResponseError as e:
            text = str(e.error).lower()
            if "arch mismatch" in text or "wrong base model" in text or "incorrect shape" in text:
                raise ModelServerError(
                    f"Ollama could not load {tag}: {e.error}. The adapter was trained on another base model "
                    f"than '{self.base_tag}': set GUILDTUNE_OLLAMA_BASE to the trainer's base model."
                ) from e
            if ENGINE_REFUSES_LORA not in text:
                raise
            await self._forget(tag)
            raise _LoraNotApplied(
                f"Ollama at {self.host} accepted the GGUF adapter but its runner does not apply LoRA "
                f"adapters to {base_config.get('model_type')} models ({e.error})", remember=True
            ) from e

    def _staging(self, prefix: str) -> tempfile.TemporaryDirectory:
        if self.work_dir:
            Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix=prefix, dir=self.work_dir)

    async def _create_merged(
        self, tag: str, adapter_dir: Path, base_model: str, fmt: ChatFormat, system: str
    ) -> None:
        with self._staging("guildtune-merge-") as tmp:
            try:
                merged = await asyncio.to_thread(merge_adapter, adapter_dir, base_model, tmp)
            except Exception as e:  # noqa: BLE001 - shapes, files, dtypes: all say the same to the admin
                raise ModelServerError(
                    f"cannot merge the adapter of {tag} into {base_model}: {type(e).__name__}: {e} "
                    f"(was the adapter trained on this base model?)"
                ) from e
            files = sorted(p for p in merged.rglob("*") if p.is_file())
            uploaded = await self._upload(merged, files)
            await self._create(tag, files=uploaded, quantize=self.quantize, template=fmt.template,
                               system=system, parameters={"stop": list(fmt.stop)})

    async def _upload(self, root: Path, files: Iterable[Path]) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): await self._client.create_blob(p) for p in files}

    async def _create(self, tag: str, **request: Any) -> None:
        last = None
        async for progress in await self._client.create(model=tag, stream=True, **request):
            last = progress.status
            log.debug("create %s: %s", tag, last)
        if last != "success":
            raise ModelServerError(f"Ollama ended creating {tag} without success (last status: {last!r}).")

    async def _require_base(self) -> None:
        try:
            await self._client.show(self.base_tag)
        except ollama.ResponseError as e:
            if e.status_code == 404:
                raise ModelServerError(
                    f"Ollama at {self.host} has no base model '{self.base_tag}': "
                    f"run `ollama pull {self.base_tag}` (or set the configured base tag)."
                ) from e
            raise

    async def _forget(self, tag: str) -> None:
        """Delete a half-made tag after a failed publish; errors here change nothing for the caller."""
        try:
            await self._client.delete(tag)
        except Exception:  # noqa: BLE001
            pass

    # ---- removal -------------------------------------------------------------------------------
    async def remove(self, version: ModelVersion) -> None:
        """Delete the version's tag; a tag already gone is not an error."""
        await self._delete_tag(self.tag_for(version))

    async def _delete_tag(self, tag: str) -> None:
        try:
            await self._client.delete(tag)
        except ollama.ResponseError as e:
            if e.status_code != 404:
                raise self._translate(e, f"deleting {tag}", tag=tag) from e
        except Exception as e:  # noqa: BLE001
            raise self._translate(e, f"deleting {tag}", tag=tag) from e

    # ---- health --------------------------------------------------------------------------------
    async def health(self) -> ServerHealth:
        try:
            async with asyncio.timeout(min(self.timeout_s, 10.0)):
                listing = await self._client.list()
                running = await self._client.ps()
                version = await self._server_version()
        except Exception as e:  # noqa: BLE001
            return ServerHealth(ok=False, detail=str(self._translate(e, "checking health")))
        names = {m.model for m in listing.models}
        loaded = [m.model or m.name or "" for m in running.models]
        base = _full_name(self.base_tag)
        if base not in names:
            return ServerHealth(
                ok=False, loaded=loaded,
                detail=f"Ollama {version} at {self.host} is up but has no base model '{self.base_tag}': "
                f"run `ollama pull {self.base_tag}`.",
            )
        return ServerHealth(
            ok=True, loaded=loaded,
            detail=f"Ollama {version} at {self.host}: {len(names)} models, {len(loaded)} loaded.",
        )

    async def _server_version(self) -> str:
        async with httpx.AsyncClient(base_url=self._url, timeout=10.0) as http:
            response = await http.get("/api/version")
            response.raise_for_status()
            return str(response.json().get("version", "?"))

    async def close(self) -> None:
        await self._client.close()

    # ---- errors --------------------------------------------------------------------------------
    def _translate(
        self, e: BaseException, action: str, *, tag: str | None = None, timeout_s: float | None = None
    ) -> ModelServerError:
        """Turn a client, transport or protocol failure into a message a person can act on."""
        if isinstance(e, ModelServerError):
            return e
        unreachable = (
            f"Ollama at {self.host} is not reachable: start it with `ollama serve` or set OLLAMA_HOST"
        )
        if isinstance(e, ollama.ResponseError):
            if e.status_code == 404 and tag == self.base_tag:
                return ModelServerError(
                    f"Ollama at {self.host} has no base model '{tag}': run `ollama pull {tag}`."
                )
            if e.status_code == 404 and tag:
                return ModelServerError(
                    f"Ollama at {self.host} has no model '{tag}' (deleted or never published): "
                    f"publish it again or roll back to a version that exists."
                )
            if e.status_code == -1:
                return ModelServerError(f"Ollama failed while {action}: {e.error}")
            if 400 <= e.status_code < 500:
                return ModelServerError(f"Ollama refused {action}: {e.error}")
            return ModelServerError(f"Ollama failed while {action} (HTTP {e.status_code}): {e.error}")
        if isinstance(e, (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout)):
            return ModelServerUnavailable(f"{unreachable} ({action}).")
        if isinstance(e, (TimeoutError, httpx.TimeoutException)):
            limit = timeout_s if timeout_s is not None else self.timeout_s
            return ModelServerUnavailable(
                f"Ollama at {self.host} did not finish {action} within {limit:g}s: it may be busy "
                f"loading a model; try again, or raise the timeout."
            )
        if isinstance(e, httpx.TransportError):
            return ModelServerUnavailable(
                f"the connection to Ollama at {self.host} broke while {action} ({type(e).__name__}): "
                f"is `ollama serve` still running?"
            )
        if isinstance(e, (json.JSONDecodeError, pydantic.ValidationError, httpx.HTTPStatusError)):
            return ModelServerError(
                f"Ollama at {self.host} sent a reply this client cannot read while {action}: "
                f"check that OLLAMA_HOST points at Ollama and that its version is supported."
            )
        return ModelServerError(f"unexpected error while {action}: {type(e).__name__}: {e}")


def _ollama_options(options: GenerationOptions) -> dict[str, Any]:
    out: dict[str, Any] = {
        "temperature": options.temperature,
        "top_k": options.top_k,
        "top_p": options.top_p,
        "num_predict": options.max_tokens,
    }
    if options.seed is not None:
        out["seed"] = options.seed
    return out


class _LoraNotApplied(Exception):
    """The LoRA cannot be served as an adapter file here: publish merged instead. `remember`: the
    refusal is Ollama's for every adapter on this architecture, not this adapter's alone."""

    def __init__(self, reason: str, *, remember: bool) -> None:
        super().__init__(reason)
        self.remember = remember


def _publish_route(base_config: dict[str, Any], adapter_config: dict[str, Any]) -> tuple[str, str | None]:
    """("safetensors", None): Ollama converts the PEFT files; ("gguf", None): a GGUF LoRA file;
    ("merged", why): the whole merged model."""
    architecture = str(base_config.get("model_type", ""))
    if architecture in ADAPTER_ARCHITECTURES:
        reason = adapter_problem(adapter_config)
        return ("safetensors", None) if reason is None else ("merged", reason)
    reason = why_not_gguf(base_config, adapter_config)
    return ("gguf", None) if reason is None else ("merged", reason)


def _adapter_refused(e: ollama.ResponseError) -> bool:
    text = str(e.error).lower()
    return "unsupported architecture" in text or "adapters are no longer supported" in text


def _full_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _normalize_host(raw: str) -> tuple[str, str]:
    """(URL for the clients, URL for messages): scheme and Ollama's default port added, and no
    user:password in the one that messages show."""
    url = urlsplit(raw.strip() if "://" in raw else f"http://{raw.strip()}")
    hostname = url.hostname or "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    port = url.port or (443 if url.scheme == "https" else 11434)
    userinfo = url.netloc.rpartition("@")[0]
    path = url.path.rstrip("/")
    client = urlunsplit((url.scheme, f"{userinfo + '@' if userinfo else ''}{hostname}:{port}", path, "", ""))
    shown = urlunsplit((url.scheme, f"{hostname}:{port}", path, "", ""))
    return client, shown
