"""Settings of the HTTP layer (the engine has its own configs in engine/config). Frozen and validated on
construction, like every config in the project."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    # Name reported by /v1/models and required in requests; None: the backend's model name.
    served_model_name: str | None = None
    # Requests allowed to wait for a slot beyond the `max_num_seqs` that run at once; None: unbounded.
    max_queue: int | None = 256
    # Mirrors the scheduler's limit so admission can tell "running" from "waiting" without a round trip.
    max_num_seqs: int = 64
    shutdown_timeout: float = 30.0
    request_timeout: float | None = None
    cors_origins: tuple[str, ...] = ()
    # Plugins enabled on the engine: only these accept per-request options.
    plugins: tuple[str, ...] = ()
    # /ready fails when requests are pending and no step has succeeded for this long.
    ready_step_window: float = 30.0
    retry_after: int = 1
    # Split `<think>...</think>` into reasoning_content.
    enable_reasoning: bool = True
    max_body_bytes: int = 32 << 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        object.__setattr__(self, "plugins", tuple(self.plugins))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty (leave it unset to disable authentication)")
        if self.served_model_name is not None and not self.served_model_name.strip():
            raise ValueError("served_model_name must not be empty")
        if self.max_queue is not None and self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be >= 0, got {self.shutdown_timeout}")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0, got {self.request_timeout}")
        if self.ready_step_window <= 0:
            raise ValueError(f"ready_step_window must be > 0, got {self.ready_step_window}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if self.retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, got {self.retry_after}")
