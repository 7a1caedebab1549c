"""loader/parallel.py: units run parents first, `workers` at a time, the heaviest chain first,
`alone` units by themselves, units needing a given future (a collection being extracted) after it,
nothing started after a failure."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from loader.parallel import in_dependency_order

# name -> (parents, weight); listed parents first, as the load order lists tables.
UNITS = {
    "a": (set(), 0), "b": (set(), 0), "light": ({"a"}, 1), "heavy": ({"b"}, 5), "heavy_child": ({"heavy"}, 5),
    "both": ({"light", "heavy"}, 1),
}


class Recorder:
    def __init__(self, fail: frozenset[str] = frozenset()):
        self.lock = threading.Lock()
        self.events: list[tuple[str, str]] = []
        self.fail = fail

    def __call__(self, name: str) -> str:
        with self.lock:
            self.events.append(("start", name))
        time.sleep(0.05)
        with self.lock:
            self.events.append(("end", name))
        if name in self.fail:
            raise ValueError(f"{name} failed")
        return name.upper()

    def started(self) -> list[str]:
        return [name for kind, name in self.events if kind == "start"]

    def most_at_once(self) -> int:
        running, most = 0, 0
        for kind, _ in self.events:
            running += 1 if kind == "start" else -1
            most = max(most, running)
        return most

    def overlapping(self, name: str) -> set[str]:
        """Units running while `name` ran."""
        start, end = self.events.index(("start", name)), self.events.index(("end", name))
        running = {n for kind, n in self.events[:start] if kind == "start"} - {n for kind, n in self.events[:start] if kind == "end"}
        return running | {n for kind, n in self.events[start + 1:end] if kind == "start"}


def run(recorder: Recorder, workers: int = 2, alone: set[str] = frozenset(), weighted: bool = True,
        abort: Future | None = None) -> list[str]:
    return in_dependency_order(
        list(UNITS), workers, recorder, thread_name="test", names=lambda u: {u}, needs=lambda u: UNITS[u][0],
        alone=lambda u: u in alone, weight=(lambda u: UNITS[u][1]) if weighted else (lambda u: 0.0), abort=abort)


def test_results_in_unit_order_and_parents_done_before_children():
    recorder = Recorder()
    assert run(recorder) == [u.upper() for u in UNITS]
    for unit, (parents, _) in UNITS.items():
        for parent in parents:
            assert recorder.events.index(("end", parent)) < recorder.events.index(("start", unit))


def test_the_heaviest_chain_starts_first_and_list_order_breaks_ties():
    recorder = Recorder()
    run(recorder, workers=1)
    assert recorder.started() == ["b", "heavy", "heavy_child", "a", "light", "both"]
    unweighted = Recorder()
    run(unweighted, workers=1, weighted=False)
    assert unweighted.started() == ["a", "b", "light", "heavy", "heavy_child", "both"]


def test_workers_run_at_the_same_time_and_alone_units_by_themselves():
    recorder = Recorder()
    run(recorder, workers=2)
    assert recorder.most_at_once() == 2
    lonely = Recorder()
    run(lonely, workers=2, alone={"light"})
    assert lonely.overlapping("light") == set()


def test_nothing_starts_after_a_failure_and_the_first_failure_is_raised():
    recorder = Recorder(fail={"b"})
    with pytest.raises(ValueError, match="b failed"):
        run(recorder, workers=1)
    assert recorder.started() == ["b"]
    both = Recorder(fail={"a", "b"})  # started together, b first
    with pytest.raises(ValueError, match="a failed"):
        run(both, workers=2)
    assert sorted(both.started()) == ["a", "b"]


def run_given(recorder: Recorder, given: dict[str, Future], workers: int = 2) -> list[str]:
    """UNITS where `a` also needs the outside name "source" (a collection being extracted)."""
    return in_dependency_order(
        list(UNITS), workers, recorder, thread_name="test", names=lambda u: {u},
        needs=lambda u: UNITS[u][0] | ({"source"} if u == "a" else set()), alone=lambda u: False, given=given)


def test_a_unit_waits_for_the_given_futures_it_needs():
    recorder, source = Recorder(), Future()
    threading.Timer(0.3, source.set_result, ["staged"]).start()
    assert run_given(recorder, {"source": source}) == [u.upper() for u in UNITS]
    started = recorder.started()
    # b's chain ran while the source was outstanding; a and its dependants only after it.
    assert started[:3] == ["b", "heavy", "heavy_child"]
    assert started.index("a") < started.index("light") < started.index("both")


def test_a_failed_given_future_stops_new_units_and_its_error_is_raised():
    recorder, source = Recorder(), Future()
    threading.Timer(0.08, source.set_exception, [ConnectionError("extract failed")]).start()
    with pytest.raises(ConnectionError, match="extract failed"):
        run_given(recorder, {"source": source}, workers=1)
    assert "a" not in recorder.started() and len(recorder.started()) < len(UNITS) - 1


def test_an_abort_that_fails_stops_new_units_and_its_error_is_raised():
    """`abort` is work alongside (the load) that the units feed: its failure stops them early."""
    abort = Future()

    class Aborting(Recorder):
        def __call__(self, name: str) -> str:
            if name == "heavy":
                abort.set_exception(ConnectionError("load failed"))
            return super().__call__(name)

    recorder = Aborting()
    with pytest.raises(ConnectionError, match="load failed"):
        run(recorder, workers=1, abort=abort)
    assert recorder.started() == ["b", "heavy"]  # heavy ran to its end; heavy_child and the rest never started
    finished = Future()
    finished.set_result(None)
    assert run(Recorder(), abort=finished) == [u.upper() for u in UNITS]
