"""Request fields -> engine SamplingParams, and the context-window check.

OpenAI's defaults apply where a field is omitted or null (temperature 1, top_p 1, n 1). An omitted
max_tokens means "up to the context window", as in vLLM."""

from __future__ import annotations

from engine.sampling_params import SamplingParams
from server.errors import APIError, bad_request
from server.protocol import SamplingFields


def resolve_max_tokens(prompt_len: int, requested: int | None, max_model_len: int, what: str = "messages") -> int:
    """The completion budget, or a 400 naming both token counts when prompt + completion cannot fit."""
    param = "messages" if what == "messages" else "prompt"
    if requested is None:
        if prompt_len >= max_model_len:
            raise APIError(400, f"This model's maximum context length is {max_model_len} tokens. However, "
                           f"your {what} resulted in {prompt_len} tokens, which leaves no room for the "
                           "completion. Please reduce the length of the "
                           f"{what}.", param=param, code="context_length_exceeded")
        return max_model_len - prompt_len
    if prompt_len + requested > max_model_len:
        raise APIError(400, f"This model's maximum context length is {max_model_len} tokens. However, you "
                       f"requested {prompt_len + requested} tokens ({prompt_len} in the {what}, {requested} "
                       f"in the completion). Please reduce the length of the {what} or completion.",
                       param=param, code="context_length_exceeded")
    return requested


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def check_unsupported(body: SamplingFields) -> None:
    """Fields OpenAI defines that this server cannot honour: a clear 400 beats silently ignoring them."""
    if body.logit_bias:
        raise bad_request("logit_bias is not supported by this server", param="logit_bias")


def build_sampling_params(body: SamplingFields, max_tokens: int, logprobs: int | None) -> SamplingParams:
    def value(name: str, default):
        v = getattr(body, name)
        return default if v is None else v

    try:
        return SamplingParams(
            n=value("n", 1),
            temperature=value("temperature", 1.0),
            top_p=value("top_p", 1.0),
            top_k=value("top_k", 0),
            min_p=value("min_p", 0.0),
            presence_penalty=value("presence_penalty", 0.0),
            frequency_penalty=value("frequency_penalty", 0.0),
            repetition_penalty=value("repetition_penalty", 1.0),
            seed=body.seed,
            max_tokens=max_tokens,
            min_tokens=value("min_tokens", 0),
            stop=_stop(body.stop),
            stop_token_ids=tuple(body.stop_token_ids or ()),
            include_stop_str_in_output=value("include_stop_str_in_output", False),
            ignore_eos=value("ignore_eos", False),
            logprobs=logprobs,
            skip_special_tokens=value("skip_special_tokens", True),
        )
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
