"""The embedded model server: transformers + PEFT inside the bot's process, no Ollama needed.

The base model loads once; each trained version's LoRA adapter loads beside it under the name
`v<version id>`. Every piece of model work (loading, adapter switches, generation, removal) runs
on ONE model thread, and that thread is the lock: a load or a removal runs only between rounds
of answers, never during one, so a publish, a rollback or an eviction can never pull an adapter
out from under an answer in flight. Loads and removals go ahead of questions still waiting, so a
swap is not stuck behind a long queue. The event loop only awaits; it never runs torch.

Questions that wait together are answered together. When the model thread is free it takes the
oldest waiting question and every other waiting one that can share its decoding (same sampling
knobs; adapters that fit in memory together), up to `max_batch_size`, and decodes them with one
`generate` call (`serving.batch_generation`): each row streams to its own asker, ends at its
own `max_tokens` or stop token, and stops at the next token when its asker leaves. Different
guilds' versions share a round, each row with its own adapter (`batch_generation.mixed_adapters`:
the round's adapters stacked per LoRA layer, PEFT's `adapter_names` for kinds it does not cover); a
base model loaded on a GPU first decodes a throwaway round, so `preload` absorbs the first-use
costs; `batching="grouped"` batches only one version at a time and `batching="off"` answers one
question per round (the server before batching, same decoding), both kept for the benchmark
(bench/serve_concurrency.py).

Why rounds of `generate` and not a continuous-batching engine: transformers' own continuous
batching (`generate_batch`, `ContinuousBatchingManager`) packs every request into one flattened
row and has no adapter per request, so PEFT's per-row `adapter_names` cannot apply and one
guild's adapter would be used for everyone; admitting new rows into a running KV cache (Gemma 3
mixes sliding-window and full layers) is what vLLM does, and `VllmServer` is the path for
communities that outgrow this server. The price: a question that arrives while a round is
decoding waits for that round to end (a short answer's row finishes early, but its slot is only
reused in the next round).

torch and transformers are imported by `serving.generation`, which this module loads inside the
worker thread: importing `serving.local_server` stays cheap for the bot.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import warnings
from collections import OrderedDict, deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from serving.protocol import GenerationOptions, ModelServerError, ModelServerUnavailable, ServerHealth
from storage.records import ModelVersion

log = logging.getLogger(__name__)

_STARTED = object()  # the worker took this question and is about to generate
_DONE = object()  # the answer is complete
BATCHING_MODES = ("mixed", "grouped", "off")


def adapter_name(version: ModelVersion) -> str:
    """The PEFT adapter name of a version: ids are unique across guilds, numbers are not."""
    return f"v{version.id}"


def serving_tag(version: ModelVersion) -> str:
    return f"local:v{version.number}"


class _Question:
    """One `chat` call: what to answer, and the bridge between the model thread and the awaiting
    coroutine."""

    def __init__(self, loop: asyncio.AbstractEventLoop, version: ModelVersion | None,
                 messages: list[dict[str, str]], options: GenerationOptions):
        self.loop = loop
        self.version = version
        self.adapter = adapter_name(version) if version is not None else None
        self.messages = messages
        self.options = options
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stop = threading.Event()

    def send(self, item: Any) -> None:
        """Called from the model thread; a consumer whose loop is gone is simply not told."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # event loop closed: nobody is listening any more
            self.stop.set()


