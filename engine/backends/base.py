"""The interface every engine backend offers the server (native engine, vLLM adapter)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.stats import EngineStats


@runtime_checkable
class EngineBackend(Protocol):
    model_name: str
    max_model_len: int

    @property
    def tokenizer(self):  # engine.loader.tokenizer.Tokenizer
        ...

    async def start(self) -> None:
        """Loads the model and starts the step loop."""

    def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        plugin_options: dict | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Streams cumulative outputs (with deltas) until one with finished=True. Raises ValueError
        for a request that can never run (too long, bad plugin options). Breaking out of the
        iteration (or cancelling the task) aborts the request and frees its blocks."""

    async def abort(self, request_id: str) -> None:
        """Aborts a request; its stream ends with finish_reason='abort'. Unknown ids are ignored."""

    def stats(self) -> EngineStats: ...

    async def shutdown(self) -> None:
        """Stops the step loop; pending streams end with finish_reason='abort'."""
