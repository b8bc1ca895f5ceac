"""Judge verification (JuDi-style, training-free): a draft token is accepted if it equals the target's
own choice (argmax when greedy, a sample from p otherwise), or if the target is not confident (max
probability <= `confidence`) and KL(p_target || p_draft) < tau at that position. The first position
that fails gets the target's choice. Not lossless; needs draft distributions, so deterministic drafts
fall back to lossless."""

from __future__ import annotations

import torch

from engine.request import Request
from engine.sampler import draw
from plugins.base import Verdict
from plugins.spec_decode.proposal import Proposal
from plugins.spec_decode.verifiers.registry import Verifier, register_verifier
from plugins.spec_decode.verifiers.target_probs import can_process, kl_divergence, target_probs

CONFIDENCE = 0.9


def judge(p: torch.Tensor, q: torch.Tensor, tokens: list[int], choices: list[int], tau: float,
          confidence: float = CONFIDENCE) -> tuple[Verdict, list[float]]:
    """p, q: [k, V]; choices: the target's token per position. Returns the verdict and the KL of each
    draft accepted although it differs from the target's choice."""
    kl = kl_divergence(p, q).tolist()
    top = p.max(-1).values.tolist()
    relaxed: list[float] = []
    for i, d in enumerate(tokens):
        if d == choices[i]:
            continue
        if top[i] <= confidence and kl[i] < tau:
            relaxed.append(kl[i])
            continue
        return Verdict(i, choices[i]), relaxed
    return Verdict(len(tokens)), relaxed


@register_verifier("judge")
class JudgeVerifier(Verifier):
    def __init__(self) -> None:
        # KL of every relaxed acceptance since the last read (the plugin moves them into its metrics)
        self.relaxed_kl: list[float] = []

    def verify(self, req: Request, proposal: Proposal, logits: torch.Tensor, tau: float) -> Verdict | None:
        if proposal.probs is None or not can_process(req):
            return None
        k = len(proposal.tokens)
        p = target_probs(logits[:k], req)
        if req.params.greedy:
            choices = p.argmax(-1).tolist()
        else:
            choices = draw(p, req.generator).tolist()
        verdict, relaxed = judge(p, proposal.probs.to(p.device), proposal.tokens, choices, tau)
        self.relaxed_kl.extend(relaxed)
        return verdict