class _ModelThread:
    """The one thread that touches the model.

    Control work (loads, removals, release) runs first, in order; when none is waiting, `pick`
    chooses the next round from the waiting questions (oldest first, under the lock) and
    `answer` decodes that round to its end. Questions whose asker already left are dropped.
    """

    def __init__(self, pick: Callable[[list[_Question]], list[_Question]],
                 answer: Callable[[list[_Question]], None]) -> None:
        self._pick = pick
        self._answer = answer
        self._wake = threading.Condition()
        self._control: deque[tuple[Future[Any], Callable[..., Any], tuple]] = deque()
        self._waiting: list[_Question] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._wake:
            self._start()
            self._control.append((future, fn, args))
            self._wake.notify()
        return future

    def ask(self, question: _Question) -> None:
        with self._wake:
            self._start()
            self._waiting.append(question)
            self._wake.notify()

    def withdraw(self, question: _Question) -> None:
        """Forget a question that has not started (no-op once it is in a round)."""
        with self._wake:
            if question in self._waiting:
                self._waiting.remove(question)

    def stop(self) -> None:
        """Run the queued control work (questions already told to stop are dropped), then end."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _start(self) -> None:  # holding self._wake
        if self._stopping:
            raise ModelServerUnavailable("The local model server is shut down.")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="guildtune-local-model", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = None
            with self._wake:
                while not self._control and not self._waiting and not self._stopping:
                    self._wake.wait()
                self._waiting = [q for q in self._waiting if not q.stop.is_set()]
                if self._control:
                    job = self._control.popleft()
                elif self._waiting:
                    chosen = self._pick(self._waiting)
                    self._waiting = [q for q in self._waiting if q not in chosen]
                else:
                    return  # stopping, and nothing is left
            if job is None:
                try:
                    self._answer(chosen)
                except Exception as exc:  # torch/transformers failures: log the trace, tell the users plainly
                    log.exception("local generation failed")
                    error = ModelServerError(f"The local model failed while answering ({type(exc).__name__}: {exc}).")
                    for question in chosen:
                        question.send(error)
                continue
            future, fn, args = job
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

    `batching` says how waiting questions share a round: "mixed" (default) decodes different
    versions' questions together through PEFT's `adapter_names`; "grouped" only batches questions
    of the same version; "off" answers one question at a time (the server before batching, kept
    as the benchmark's baseline and as a fallback). `max_batch_size` bounds the rows of a round.
    """

    def __init__(self, base_model_dir: str, device: str = "auto", max_loaded_adapters: int = 4,
                 max_queue_wait_s: float = 900.0, batching: str = "mixed", max_batch_size: int = 16):
        if max_loaded_adapters < 1:
            raise ValueError("max_loaded_adapters must be at least 1")
        if batching not in BATCHING_MODES:
            raise ValueError(f"batching must be one of {', '.join(BATCHING_MODES)}, not {batching!r}")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.base_model_dir = str(base_model_dir)
        self.requested_device = device
        self.max_loaded_adapters = max_loaded_adapters
        self.max_queue_wait_s = max_queue_wait_s
        self.batching = batching
        self.max_batch_size = max_batch_size
        self._worker = _ModelThread(self._pick_round, self._answer_round)
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
        question = _Question(asyncio.get_running_loop(), version, messages, options)
        ahead = len(self._questions)
        self._questions.add(question)
        try:
            self._worker.ask(question)
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
            question.stop.set()  # consumer finished, left or timed out: its row ends at the next token
            self._worker.withdraw(question)
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
        release = self._worker.submit(self._release)
        await asyncio.to_thread(self._worker.stop)
        release.result()

    # ---- async → worker -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ModelServerUnavailable("The local model server is shut down.")

    async def _on_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._check_open()
        return await asyncio.wrap_future(self._worker.submit(fn, *args))

    # ---- the worker thread (everything below runs there, one call at a time) -------------

    def _pick_round(self, waiting: list[_Question]) -> list[_Question]:
        """The oldest waiting question and those that can decode beside it: same sampling knobs,
        (grouped: same version), adapters that fit in memory together, at most max_batch_size."""
        from serving.batch_generation import sampling_key

        first = waiting[0]
        key = sampling_key(first.options)
        if self.batching == "off" or key is None:
            return [first]
        chosen, adapters = [first], {first.adapter} - {None}
        for question in waiting[1:]:
            if len(chosen) >= self.max_batch_size:
                break
            if sampling_key(question.options) != key:
                continue
            if self.batching == "grouped" and question.adapter != first.adapter:
                continue
            needed = adapters | ({question.adapter} - {None})
            if len(needed) > self.max_loaded_adapters:
                continue
            chosen.append(question)
            adapters = needed
        return chosen

    def _answer_round(self, questions: list[_Question]) -> None:
        """Decode one round to its end. Loads and removals wait until it is over, so no adapter
        changes under an answer in flight; a question that cannot be served fails alone."""
        from serving import batch_generation

        try:
            self._ensure_base()
            keep = frozenset(q.adapter for q in questions if q.adapter is not None)
            ready: list[_Question] = []
            for question in questions:
                try:
                    if question.version is not None:
                        self._ensure_adapter(question.version, keep)
                    ready.append(question)
                except ModelServerError as exc:
                    question.send(exc)
            self._ensure_base()  # a failed first adapter load may have dropped a half-injected base
            model = self._peft or self._base
            rows, live = [], []
            for question in ready:
                try:
                    ids = batch_generation.prompt_ids(model, self._tokenizer, self._device, question.messages,
                                                      question.options)
                except ModelServerError as exc:
                    question.send(exc)
                    continue
                rows.append(batch_generation.Row(ids, question.options.max_tokens, question.stop, question.send,
                                                 functools.partial(question.send, _DONE)))
                live.append(question)
        except ModelServerError as exc:
            for question in questions:
                question.send(exc)
            return
        if not live:
            return
        for question in live:
            question.send(_STARTED)
        try:
            names = [q.adapter for q in live]
            if len(set(names)) == 1:  # also every round of batching="off": one row, the same decoding
                with self._selected(names[0]):
                    batch_generation.generate_rows(model, self._tokenizer, rows, live[0].options)
            else:
                batch_generation.generate_rows(self._peft, self._tokenizer, rows, live[0].options,
                                               adapter_names=[name or "__base__" for name in names])
        except ModelServerError as exc:
            for question in live:
                question.send(exc)

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
        if generation.warms_up(device):
            from serving import batch_generation

            started = time.perf_counter()
            try:
                batch_generation.warm_up(self._base, self._tokenizer, device)
                log.info("warmed up the model on %s in %.2f s", device, time.perf_counter() - started)
            except Exception:  # only a head start: a real round reports what is wrong, to its askers
                log.exception("warming up the model on %s failed", device)

    def _ensure_adapter(self, version: ModelVersion, keep: frozenset[str] = frozenset()) -> str:
        """Load (or touch, for the LRU) the version's adapter; returns its adapter name. Adapters
        in `keep` (the current round's) are never evicted to make room."""
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
            oldest = next((loaded for loaded in self._adapters if loaded not in keep), None)
            if oldest is None:  # _pick_round never asks for more adapters than fit
                raise ModelServerUnavailable("The local model has no room for another adapter right now. Try again.")
            log.info("evicting adapter %s (least recently used)", oldest)
            self._drop_adapter(oldest)
        # Straight onto the model's device, in the base's dtype: PEFT's default upcasts a bf16 model's
        # adapters to float32, and then every LoRA layer casts between the two at every token (one more
        # small kernel per LoRA layer: 126 per token for Gemma 3 270M with all-linear adapters).
        placement = {"torch_device": self._device, "autocast_adapter_dtype": False}
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(self._base, version.adapter_path, adapter_name=name,
                                                       is_trainable=False, **placement)
            else:
                self._peft.load_adapter(version.adapter_path, adapter_name=name, is_trainable=False, **placement)
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
            # PEFT's set_adapter walks every module of the model (tens of ms for Gemma 3 270M with four
            # adapters), before this answer's first token: only when the adapter really changes.
            if list(self._peft.active_adapters) != [name]:
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
