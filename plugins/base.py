"""The plugin contract (DESIGN.md section 4). A plugin is a dataclass whose fields are its
hyperparameters; it overrides only the hooks it needs, every hook has a no-op default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

    from engine.kv_spec import KVSpec
    from engine.request import Request


class NoOptions(BaseModel):
    """Per-request options model for plugins that take none: any key is an error."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class Action:
    """What `on_tokens` asks the engine to do with a request."""

    kind: str = "continue"  # continue | inject | finish
    text: str = ""  # for inject: text whose tokens are appended as if generated
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("continue", "inject", "finish"):
            raise ValueError(f"Action.kind must be continue, inject or finish, got {self.kind!r}")


CONTINUE = Action()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `verify` decides for one request's drafts: the first `num_accepted` are kept. `next_token`
    is the token at the first rejected position when the verifier chose it (rejection sampling draws it
    from the residual distribution); None lets the engine sample it from the target."""

    num_accepted: int
    next_token: int | None = None

    def __post_init__(self) -> None:
        if self.num_accepted < 0:
            raise ValueError(f"Verdict.num_accepted must be >= 0, got {self.num_accepted}")


class Plugin:
    """Base class. Subclasses are dataclasses registered with `@register_plugin(name)`."""

    name: ClassVar[str] = ""
    hooks: ClassVar[frozenset[str]] = frozenset()
    conflicts: ClassVar[frozenset[str]] = frozenset()
    # pydantic model that validates `"plugins": {"<name>": {...}}` in a request body
    request_options: ClassVar[type[BaseModel]] = NoOptions

    def setup(self, engine: Any) -> None:
        """Engine start. `engine` is the LLMEngine; keep only what is needed."""

    def close(self) -> None:
        """Engine stop."""

    def transform_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Load time, before weights move to the device."""
        return model

    def kv_spec(self, layer: int, default: KVSpec) -> KVSpec:
        """KV cache allocation: the storage spec of one layer."""
        return default

    def on_request(self, request: Request) -> None:
        """A request was admitted. Per-request options are in `request.plugin_options[self.name]`."""

    def after_forward(self, batch: Any, attention_stats: dict | None) -> None:
        """After every engine step; `batch` is the SchedulerOutput that ran."""

    def propose(self, batch: Any) -> dict[str, list[int]]:
        """Decode steps: draft token ids per request id."""
        return {}

    def verify(self, batch: Any, drafts: dict[str, list[int]], logits: Any) -> dict[str, int | Verdict]:
        """Decode steps: number of accepted draft tokens (or a Verdict) per request id; `logits` maps a
        request id to its [drafts + 1, V] target logits. Requests left out get the engine's default."""
        return {}

    def on_tokens(self, request: Request, new_token_ids: list[int]) -> Action:
        """Tokens were appended to a request."""
        return CONTINUE

    def route(self, request: Any) -> str | None:
        """Server, before the engine: the model variant to serve this request (None: default)."""
        return None

    def metric_collectors(self) -> list:
        """prometheus_client collectors of this plugin's own metrics (`tessera_<plugin>_...`); the
        server registers them on its /metrics registry once the engine has started."""
        return []

    def validate_options(self, options: dict) -> BaseModel:
        """Validates per-request options; raises pydantic.ValidationError (the server maps it to 400)."""
        return self.request_options.model_validate(options or {})
