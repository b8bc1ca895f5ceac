"""Turns the last-position logits of each request into its next token: penalties, min_tokens, then
greedy or temperature / top-k / top-p / min-p sampling with an optional per-request seed. Logprobs
are those of the raw model distribution (vLLM's default)."""

from __future__ import annotations

import torch

from engine.batched_sampling import sample_batched
from engine.kernels.registry import get_kernel
from engine.outputs import TokenLogprob
from engine.request import Request


def apply_penalties(logits: torch.Tensor, req: Request) -> None:
    """logits: [V] for one request, modified in place."""
    p = req.params
    device = logits.device
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(req.all_token_ids)), dtype=torch.long, device=device)
        vals = logits.index_select(0, seen)
        vals = torch.where(vals < 0, vals * p.repetition_penalty, vals / p.repetition_penalty)
        logits.index_copy_(0, seen, vals)
    if (p.frequency_penalty or p.presence_penalty) and req.output_token_ids:
        out = torch.tensor(req.output_token_ids, dtype=torch.long, device=device)
        counts = torch.bincount(out, minlength=logits.shape[0]).to(logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """probs: [..., V] non-negative weights (need not sum to 1) -> [...] int64 ids, each drawn with
    probability proportional to its weight; a zero weight is never drawn.

    Inverse CDF with one uniform per row. torch.multinomial on the CPU costs about 1.2 ms per row over a
    49k vocabulary (it walks the whole row several times), which was a tenth of a sampled decode step and
    most of the cost of verifying speculative drafts by sampling; cumsum + binary search is ~20x cheaper."""
    cdf = probs.to(torch.float64).cumsum(-1)
    total = cdf[..., -1:]
    u = torch.rand(total.shape, generator=generator, dtype=torch.float64, device=probs.device) * total
    ids = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    vocab = probs.shape[-1]
    if bool((ids >= vocab).any()):  # u rounded up to the total: the last token with weight
        last = vocab - 1 - (probs.flip(-1) > 0).to(torch.int8).argmax(-1)
        ids = torch.where(ids >= vocab, last, ids)
    return ids


def logprob_entry(logprobs: torch.Tensor, token: int, num_top: int) -> TokenLogprob:
    """logprobs: [V] log-softmax of the raw logits -> what is reported for `token`: its logprob and the
    `num_top` most likely alternatives, best first."""
    top: list[tuple[int, float]] = []
    if num_top:
        vals, ids = torch.topk(logprobs, num_top)
        top = list(zip(ids.tolist(), vals.tolist(), strict=True))
    return TokenLogprob(token, float(logprobs[token]), top)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """logits: [V] (already divided by temperature) -> logits with filtered entries at -inf."""
    vocab = logits.shape[0]
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(), float("-inf"))
    return logits


class Sampler:
    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._argmax: dict[str, object] = {}  # device type -> the registry's argmax kernel

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [R, V] -> [R] int64, the first index of each row's maximum."""
        fn = self._argmax.get(logits.device.type)
        if fn is None:
            fn = self._argmax[logits.device.type] = get_kernel("argmax", logits.device.type)
        return fn(logits)

    def sample(self, head, rows: list[int], requests: list[Request]) -> list[tuple[int, TokenLogprob | None]]:
        """head: the step's output (engine.model_runner.RunnerOutput), which gives logits or greedy tokens
        of its sampled rows on demand; rows: each request's row there. Requests that only take the
        argmax of their unmodified logits get greedy tokens, which the model may find for much less than
        the logits cost; the others sample from their logits as __call__ does."""
        out: list[tuple[int, TokenLogprob | None]] = [(0, None)] * len(requests)
        plain = [i for i, r in enumerate(requests) if r.argmax_only]
        if plain:
            for i, t in zip(plain, head.greedy_of([rows[i] for i in plain]).tolist(), strict=True):
                out[i] = (t, None)
        rest = [i for i, r in enumerate(requests) if not r.argmax_only]
        if rest:
            sampled = self(head.logits_of([rows[i] for i in rest]), [requests[i] for i in rest])
            for i, res in zip(rest, sampled, strict=True):
                out[i] = res
        return out

    def __call__(self, logits: torch.Tensor, requests: list[Request]) -> list[tuple[int, TokenLogprob | None]]:
        """logits: [S, V] fp32, one row per request -> (token id, logprob entry or None) per row."""
        want_logprobs = [r.params.logprobs is not None for r in requests]
        raw_logprobs = None
        if any(want_logprobs):
            rows = torch.tensor([i for i, w in enumerate(want_logprobs) if w], device=logits.device)
            raw_logprobs = dict(zip(rows.tolist(), torch.log_softmax(logits.index_select(0, rows), -1),
                                    strict=True))
        # Only rows that penalties or min_tokens change are copied and processed; the caller's logits stay
        # as they are. A copy of the whole [64, 49k] batch costs up to a tenth of a CPU decode step.
        banned = [r.banned_token_ids for r in requests]
        changed = [i for i, r in enumerate(requests) if r.params.needs_penalties or banned[i]]
        processed: dict[int, torch.Tensor] = {}
        if changed:
            sub = logits.index_select(0, torch.tensor(changed, device=logits.device))
            for row, i in zip(sub, changed, strict=True):
                apply_penalties(row, requests[i])
                if banned[i]:
                    row[torch.tensor(banned[i], device=logits.device)] = float("-inf")
                processed[i] = row

        def rows_of(rows: list[int]) -> torch.Tensor:
            """[len(rows), V]: the logits these rows sample from (processed where changed)."""
            if any(i in processed for i in rows):
                return torch.stack([processed.get(i, logits[i]) for i in rows])
            return logits if len(rows) == len(requests) else logits[torch.tensor(rows, device=logits.device)]

        tokens = [0] * len(requests)
        greedy_rows = [i for i, r in enumerate(requests) if r.params.greedy]
        # changed and unchanged greedy rows apart, so one penalized request does not copy the batch
        for part in ([i for i in greedy_rows if i not in processed], [i for i in greedy_rows if i in processed]):
            if part:
                for i, t in zip(part, self.argmax(rows_of(part)).tolist(), strict=True):
                    tokens[i] = t
        batched: set[int] = set()
        if logits.is_cuda:
            # on a GPU, unseeded rows are drawn together: one transfer for the batch, not one per request
            rows = [i for i, r in enumerate(requests) if not r.params.greedy and r.generator is None]
            if rows:
                picked = sample_batched(rows_of(rows), [requests[i].params for i in rows]).tolist()
                for i, t in zip(rows, picked, strict=True):
                    tokens[i] = t
                batched = set(rows)
        for i, req in enumerate(requests):
            if req.params.greedy or i in batched:
                continue
            p = req.params
            row = filter_logits(processed.get(i, logits[i]) / p.temperature, p.top_k, p.top_p, p.min_p)
            probs = row.softmax(-1)
            tokens[i] = int(draw(probs, req.generator))

        out: list[tuple[int, TokenLogprob | None]] = []
        for i, req in enumerate(requests):
            entry = None
            if raw_logprobs is not None and i in raw_logprobs:
                entry = logprob_entry(raw_logprobs[i], tokens[i], req.params.logprobs)
            out.append((tokens[i], entry))
        return out
