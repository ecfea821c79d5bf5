"""The condition embedder with further input slices: their streams appended, absent ones silent."""

import torch

from tests.model.conftest import condition_inputs


def test_further_slices_append_their_streams_and_absent_ones_are_zero(tiny_model):
    embedder = tiny_model.condition_embedder.eval()
    first = condition_inputs(batch=2, size=32)
    second = condition_inputs(batch=2, size=32, seed=1)
    with torch.no_grad():
        alone = embedder(**first)
        crop_only = {f"extra_{k}": torch.stack([second[k], torch.zeros_like(second[k])], 1)
                     for k in ("image", "mask", "pointmap")}
        both = embedder(**first, **crop_only, extra_present=torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        none_present = embedder(**first, **crop_only, extra_present=torch.zeros(2, 2))
        second_alone = embedder(**second)
    per_slice = alone.shape[1]
    crop_tokens = sum(t.shape[1] for t in [embedder._stream(second[k], m, 0)
                                           for m, k in enumerate(("image", "mask", "pointmap"))])
    assert both.shape[1] == per_slice + crop_tokens  # one further slice used (the padded second is dropped)
    assert torch.equal(both[:, :per_slice], alone)  # the first slice's tokens as without further slices
    # sample 0's further slice: the crop streams that slice gives alone (same modules and position embedding)
    crop_of_second = torch.cat([second_alone[:, :0]] + [
        second_alone[:, start:start + n] for start, n in _crop_spans(embedder, second)], 1)
    assert torch.allclose(both[0, per_slice:], crop_of_second[0], atol=1e-5)
    assert both[1, per_slice:].abs().max() == 0  # sample 1 has no further slice: zero tokens
    assert torch.equal(none_present, alone)  # nothing present: nothing appended


def _crop_spans(embedder, inputs):
    """(start, count) of the crop streams' tokens in the first slice's token sequence."""
    from sam3d_med.model.condition import STREAMS

    spans, start = [], 0
    for module, name, group in STREAMS:
        n = embedder._stream(inputs[name][:1], module, group).shape[1]
        if group == 0:
            spans.append((start, n))
        start += n
    return spans
