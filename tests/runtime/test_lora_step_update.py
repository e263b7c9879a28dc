"""A decode step's LoRA update (one position per row, many adapters) equals the plain formula.

`MultiLoraLinear` runs a decode step's rows of every adapter in two batched matmuls over stacked
weights: as views when the adapters' rows lie end to end in at most two runs of equal row counts
(of the layer's whole input and output when one run covers every row), else through a padded
gather. Each layout here is compared, row by row, with `base(x) + scale * x @ A^T @ B^T` of the
row's own adapter; the kept layout must follow the rows and weights that change.
"""

from __future__ import annotations

import pytest
import torch

from loraplane.runtime import lora
from tests.runtime.lora_layers import build_layer

#: adapter id -> (rank, alpha): a and b share both, c has another rank, d another scaling

LAYOUTS = {
    # rows [start, end) of each adapter in an 8-row decode batch; rows outside run the base only
    "equal-runs": [lora.Segment("a", 0, 2), lora.Segment("b", 2, 4), lora.Segment("d", 4, 6)],
    "equal-runs-after-base-rows": [lora.Segment("a", 3, 5), lora.Segment("b", 5, 7)],
    "uneven-runs": [lora.Segment("a", 0, 3), lora.Segment("b", 3, 4), lora.Segment("d", 4, 6)],
    # two row counts (a request with more samples, or rows that stopped): two runs of views
    "two-row-counts": [lora.Segment("a", 0, 3), lora.Segment("b", 3, 5), lora.Segment("d", 5, 7)],
    "two-row-counts-after-base-rows": [lora.Segment("a", 1, 3), lora.Segment("b", 3, 5), lora.Segment("d", 5, 8)],
    "mixed-ranks": [lora.Segment("a", 0, 2), lora.Segment("c", 2, 4), lora.Segment("d", 6, 8)],
    "one-adapter": [lora.Segment("c", 1, 8)],
    "gaps-between": [lora.Segment("a", 0, 2), lora.Segment("b", 4, 6)],
    # every row routed, equal runs: the fast path on views of the layer's input and output
    "whole-batch": [lora.Segment("a", 0, 2), lora.Segment("b", 2, 4), lora.Segment("c", 4, 6),
                    lora.Segment("d", 6, 8)],
    "whole-batch-one-adapter": [lora.Segment("b", 0, 8)],
}
WHOLE = {"whole-batch", "whole-batch-one-adapter"}
#: layouts whose rows are gathered into a padded batch (not end to end, or more than two row counts)
PADDED = {"uneven-runs", "mixed-ranks", "gaps-between"}


def _layer(dtype: torch.dtype = torch.float32) -> tuple[lora.MultiLoraLinear, lora.LoraRouter]:
    return build_layer((), dtype)


def _reference(layer: lora.MultiLoraLinear, x: torch.Tensor, segments: list[lora.Segment]) -> torch.Tensor:
    rows = []
    for r in range(x.shape[0]):
        out = layer.base_layer(x[r]).float()
        for seg in segments:
            if seg.start <= r < seg.end:
                a, b = layer.lora_A[seg.adapter_id], layer.lora_B[seg.adapter_id]
                out = out + layer.scaling[seg.adapter_id] * (x[r].float() @ a.T) @ b.T
        rows.append(out.to(x.dtype))
    return torch.stack(rows)


def _decode(layer: lora.MultiLoraLinear, router: lora.LoraRouter, x: torch.Tensor, segments: tuple) -> torch.Tensor:
    with torch.no_grad(), router.route(segments):
        return layer(x)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_rows_update_is_its_own_adapters_plain_formula(layout):
    layer, router = _layer()
    x = torch.randn(8, 1, 12, generator=torch.Generator().manual_seed(2))
    segments = tuple(LAYOUTS[layout])
    ours = _decode(layer, router, x, segments)
    with torch.no_grad():
        expected = _reference(layer, x, list(segments))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    assert layer._decode_cache[2].whole == (layout in WHOLE)
    assert (layer._decode_cache[2].rows is not None) == (layout in PADDED)


def test_a_bfloat16_base_adds_the_fp32_update_in_its_own_dtype():
    layer, router = _layer(torch.bfloat16)
    x = torch.randn(8, 1, 12, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    for layout in ("equal-runs", "uneven-runs", "whole-batch"):
        segments = tuple(LAYOUTS[layout])
        ours = _decode(layer, router, x, segments)
        with torch.no_grad():
            expected = _reference(layer, x, list(segments))
        assert ours.dtype == torch.bfloat16
        torch.testing.assert_close(ours.float(), expected.float(), rtol=2e-2, atol=2e-2)


def test_the_kept_layout_follows_rows_leaving_and_weights_changing():
    layer, router = _layer()
    x = torch.randn(6, 1, 12, generator=torch.Generator().manual_seed(2))
    full = (lora.Segment("a", 0, 2), lora.Segment("b", 2, 4), lora.Segment("d", 4, 6))
    first = _decode(layer, router, x, full)
    torch.testing.assert_close(_decode(layer, router, x, full), first)  # same segments: the kept layout

    fewer = (lora.Segment("a", 0, 2), lora.Segment("b", 2, 3), lora.Segment("d", 3, 5))
    with torch.no_grad():
        torch.testing.assert_close(_decode(layer, router, x[:5], fewer), _reference(layer, x[:5], list(fewer)),
                                   rtol=1e-5, atol=1e-6)
        layer.lora_B["b"].mul_(3.0)
    layer.forget_layout()
    with torch.no_grad():
        torch.testing.assert_close(_decode(layer, router, x, full), _reference(layer, x, list(full)),
                                   rtol=1e-5, atol=1e-6)
    assert not torch.allclose(_decode(layer, router, x, full), first)


def test_weights_changing_outside_the_decode_batch_keep_its_stacked_weights():
    """An optimizer step, load or new snapshot of an adapter that does not decode leaves the
    stacked weights of those that do (no copy of theirs); a change of one that does restacks."""
    layer, router = _layer()
    x = torch.randn(4, 1, 12, generator=torch.Generator().manual_seed(2))
    decoding = (lora.Segment("a", 0, 2), lora.Segment("b", 2, 4))
    before = _decode(layer, router, x, decoding)
    stacked, kept = layer._stacked, layer._decode_cache
    with torch.no_grad():
        layer.lora_B["d"].mul_(3.0)
    layer.forget_adapter("d")
    layer.add_adapter("e", 2, 4.0, torch.Generator().manual_seed(5))
    layer.remove_adapter("c")
    torch.testing.assert_close(_decode(layer, router, x, decoding), before, rtol=0, atol=0)
    assert layer._stacked is stacked and layer._decode_cache is kept

    with torch.no_grad():
        layer.lora_B["b"].mul_(3.0)
    layer.forget_adapter("b")
    assert layer._stacked is None
    with torch.no_grad():
        torch.testing.assert_close(_decode(layer, router, x, decoding), _reference(layer, x, list(decoding)),
                                   rtol=1e-5, atol=1e-6)
