"""Data and small steps shared by the acceptance tests (tiny byte-level model, short sequences)."""

from __future__ import annotations

import math

import tinker

TEXTS = ["the cat sat on the mat", "a quick brown fox", "loraplane trains"]


def ce_batch(texts: list[str] = TEXTS) -> list[tinker.Datum]:
    """Next-byte cross-entropy datums: the byte tokenizer maps byte b to token b + 3."""
    out = []
    for text in texts:
        tokens = [1] + [b + 3 for b in text.encode()]
        out.append(tinker.Datum(
            model_input=tinker.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
        ))
    return out


def rl_batch(texts: list[str] = TEXTS) -> list[tinker.Datum]:
    """Inputs of the RL losses: sampler logprobs and per-token advantages."""
    out = []
    for i, text in enumerate(texts):
        tokens = [1] + [b + 3 for b in text.encode()]
        n = len(tokens) - 1
        out.append(tinker.Datum(
            model_input=tinker.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={"target_tokens": tokens[1:], "logprobs": [-5.5] * n,
                            "advantages": [1.0 if i % 2 == 0 else -0.5] * n},
        ))
    return out


def train(client: tinker.TrainingClient, steps: int, *, lr: float = 1e-2, data: list[tinker.Datum] | None = None,
          pipelined: bool = True) -> list[float]:
    """`steps` forward_backward + optim_step pairs; pipelined submits them all before any result."""
    data = data or ce_batch()
    adam = tinker.AdamParams(learning_rate=lr)
    if pipelined:
        futures = [(client.forward_backward(data, "cross_entropy"), client.optim_step(adam)) for _ in range(steps)]
        losses = [fb.result().metrics["loss:sum"] for fb, _ in futures]
        for _, opt in futures:
            opt.result()
        return losses
    losses = []
    for _ in range(steps):
        fb = client.forward_backward(data, "cross_entropy")
        client.optim_step(adam).result()
        losses.append(fb.result().metrics["loss:sum"])
    return losses


def close(a: list[float], b: list[float], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=tol, abs_tol=tol) for x, y in zip(a, b, strict=True))
