"""Recorded sequences for stable_reinforce: retention, session ownership, and provenance checks."""

from __future__ import annotations

import pytest
import torch

from loraplane.core import errors
from loraplane.runtime import stability
from loraplane.runtime.stability import Provenance, Span

SID = "s-aaa:sample:0:1:0"
PROMPT = [5, 6, 7]
SAMPLED = [8, 9]
SAMPLED_LP = [-0.5, -1.5]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _records(clock: Clock | None = None) -> stability.SequenceRecords:
    records = stability.SequenceRecords(retention_s=100.0, clock=clock or Clock())
    records.record([SID], PROMPT, [(SAMPLED, SAMPLED_LP)])
    return records


def _datum_provenance(sid: str = SID) -> Provenance:
    # full sequence 5 6 7 8 9: input 5 6 7 8, targets 6 7 8 9
    return Provenance(
        model_input=(Span("prompt", sid, 0, 3), Span("sampled", sid, 0, 1)),
        targets=(Span("prompt", sid, 1, 2), Span("sampled", sid, 0, 2)),
    )


TOKENS = torch.tensor([5, 6, 7, 8])
TARGETS = torch.tensor([6, 7, 8, 9])
ADV = torch.tensor([0.0, 0.0, 1.0, 1.0])


def test_resolve_gives_the_recorded_sampler_logprobs_on_sampled_targets_only():
    lp, mask = stability.resolve(TOKENS, TARGETS, ADV, _datum_provenance(), _records(), "s-aaa", "data[0]")
    torch.testing.assert_close(lp, torch.tensor([0.0, 0.0, -0.5, -1.5]))
    torch.testing.assert_close(mask, torch.tensor([0.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize(
    ("tokens", "targets", "adv", "provenance", "session", "field", "words"),
    [
        (TOKENS, TARGETS, ADV, None, "s-aaa", "data[0].loss_fn_input_spans", "needs provenance"),
        (TOKENS, TARGETS, ADV, _datum_provenance(), "s-bbb", "data[0].model_input_spans[0].sequence_id",
         "no recorded sequence of this session"),
        (TOKENS, TARGETS, ADV, _datum_provenance("s-aaa:sample:0:9:0"), "s-aaa",
         "data[0].model_input_spans[0].sequence_id", "record_stability_info=True"),
        (TOKENS, TARGETS, torch.tensor([1.0, 0.0, 1.0, 1.0]), _datum_provenance(), "s-aaa",
         "data[0].loss_fn_inputs.advantages", "advantages[0]"),
        (torch.tensor([5, 6, 4, 8]), TARGETS, ADV, _datum_provenance(), "s-aaa", "data[0].model_input_spans[0]",
         "position 2 holds token 4"),
        (TOKENS, torch.tensor([6, 7, 8, 7]), ADV, _datum_provenance(), "s-aaa", "data[0].loss_fn_input_spans[1]",
         "position 3 holds token 7, but sampled position 1"),
        (TOKENS, TARGETS, ADV, Provenance(model_input=(Span("prompt", SID, 0, 4),), targets=_datum_provenance().targets),
         "s-aaa", "data[0].model_input_spans[0]", "has 3 prompt tokens"),
        (TOKENS, TARGETS, ADV, Provenance(model_input=(Span("prompt", SID, 0, 3),), targets=_datum_provenance().targets),
         "s-aaa", "data[0].model_input_spans", "sum to 3"),
    ],
)
def test_bad_provenance_is_refused_naming_the_field(tokens, targets, adv, provenance, session, field, words):
    with pytest.raises(errors.InvalidInput) as info:
        stability.resolve(tokens, targets, adv, provenance, _records(), session, "data[0]")
    assert info.value.field == field
    assert words in str(info.value)


def test_a_long_datum_resolves_span_by_span_with_the_sampled_logprobs_in_place():
    records = stability.SequenceRecords(retention_s=100.0, clock=Clock())
    prompt, sampled = list(range(3, 40003)), list(range(5, 25005))
    logprobs = [-(i % 7) / 8 for i in range(len(sampled))]
    records.record([SID], prompt, [(sampled, logprobs)])
    full = prompt + sampled
    provenance = Provenance(
        model_input=(Span("prompt", SID, 0, len(prompt)), Span("sampled", SID, 0, len(sampled) - 1)),
        targets=(Span("prompt", SID, 1, len(prompt) - 1), Span("sampled", SID, 0, len(sampled))),
    )
    advantages = torch.zeros(len(full) - 1)
    advantages[len(prompt) - 1:] = 1.0
    lp, mask = stability.resolve(torch.tensor(full[:-1]), torch.tensor(full[1:]), advantages, provenance, records,
                                 "s-aaa", "data[0]")
    expected = torch.zeros(len(full) - 1)
    expected[len(prompt) - 1:] = torch.tensor(logprobs)
    assert torch.equal(lp, expected)
    assert torch.equal(mask, (advantages != 0).float())


def test_records_expire_after_the_retention_and_each_use_restarts_it():
    clock = Clock()
    records = _records(clock)
    clock.now = 90.0
    records.lookup(SID, "s-aaa", "f")  # a training request uses it: 100 s more from here
    clock.now = 180.0
    assert records.lookup(SID, "s-aaa", "f").tokens == SAMPLED
    clock.now = 281.0
    with pytest.raises(errors.InvalidInput):
        records.lookup(SID, "s-aaa", "f")


def test_expired_records_are_dropped_when_new_ones_arrive():
    clock = Clock()
    records = _records(clock)
    clock.now = 150.0
    records.record(["s-aaa:sample:0:2:0"], PROMPT, [(SAMPLED, SAMPLED_LP)])
    assert len(records) == 1


def test_record_needs_one_id_per_sequence():
    with pytest.raises(errors.InvalidInput):
        stability.SequenceRecords().record([SID], PROMPT, [])


def test_session_of_a_sequence_is_its_first_part():
    assert stability.session_of("s-abc:sample:3:7:1") == "s-abc"


class Wall(Clock):
    pass


def test_records_kept_in_the_store_are_found_by_another_runtime_and_expire_there_too(tmp_path):
    folder = f"file://{tmp_path}/sequences/s-aaa"
    wall = Wall()
    sampler = stability.SequenceRecords(retention_s=2400.0, clock=Clock(), wall=wall)
    sampler.record([SID, "s-aaa:sample:0:1:1"], PROMPT, [(SAMPLED, SAMPLED_LP), ([8], [-0.25])], persist_to=folder)
    assert (tmp_path / "sequences" / "s-aaa" / "s-aaa:sample:0:1.json").exists()
    trainer = stability.SequenceRecords(retention_s=2400.0, clock=Clock(), wall=wall)
    with pytest.raises(errors.InvalidInput):
        trainer.lookup(SID, "s-aaa", "f")  # not in its memory, and no folder named
    assert trainer.lookup(SID, "s-aaa", "f", folder).logprobs == SAMPLED_LP
    assert trainer.lookup("s-aaa:sample:0:1:1", "s-aaa", "f").tokens == [8]  # the whole request came along
    with pytest.raises(errors.InvalidInput):
        stability.SequenceRecords(wall=wall).lookup(SID, "s-bbb", "f", folder)
    late = stability.SequenceRecords(retention_s=2400.0, clock=Clock(), wall=wall)
    wall.now = 2400.0
    with pytest.raises(errors.InvalidInput):
        late.lookup(SID, "s-aaa", "f", folder)


def test_uses_are_written_back_to_the_store_at_most_hourly_share_of_the_retention(tmp_path):
    import json

    folder = f"file://{tmp_path}"
    wall = Wall()
    records = stability.SequenceRecords(retention_s=2400.0, clock=Clock(), wall=wall)
    records.record([SID], PROMPT, [(SAMPLED, SAMPLED_LP)], persist_to=folder)
    stored = tmp_path / "s-aaa:sample:0:1.json"
    wall.now = 50.0  # under 2400 / 24 = 100 s: not written back
    records.lookup(SID, "s-aaa", "f", folder)
    assert json.loads(stored.read_text())["last_used"] == 0.0
    wall.now = 150.0
    records.lookup(SID, "s-aaa", "f", folder)
    assert json.loads(stored.read_text())["last_used"] == 150.0
    wall.now = 2500.0  # past the retention of the sampling, within that of the last use
    assert stability.SequenceRecords(retention_s=2400.0, clock=Clock(), wall=wall).lookup(
        SID, "s-aaa", "f", folder).tokens == SAMPLED
