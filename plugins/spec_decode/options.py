"""Per-request options, `"plugins": {"spec_decode": {...}}` in a request body. Unset fields fall back to
the deployment's hyperparameters."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SpecDecodeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enable: bool | None = None  # opt in or out of speculation for this request
    k: int | None = Field(default=None, ge=1, le=32)  # most draft tokens per step
    tau: float | None = Field(default=None, ge=0.0, le=100.0)  # judge threshold on KL(p_target || p_draft)
    proposer: str | None = None  # a proposer the deployment has loaded
    verifier: str | None = None  # lossless | judge
