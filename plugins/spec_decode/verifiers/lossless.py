"""Lossless verification. Greedy and deterministic drafts go to the engine's sample-and-compare, which
is exact. Drafts drawn from a distribution q use standard speculative rejection sampling: keep draft d
with probability min(1, p(d) / q(d)); at the first rejection draw from the residual
norm(max(0, p - q)); if every draft is kept the engine samples the bonus token from p. The output is
distributed exactly as p."""

from __future__ import annotations

import torch

from engine.request import Request
from engine.sampler import draw
from plugins.base import Verdict
from plugins.spec_decode.proposal import Proposal
from plugins.spec_decode.verifiers.registry import Verifier, register_verifier
from plugins.spec_decode.verifiers.target_probs import can_process, target_probs


def rejection_sample(p: torch.Tensor, q: torch.Tensor, tokens: list[int],
                     generator: torch.Generator | None = None) -> Verdict:
    """p, q: [k, V] target and draft probabilities at the k draft positions; tokens: the k drafts, each
    drawn from its row of q."""
    for i, d in enumerate(tokens):
        u = torch.rand((), generator=generator, device=p.device)
        if float(u) * float(q[i, d]) <= float(p[i, d]):
            continue
        residual = (p[i] - q[i]).clamp_min(0.0)
        if float(residual.sum()) <= 0.0:  # p == q up to rounding: the rejection had ~zero chance
            residual = p[i]
        token = int(draw(residual, generator))
        return Verdict(i, token)
    return Verdict(len(tokens))


@register_verifier("lossless")
class LosslessVerifier(Verifier):
    def verify(self, req: Request, proposal: Proposal, logits: torch.Tensor, tau: float) -> Verdict | None:
        if req.params.greedy or proposal.probs is None or not can_process(req):
            return None
        k = len(proposal.tokens)
        p = target_probs(logits[:k], req)
        return rejection_sample(p, proposal.probs.to(p.device), proposal.tokens, req.generator)
