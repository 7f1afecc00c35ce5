"""The fuzz targets under Hypothesis, bounded: random bytes and mutations of the seed
corpus; the only outcomes allowed are a return or the parser's documented error."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import TARGETS, VALID, seed_files, seeds

EXAMPLES = {"archive": 40}  # each pushes a source: slower


def mutations(name: str):
    """Seeds with bytes flipped, cut or spliced, and plain random bytes."""
    corpus = seeds(name) or [b""]
    flip = st.tuples(st.sampled_from(corpus), st.lists(st.tuples(
        st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8), st.integers(0, 1 << 20))

    def apply(args) -> bytes:
        seed, edits, cut = args
        data = bytearray(seed)
        for pos, value in edits:
            if data:
                data[pos % len(data)] = value
        return bytes(data[:cut % (len(data) + 1)] if cut % 3 == 0 else data)

    return st.one_of(flip.map(apply), st.binary(max_size=4096))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_the_seed_corpus_parses(name):
    """Every seed passes its target, and every seed but a past crash is still a valid
    input (``VALID``): the targets let the parsers' own errors go, so a corpus the parsers
    now refuse would pass through them and test nothing past their first check."""
    corpus = seed_files(name)
    assert any(not f.startswith("crash-") for f, _ in corpus), f"fuzz/corpus/{name}/ is empty"
    for fname, data in corpus:
        TARGETS[name](data)
        if not fname.startswith("crash-"):
            try:
                VALID[name](data)
            except Exception as exc:  # noqa: BLE001 - named in the failure
                pytest.fail(f"fuzz/corpus/{name}/{fname} is no longer a valid input: {exc!r}")


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_random_and_mutated_input_only_raises_documented_errors(name):
    @settings(max_examples=EXAMPLES.get(name, 300), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutations(name))
    def run(data: bytes) -> None:
        TARGETS[name](data)

    run()
