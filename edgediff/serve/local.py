"""Serving on one device: one pipeline, one worker thread, requests batched as they arrive.

The event loop only queues; the pipeline runs on a single worker thread (ONNX Runtime and
TensorRT release the GIL), so HTTP keeps being answered while a batch runs. When the worker
frees up it takes what is waiting, up to `max_batch` images, waiting `batch_wait_s` at most for
more when the queue is shorter: under load batches fill without any wait, and a lone request
pays at most that wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from edgediff.runtime.request import GenerationRequest
from edgediff.serve.batches import BatchRunner, Outcome


class ImageService(Protocol):
    """What the HTTP app needs from whatever runs the pipelines (here, or on Ray replicas)."""

    async def start(self) -> None:
        """Begin taking requests (called once the event loop runs)."""

    async def generate(self, request: GenerationRequest) -> Outcome:
        """Images for one request (its seed fixed)."""

    async def info(self) -> dict[str, Any]:
        """What is served: bundle, backend, defaults; raises if no pipeline is ready."""

    async def close(self) -> None:
        """Finish what was taken, then release the pipelines."""


_STOP = object()


class LocalService:
    """An ImageService on this process's one pipeline."""

    def __init__(self, runner: BatchRunner, max_batch: int, batch_wait_s: float):
        self.runner = runner
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="edgediff-pipeline")
        self._held: tuple | None = None  # taken from the queue, but did not fit the last batch

    async def start(self) -> None:
        """Start the worker on the running loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._work(), name="edgediff-batcher")

    async def generate(self, request: GenerationRequest) -> Outcome:
        """Queue the request and wait for its images."""
        if self._queue is None:
            raise RuntimeError("LocalService.start() was not called")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        # A client that goes away cancels this wait, not the batch its request is in.
        return await asyncio.shield(future)

    async def info(self) -> dict[str, Any]:
        """The runner's description."""
        return {"replicas": 1, **self.runner.info()}

    async def close(self) -> None:
        """Run everything queued, stop the worker, release the pipeline."""
        if self._queue is not None and self._worker is not None:
            await self._queue.put((_STOP, None))
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)
        self.runner.close()

    async def _next(self, timeout: float | None) -> tuple:
        if self._held is not None:
            item, self._held = self._held, None
            return item
        if timeout is None:
            return await self._queue.get()
        with contextlib.suppress(asyncio.QueueEmpty):
            return self._queue.get_nowait()  # what is already waiting joins without a wait
        if timeout <= 0:
            raise asyncio.TimeoutError  # not TimeoutError: they differ before Python 3.11
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            if first[0] is _STOP:
                return
            batch, images = [first], first[0].count
            deadline = loop.time() + self.batch_wait_s
            while images < self.max_batch:
                try:
                    item = await self._next(max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if item[0] is _STOP or images + item[0].count > self.max_batch:
                    self._held = item  # the next batch starts with it (or stops at it)
                    break
                batch.append(item)
                images += item[0].count
            requests = [request for request, _ in batch]
            try:
                outcomes = await loop.run_in_executor(self._executor, self.runner.run, requests)
            except Exception as e:
                outcomes = [e] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # cancelled: nobody waits for it
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
