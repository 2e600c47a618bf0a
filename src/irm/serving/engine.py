"""The decode loop behind ``irm serve``: continuous batching with per-row IRM routing.

One background thread owns the host. Each turn of its loop it

1. drops the rows whose client went away or that finished;
2. admits waiting requests while the batch has room: their prompts are prefilled together
   in one left-padded forward pass with a fresh KV cache, which is then merged into the
   running batch's cache (:mod:`irm.serving.batch`; the attention mask hides the padding,
   and position ids count each row's real tokens, as ``model.generate`` does);
3. decodes every active row by one token in one batched forward pass.

Before every forward pass, :class:`irm.core.routing.RowRouter` is told each row's IRM,
strength and layers, so rows of one batch may use different IRMs (each runs on its own
rows only) or none. A request's greedy tokens are therefore the tokens it gets alone, up
to near-ties flipped by the padding of a batch (as in ``irm generate``'s own batches).

Why not transformers' continuous batching: it packs every request's tokens into a single
row of one flat sequence; the forward pass is told where each sequence starts
(``cu_seq_lens_q``) but not whose it is, which lives only in the private state of its
background thread (double-buffered in its asynchronous mode), with no per-step callback;
per-request routing would have to read that private state from a hook. A small scheduler
on the unmodified ``model.forward`` and ``DynamicCache`` keeps the routing on public
interfaces.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from irm.core.routing import Adapter, RowRouter
from irm.errors import HostError, IRMError
from irm.hosts.loading import Host
from irm.serving.batch import Batch, merge, select
from irm.serving.jobs import Event, Job, Sampling
from irm.serving.text import TextStream

RECORD_TOP = 8


class QueueFull(IRMError):
    """The waiting queue is full (the server answers 429)."""


class Engine:
    def __init__(self, host: Host, adapters: dict[str, Adapter], *, max_batch: int = 8, max_queue: int = 64, metrics: Any = None) -> None:
        self.host = host
        self.model = host.model
        self.tokenizer = host.require_tokenizer()
        self.router = RowRouter(self.model, adapters)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.metrics = metrics
        self.eos = _eos_ids(host)
        self.layers = {name: list(a.config.layers) for name, a in adapters.items()}
        self._check_cache()
        self._waiting: deque[Job] = deque()
        self._lock = threading.Condition()
        self._batch: Batch | None = None
        self._running = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="irm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop (requests still waiting or running get an error event) and take
        the router's hooks off the host."""
        with self._lock:
            self._running = False
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.router.remove()

    def submit(self, job: Job) -> None:
        self.router.check(job.route)
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)", hint="retry later")
            self._waiting.append(job)
            self._observe_queue()
            self._lock.notify_all()

    def cancel(self, job: Job) -> None:
        """Free the job's slot: it leaves the batch before the next forward pass."""
        with self._lock:
            job.cancelled = True
            self._lock.notify_all()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        batch = self._batch
        return len(batch.jobs) if batch is not None else 0

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while self._running and not self._waiting and self._batch is None:
                        self._lock.wait()
                    if not self._running:
                        break
                    admitted = self._take_waiting()
                try:
                    if admitted:
                        self._prefill(admitted)
                    if self._batch is not None:
                        self._decode()
                except Exception as exc:  # a failed forward fails its batch, not the server
                    self._fail(list(admitted) + (self._batch.jobs if self._batch else []), exc)
                    self._batch = None
            with self._lock:
                leftover = list(self._waiting) + (self._batch.jobs if self._batch else [])
                self._waiting.clear()
            self._fail(leftover, RuntimeError("the server is shutting down"))

    def _take_waiting(self) -> list[Job]:
        self._drop_finished()
        room = self.max_batch - self.active
        taken: list[Job] = []
        while self._waiting and len(taken) < room:
            job = self._waiting.popleft()
            if not job.cancelled:
                taken.append(job)
        self._observe_queue()
        return taken

    def _prefill(self, jobs: list[Job]) -> None:
        width = max(len(j.prompt_ids) for j in jobs)
        pad = int(self.tokenizer.pad_token_id or 0)
        device = self.host.device
        ids = torch.tensor([[pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs], device=device)
        mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs], device=device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        for job in jobs:
            job.stream = TextStream(self.tokenizer, job.sampling.stop)
            if job.sampling.temperature > 0:
                job.generator = torch.Generator(device=device)
                job.generator.manual_seed(job.sampling.seed if job.sampling.seed is not None else int(torch.seed()))
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(sum(len(j.prompt_ids) for j in jobs))
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(jobs, ids, mask, positions, cache)
        tokens = self._sample(logits, jobs)
        fresh = Batch(jobs, cache, mask, torch.tensor(tokens, device=device), mask.sum(-1))
        self._emit(fresh, tokens)
        self._batch = fresh if self._batch is None else merge(self._batch, fresh)
        self._drop_finished()

    def _decode(self) -> None:
        batch = self._batch
        assert batch is not None
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.jobs), 1))], dim=-1)
        logits = self._forward(batch.jobs, batch.next_ids[:, None], batch.mask, batch.positions[:, None], batch.cache)
        tokens = self._sample(logits, batch.jobs)
        batch.next_ids = torch.tensor(tokens, device=batch.next_ids.device)
        batch.positions = batch.positions + 1
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch.jobs))
        self._emit(batch, tokens)
        self._drop_finished()

    def _forward(self, jobs: Sequence[Job], ids: Tensor, mask: Tensor, positions: Tensor, cache: DynamicCache) -> Tensor:
        self.router.route([j.route for j in jobs])
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        logits: Tensor = out.logits[:, -1].float()
        return logits

    # ------------------------------------------------------------------ tokens out
    def _sample(self, logits: Tensor, jobs: Sequence[Job]) -> list[int]:
        tokens = logits.argmax(dim=-1).tolist()
        for row, job in enumerate(jobs):
            if job.generator is not None:
                tokens[row] = sample_token(logits[row], job.sampling, job.generator)
        return [int(t) for t in tokens]

    def _emit(self, batch: Batch, tokens: list[int]) -> None:
        recorded = self.router.recorded()
        now = time.perf_counter()
        for row, (job, token) in enumerate(zip(batch.jobs, tokens)):
            if job.cancelled or job.finish_reason is not None:
                continue
            if job.first_token is None:
                job.first_token = now
                if self.metrics is not None:
                    self.metrics.first_token.observe(now - job.submitted)
            job.generated.append(token)
            if self.metrics is not None:
                self.metrics.tokens.labels(irm=job.route.adapter or "none").inc()
            if token in self.eos:
                job.finish_reason = "stop"
                assert job.stream is not None
                _deliver(job, Event(text=job.stream.finish(), finish_reason="stop"))
                continue
            event = self._token_event(job, token, recorded.get(row))
            if job.stream is not None and job.stream.stopped:
                job.finish_reason = "stop"
            elif len(job.generated) >= job.sampling.max_tokens:
                job.finish_reason = "length"
            if job.finish_reason is not None:
                assert job.stream is not None
                event.text += job.stream.finish()
                event.finish_reason = job.finish_reason
            _deliver(job, event)

    def _token_event(self, job: Job, token: int, output: Tensor | None) -> Event:
        assert job.stream is not None
        event = Event(text=job.stream.push(token), token_id=token)
        if job.record != "off" and output is not None:
            event.record = record_entry(self.tokenizer, token, output, with_map=job.record == "map")
        return event

    def _drop_finished(self) -> None:
        batch = self._batch
        if batch is None:
            return
        keep = [i for i, j in enumerate(batch.jobs) if not j.cancelled and j.finish_reason is None]
        for i, job in enumerate(batch.jobs):
            if i not in keep and self.metrics is not None:
                self.metrics.latency.observe(time.perf_counter() - job.submitted)
        if len(keep) == len(batch.jobs):
            return
        self._batch = select(batch, keep) if keep else None
        if self.metrics is not None:
            self.metrics.active.set(self.active)

    def _fail(self, jobs: Sequence[Job], exc: BaseException) -> None:
        for job in jobs:
            if job.finish_reason is None and not job.cancelled:
                job.finish_reason = "error"
                _deliver(job, Event(finish_reason="error", error=str(exc)))

    def _observe_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.queue.set(len(self._waiting))
            self.metrics.active.set(self.active)

    def _check_cache(self) -> None:
        kinds = {type(layer).__name__ for layer in DynamicCache(config=self.model.config).layers}
        if kinds != {DynamicLayer.__name__}:
            raise HostError(
                f"irm serve batches hosts whose KV cache is a plain DynamicCache; {self.host.name} uses {sorted(kinds)}",
                hint="serve a host without sliding-window attention (llama, mistral, qwen2, gpt2, gpt-neox, SmolLM2)",
            )


