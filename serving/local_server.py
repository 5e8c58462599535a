"""The embedded model server: transformers + PEFT inside the bot's process, no Ollama needed.

The base model loads once; each trained version's LoRA adapter loads beside it under the name
`v<version id>`. Every piece of model work (loading, adapter switches, generation, removal) runs
on ONE model thread. That single thread is the lock: an answer selects its adapter and generates
to the end before anything else touches the model, so a publish or an eviction can never pull an
adapter out from under an answer in flight, and fifty simultaneous `/ask`s queue instead of
failing. Loads and removals go ahead of questions still waiting (never of the one being
answered), so a swap is not stuck behind a long queue. The event loop only awaits; it never runs
torch.

torch and transformers are imported by `serving.generation`, which this module loads inside the
worker thread: importing `serving.local_server` stays cheap for the bot.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from serving.protocol import GenerationOptions, ModelServerError, ModelServerUnavailable, ServerHealth
from storage.records import ModelVersion

log = logging.getLogger(__name__)

_STARTED = object()  # the worker took this question and is about to generate
_DONE = object()  # the answer is complete


def adapter_name(version: ModelVersion) -> str:
    """The PEFT adapter name of a version: ids are unique across guilds, numbers are not."""
    return f"v{version.id}"


def serving_tag(version: ModelVersion) -> str:
    return f"local:v{version.number}"


class _Question:
    """One `chat` call: the bridge between the worker thread and the awaiting coroutine."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stop = threading.Event()

    def send(self, item: Any) -> None:
        """Called from the worker thread; a consumer whose loop is gone is simply not told."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # event loop closed: nobody is listening any more
            self.stop.set()


class _ModelThread:
    """The one thread that touches the model. Control work (loads, removals) runs before waiting
    questions; within a priority, first come first served."""

    CONTROL, QUESTION, STOP = 0, 1, 2

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Future[Any] | None, Any, tuple]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._start_lock = threading.Lock()

    def submit(self, priority: int, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self._stopping:
            raise ModelServerUnavailable("The local model server is shut down.")
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="guildtune-local-model", daemon=True)
                self._thread.start()
        future: Future[Any] = Future()
        self._queue.put((priority, next(self._order), future, fn, args))
        return future

    def stop(self) -> None:
        """Run what is queued (questions already told to stop return at once), then end the thread."""
        self._stopping = True
        if self._thread is not None:
            self._queue.put((self.STOP, next(self._order), None, None, ()))
            self._thread.join()

    def _run(self) -> None:
        while True:
            _, _, future, fn, args = self._queue.get()
            if future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)


class LocalServer:
    """`ModelServer` on a Hugging Face base model folder with PEFT adapters (see the module doc).

    `max_loaded_adapters` bounds memory: the least recently used adapter is deleted when a new
    one is needed (it reloads from disk if asked for again). `max_queue_wait_s` bounds how long a
    question waits behind others before the server answers "busy" instead; `options.timeout_s`
    bounds the wait for each token once this question is being answered.
    """

    def __init__(self, base_model_dir: str, device: str = "auto", max_loaded_adapters: int = 4,
                 max_queue_wait_s: float = 900.0):
        if max_loaded_adapters < 1:
            raise ValueError("max_loaded_adapters must be at least 1")
        self.base_model_dir = str(base_model_dir)
        self.requested_device = device
        self.max_loaded_adapters = max_loaded_adapters
        self.max_queue_wait_s = max_queue_wait_s
        self._worker = _ModelThread()
        self._closed = False
        self._questions: set[_Question] = set()
        # Touched only on the worker thread:
        self._base: Any = None  # the transformers model
        self._peft: Any = None  # the PeftModel wrapping it once an adapter is loaded
        self._tokenizer: Any = None
        self._device: str | None = None
        self._adapters: OrderedDict[str, ModelVersion] = OrderedDict()  # LRU order, oldest first
        # Snapshots for health(), replaced (never mutated) by the worker:
        self._loaded_tags: tuple[str, ...] = ()
        self._load_error: str | None = None

    # ---- the protocol -------------------------------------------------------------------

    async def chat(self, version: ModelVersion | None, messages: list[dict[str, str]],
                   options: GenerationOptions) -> AsyncIterator[str]:
        """Stream the answer of `version` (None: the base model) as text pieces."""
        self._check_open()
        _check_messages(messages)
        _check_options(options)
        question = _Question(asyncio.get_running_loop())
        ahead = len(self._questions)
        self._questions.add(question)
        future: Future[None] | None = None
        try:
            future = self._worker.submit(_ModelThread.QUESTION, self._answer, question, version, messages, options)
            started = False
            while True:
                wait = options.timeout_s if started else self.max_queue_wait_s
                try:
                    item = await asyncio.wait_for(question.queue.get(), wait)
                except asyncio.TimeoutError:
                    if started:
                        raise ModelServerUnavailable(
                            f"The local model produced nothing for {wait:g} s (timeout_s), so the answer was "
                            "stopped. Try again; if the machine is just slow, raise the timeout."
                        ) from None
                    raise ModelServerUnavailable(
                        f"The local model is busy ({ahead} questions were ahead of this one) and did not get "
                        f"to it within {wait:g} s. Try again in a minute."
                    ) from None
                if item is _STARTED:
                    started = True
                elif item is _DONE:
                    return
                elif isinstance(item, BaseException):
                    raise item
                elif item:
                    yield item
        finally:
            question.stop.set()  # consumer finished, left or timed out: generation ends at the next token
            if future is not None:
                future.cancel()
            self._questions.discard(question)

    async def publish(self, version: ModelVersion) -> str:
        """Check and load the version's adapter; returns its serving tag `local:v<number>`."""
        await self._on_worker(self._ensure_adapter, version)
        return serving_tag(version)

    async def preload(self, version: ModelVersion | None) -> None:
        """Load the base (and the version's adapter) now, so the first answer is not slow."""
        if version is None:
            await self._on_worker(self._ensure_base)
        else:
            await self._on_worker(self._ensure_adapter, version)

    async def remove(self, version: ModelVersion) -> None:
        """Delete the version's adapter from memory (its files stay on disk)."""
        await self._on_worker(self._drop_adapter, adapter_name(version))

    async def health(self) -> ServerHealth:
        loaded = list(self._loaded_tags)
        if self._closed:
            return ServerHealth(False, "The local model server is shut down.", loaded)
        if self._load_error:
            return ServerHealth(False, self._load_error, loaded)
        if self._base is not None:
            return ServerHealth(True, f"Base model {self.base_model_dir} loaded on {self._device}; "
                                      f"{len(loaded)} adapter(s) loaded.", loaded)
        if (Path(self.base_model_dir) / "config.json").is_file():
            return ServerHealth(True, f"Base model {self.base_model_dir} not loaded yet (loads on first use).")
        return ServerHealth(False, f"The base model folder {self.base_model_dir} has no config.json.")

    async def close(self) -> None:
        """Stop answers in flight, free the model and end the worker thread."""
        if self._closed:
            return
        self._closed = True
        for question in list(self._questions):
            question.stop.set()
            question.send(ModelServerUnavailable("The local model server was shut down while answering."))
        release = self._worker.submit(_ModelThread.CONTROL, self._release)
        await asyncio.to_thread(self._worker.stop)
        release.result()

    # ---- async → worker -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ModelServerUnavailable("The local model server is shut down.")

    async def _on_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._check_open()
        return await asyncio.wrap_future(self._worker.submit(_ModelThread.CONTROL, fn, *args))

    # ---- the worker thread (everything below runs there, one call at a time) -------------

    def _answer(self, question: _Question, version: ModelVersion | None,
                messages: list[dict[str, str]], options: GenerationOptions) -> None:
        if question.stop.is_set():  # the asker left (or timed out) while queued
            return
        try:
            from serving import generation

            self._ensure_base()
            name = self._ensure_adapter(version) if version is not None else None
            question.send(_STARTED)
            with self._selected(name):
                generation.generate(self._peft or self._base, self._tokenizer, self._device, messages,
                                    options, question.stop, question.send)
            question.send(_DONE)
        except ModelServerError as exc:
            question.send(exc)
        except Exception as exc:  # torch/transformers failures: log the trace, tell the user plainly
            log.exception("local generation failed")
            question.send(ModelServerError(f"The local model failed while answering ({type(exc).__name__}: {exc})."))

    def _ensure_base(self) -> None:
        if self._base is not None:
            return
        from serving import generation

        device = generation.pick_device(self.requested_device)
        log.info("loading base model %s on %s", self.base_model_dir, device)
        try:
            self._base, self._tokenizer = generation.load_base(self.base_model_dir, device)
        except ModelServerError as exc:
            self._load_error = str(exc)
            raise
        self._device = device
        self._load_error = None

    def _ensure_adapter(self, version: ModelVersion) -> str:
        """Load (or touch, for the LRU) the version's adapter; returns its adapter name."""
        name = adapter_name(version)
        self._ensure_base()
        if name in self._adapters:
            self._adapters.move_to_end(name)
            return name
        from serving import generation

        problem = generation.adapter_problem(self._base, version.adapter_path)
        if problem:
            raise ModelServerError(
                f"Version {version.number} (guild {version.guild_id}) cannot be served: {problem}. "
                "Retrain to produce a new adapter for this base model, or keep the current version active."
            )
        while len(self._adapters) >= self.max_loaded_adapters:
            oldest = next(iter(self._adapters))
            log.info("evicting adapter %s (least recently used)", oldest)
            self._drop_adapter(oldest)
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(self._base, version.adapter_path, adapter_name=name,
                                                       is_trainable=False)
            else:
                self._peft.load_adapter(version.adapter_path, adapter_name=name, is_trainable=False)
        except Exception as exc:
            log.exception("loading adapter %s failed", version.adapter_path)
            self._recover_from_failed_load(name)
            raise ModelServerError(
                f"Version {version.number} (guild {version.guild_id}) cannot be served: loading its adapter "
                f"from {version.adapter_path} failed ({type(exc).__name__}: {exc})."
            ) from exc
        self._peft.eval()
        self._adapters[name] = version
        self._snapshot()
        log.info("loaded adapter %s from %s", name, version.adapter_path)
        return name

    def _recover_from_failed_load(self, name: str) -> None:
        """Leave no half-injected adapter behind; if in doubt, reload the base on next use."""
        try:
            if self._peft is not None and name in self._peft.peft_config:
                self._peft.delete_adapter(name)
            elif self._peft is None:
                self._forget_model()  # the base may hold half-injected layers: load it fresh later
        except Exception:
            log.exception("cleanup after a failed adapter load failed; the base model will be reloaded")
            self._forget_model()

    def _drop_adapter(self, name: str) -> None:
        if name not in self._adapters:
            return
        del self._adapters[name]
        if not self._adapters:
            # PEFT cannot run with zero adapters: take the LoRA layers out and keep the clean base.
            self._base = self._peft.unload()
            self._peft = None
        else:
            with warnings.catch_warnings():  # "adapter was active, now set to …": we set it per answer
                warnings.simplefilter("ignore")
                self._peft.delete_adapter(name)
        self._snapshot()
        log.info("removed adapter %s", name)

    @contextlib.contextmanager
    def _selected(self, name: str | None) -> Iterator[None]:
        """Make `name` the adapter for this answer; None answers from the base with adapters off."""
        if name is not None:
            self._peft.set_adapter(name, inference_mode=True)
            yield
        elif self._peft is not None:
            with self._peft.disable_adapter():
                yield
        else:
            yield

    def _snapshot(self) -> None:
        self._loaded_tags = tuple(serving_tag(v) for v in self._adapters.values())

    def _forget_model(self) -> None:
        self._base = self._peft = self._tokenizer = None
        self._adapters.clear()
        self._snapshot()

    def _release(self) -> None:
        had_cuda = bool(self._device and self._device.startswith("cuda"))
        self._forget_model()
        if had_cuda:
            import torch

            torch.cuda.empty_cache()


def _check_messages(messages: list[dict[str, str]]) -> None:
    if not isinstance(messages, list) or not messages:
        raise ModelServerError("There is nothing to answer: the conversation has no messages.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise ModelServerError(
                f"Message {index + 1} of the conversation is malformed: each needs a role "
                "(system, user or assistant) and text content."
            )
    if messages[-1]["role"] != "user":
        raise ModelServerError("The conversation must end with the user's question.")


def _check_options(options: GenerationOptions) -> None:
    problems = []
    if options.temperature < 0:
        problems.append(f"temperature {options.temperature} is negative (use 0 for greedy, up to about 2)")
    if not 0 < options.top_p <= 1:
        problems.append(f"top_p {options.top_p} is outside (0, 1]")
    if options.top_k < 0:
        problems.append(f"top_k {options.top_k} is negative (use 0 to turn it off)")
    if options.max_tokens < 1:
        problems.append(f"max_tokens {options.max_tokens} must be at least 1")
    if options.timeout_s <= 0:
        problems.append(f"timeout_s {options.timeout_s} must be positive")
    if problems:
        raise ModelServerError("Invalid generation settings: " + "; ".join(problems) + ".")
