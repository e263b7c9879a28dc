"""The multi-adapter LoRA layer's hand-written backward pass equals autograd's on the plain formula.

`MultiLoraLinear` computes its output and gradients in one autograd function (batched matmuls,
updates added in place). Here the same layer, routed over a mixed layout (grouped adapters, a lone
adapter of another rank, adapters cut to a shorter width, rows with no adapter), is compared with
`base(x) + scale * x_rows @ A^T @ B^T` written per segment and differentiated by autograd.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loraplane.runtime import lora
from tests.runtime.lora_layers import ADAPTERS, build_layer

#: adapter id -> (rank, alpha); a and b share rank and scaling (one group), d shares only the rank.

LAYOUTS = {
    # rows [start, end) and width of each adapter in a (6 rows, 5 positions) batch; row 5 has none.
    "mixed-3d": [
        lora.Segment("a", 0, 1, 5),
        lora.Segment("b", 1, 2, 5),
        lora.Segment("c", 2, 4, 3),
        lora.Segment("d", 4, 5, 4),
    ],
    "grouped-cut-3d": [lora.Segment("a", 0, 2, 3), lora.Segment("b", 2, 4, 3), lora.Segment("c", 4, 6, 5)],
    "one-adapter-all-rows": [lora.Segment("a", 0, 6, 5)],
    "2d-rows": [lora.Segment("a", 0, 2), lora.Segment("b", 2, 4), lora.Segment("c", 4, 5)],
}


def _reference(layer: lora.MultiLoraLinear, x: torch.Tensor, segments: list[lora.Segment]):
    """The layer's output by the plain formula, over leaf copies of the adapters' tensors."""
    a = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in layer.lora_A.items()}
    b = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in layer.lora_B.items()}
    pieces = []
    for row in range(x.shape[0]):
        out = layer.base_layer(x[row])
        for seg in segments:
            if seg.start <= row < seg.end:
                width = seg.width if x.dim() == 3 and seg.width is not None else None
                rows = (x[row] if width is None else x[row, :width]).float()
                update = layer.scaling[seg.adapter_id] * (rows @ a[seg.adapter_id].T) @ b[seg.adapter_id].T
                if width is not None:
                    update = nn.functional.pad(update, (0, 0, 0, x.shape[1] - width))
                out = (out.float() + update).to(x.dtype)
        pieces.append(out)
    return torch.stack(pieces), a, b


@pytest.mark.parametrize("frozen", [(), ("b",)], ids=["all-trainable", "b-frozen"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layer_output_and_gradients_equal_autograd_of_the_plain_formula(layout, frozen):
    layer, router = build_layer(frozen)
    segments = LAYOUTS[layout]
    shape = (6, 12) if layout.startswith("2d") else (6, 5, 12)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    upstream = torch.randn(*shape[:-1], 10, generator=torch.Generator().manual_seed(3))

    x_ours = x.clone().requires_grad_(True)
    with router.route(segments):
        ours = layer(x_ours)
    (ours * upstream).sum().backward()

    x_ref = x.clone().requires_grad_(True)
    expected, a_ref, b_ref = _reference(layer, x_ref, segments)
    (expected * upstream).sum().backward()

    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    routed = {seg.adapter_id for seg in segments}
    for adapter_id in ADAPTERS:
        for mine, theirs in ((layer.lora_A, a_ref), (layer.lora_B, b_ref)):
            if adapter_id in frozen or adapter_id not in routed:
                assert mine[adapter_id].grad is None, adapter_id
            else:
                torch.testing.assert_close(
                    mine[adapter_id].grad, theirs[adapter_id].grad, rtol=1e-5, atol=1e-6
                )


def test_low_precision_base_keeps_adapters_and_their_gradients_in_float32():
    """A bf16 base: the update is computed in fp32 and rounded once into the bf16 output."""
    layer, router = build_layer((), torch.bfloat16)
    segments = LAYOUTS["mixed-3d"]
    x = torch.randn(6, 5, 12, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    upstream = torch.randn(6, 5, 10, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    x_ours = x.clone().requires_grad_(True)
    with router.route(segments):
        ours = layer(x_ours)
    (ours.float() * upstream.float()).sum().backward()
    x_ref = x.clone().requires_grad_(True)
    expected, a_ref, _ = _reference(layer, x_ref, segments)
    (expected.float() * upstream.float()).sum().backward()

    assert ours.dtype == torch.bfloat16 and x_ours.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours, expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=2e-2, atol=2e-2)
    for adapter_id in ADAPTERS:
        assert layer.lora_A[adapter_id].grad.dtype == torch.float32
        torch.testing.assert_close(
            layer.lora_A[adapter_id].grad, a_ref[adapter_id].grad, rtol=2e-2, atol=2e-2
        )


def test_layer_without_routed_adapters_is_the_base_layer():
    layer, router = build_layer(())
    x = torch.randn(3, 4, 12)
    with router.route([lora.Segment("unknown", 0, 3)]):
        assert torch.equal(layer(x), layer.base_layer(x))