# ---------------------------------------------------------------------- helpers
def _deliver(job: Job, event: Event) -> None:
    """Hand ``event`` to the job's consumer; a consumer that is gone (its event loop closed)
    cancels the job instead of failing the batch."""
    try:
        job.sink(event)
    except RuntimeError:
        job.cancelled = True


def _eos_ids(host: Host) -> set[int]:
    found: set[int] = set()
    for value in (getattr(host.model.generation_config, "eos_token_id", None), host.require_tokenizer().eos_token_id):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list):
            found.update(int(v) for v in value)
    return found


def sample_token(logits: Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """Temperature, then nucleus (top-p) filtering, then one draw from ``generator``."""
    scores = logits / sampling.temperature
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(scores)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - sampling.top_p
        drop[-1] = False
        scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).item())


def record_entry(tokenizer: Any, token: int, output: Tensor, *, with_map: bool) -> dict[str, Any]:
    """What ``irm_record`` returns for one generated token: the IRM output ``(hidden,
    layers)`` computed at the position that chose it, as its norm, the hidden indices of
    largest mean ``|value|`` over layers, and optionally the whole layer-major map."""
    import base64

    values = output.float()
    profile = values.abs().mean(dim=-1)
    top = torch.topk(profile, min(RECORD_TOP, profile.numel()))
    entry: dict[str, Any] = {
        "token_id": token,
        "token": str(tokenizer.decode([token])),
        "norm": float(values.norm()),
        "top": [{"index": int(i), "mean_abs": float(v)} for v, i in zip(top.values.tolist(), top.indices.tolist())],
    }
    if with_map:
        layer_major = values.T.contiguous().cpu().numpy().astype("<f4")
        entry["map"] = base64.b64encode(layer_major.tobytes()).decode("ascii")
    return entry
