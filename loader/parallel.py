"""Running units of tables (a transform group, a load transaction) several at a time, each once
the units of the tables it references are done."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

Unit = TypeVar("Unit")
Result = TypeVar("Result")


def in_dependency_order(units: list[Unit], workers: int, run: Callable[[Unit], Result],
                        names: Callable[[Unit], set[Hashable]], needs: Callable[[Unit], set[Hashable]],
                        alone: Callable[[Unit], bool], thread_name: str,
                        weight: Callable[[Unit], float] = lambda unit: 0.0,
                        given: Mapping[Hashable, Future] | None = None, abort: Future | None = None) -> list[Result]:
    """Run `units` (listed parents first) `workers` at a time, each once the units holding the
    names it needs are done and the futures `given` for the other names it needs (work done
    elsewhere, such as the extract of a collection) have completed; a unit for which `alone` is
    true runs by itself. Of the units ready to start, the one heading the heaviest chain of
    dependants (by `weight`) starts first, then the first listed: the longest path starts early.
    Once a unit, a given future or `abort` (work running alongside that these units feed) fails,
    no other unit starts, and the first failure, in unit order (a given future's or abort's first),
    is raised. Returns the results in unit order."""
    given = given or {}
    owner = {name: i for i, unit in enumerate(units) for name in names(unit)}
    parents = [{owner[n] for n in needs(unit) - names(unit) if n in owner} for unit in units]
    outside = [{given[n] for n in needs(unit) if n in given and n not in owner} for unit in units]
    chain = [0.0] * len(units)
    for i in reversed(range(len(units))):  # children are listed after their parents
        chain[i] = weight(units[i]) + max((chain[j] for j in range(i + 1, len(units)) if i in parents[j]), default=0.0)
    waiting, done, failures = set(range(len(units))), set(), {}
    running: dict[Future, int] = {}
    futures: dict[int, Future] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name) as pool:
        while running or (waiting and not failures):
            failures |= {-1: f.exception() for i in waiting for f in outside[i] if f.done() and f.exception()}
            if abort is not None and abort.done() and abort.exception() and waiting:
                failures.setdefault(-1, abort.exception())
            ready = [] if failures else sorted(
                (i for i in waiting if parents[i] <= done and all(f.done() for f in outside[i])), key=lambda i: (-chain[i], i))
            for i in ready:
                if len(running) == workers or (running and (alone(units[i]) or alone(units[next(iter(running.values()))]))):
                    break
                waiting.discard(i)
                futures[i] = pool.submit(run, units[i])
                running[futures[i]] = i
            awaited = set() if failures else {f for i in waiting for f in outside[i] if not f.done()}
            if waiting and not failures and abort is not None and not abort.done():
                awaited.add(abort)  # to stop starting units as soon as it fails
            if not running and not awaited:
                if failures:
                    break
                raise RuntimeError("units wait for each other")  # unreachable with units listed parents first
            finished, _ = wait(set(running) | awaited, return_when=FIRST_COMPLETED)
            for future in finished & set(running):
                i = running.pop(future)
                if future.exception() is not None:
                    failures[i] = future.exception()
                done.add(i)
    if failures:
        raise failures[min(failures)]
    return [futures[i].result() for i in range(len(units))]
