"""Client stop strings over streamed text (`StopMatcher` in mlx_oss/server/generation.py), alone: the
text before the first stop is released, a tail that could still begin a stop is held back (split at every
point of every stop), a false start is released when it turns out not to be one, and nothing is held
after a stop. The server test (`test_server_paths.py::test_stop_strings_cut_the_answer_only`) covers
which items stop strings apply to."""

from __future__ import annotations

import pytest

from mlx_oss.server.generation import StopMatcher


def stream(stops: tuple[str, ...], deltas: list[str]) -> tuple[str, bool, list[str]]:
    """-> (all text released, whether it stopped, what each feed released)."""
    m = StopMatcher(stops)
    out: list[str] = []
    for d in deltas:
        text, hit = m.feed(d)
        out.append(text)
        if hit:
            assert m.flush() == ""  # nothing is held after a stop
            return "".join(out), True, out
    out.append(m.flush())
    return "".join(out), False, out


@pytest.mark.parametrize("stop", ["END", "ABCD", "</answer>", "\n\n", "x"])
def test_a_stop_split_at_any_point_is_caught_and_none_of_it_is_released(stop):
    text = f"before {stop} after"
    for cut in range(len(text) + 1):
        for second in range(cut, len(text) + 1):
            got, hit, _ = stream((stop,), [text[:cut], text[cut:second], text[second:]])
            assert (got, hit) == ("before ", True), (cut, second)


def test_the_first_occurrence_stops_even_within_one_delta():
    assert stream(("END",), ["aENDbENDc"])[:2] == ("a", True)
    assert stream(("B", "A"), ["xxAyyB"])[:2] == ("xx", True)  # the earliest of several stops


def test_a_false_start_is_released_once_it_cannot_be_a_stop():
    got, hit, parts = stream(("ABCD",), ["xAB", "C", "x", "y"])
    assert (got, hit) == ("xABCxy", False)
    assert parts[:3] == ["x", "", "ABCx"]  # held while it could still be "ABCD"
    got, hit, parts = stream(("END",), ["xEN"])
    assert parts == ["x", "EN"] and not hit  # at the end of the answer the held text comes out


def test_no_stops_releases_everything_at_once():
    assert stream((), ["ab", "END", "c"]) == ("abENDc", False, ["ab", "END", "c", ""])
