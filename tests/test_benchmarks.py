"""benchmarks/models.py: the timing harness itself (not timings: those are never asserted)."""

from __future__ import annotations

import repo_scripts
import torch
import torch.nn as nn


def _load():
    return repo_scripts.load("benchmarks/models.py")


def test_run_case_counts_the_flops_of_a_training_step():
    bench = _load()
    make = lambda: nn.Conv3d(1, 2, 3, padding=1, bias=False)  # noqa: E731
    shape = (1, 1, 8, 8, 8)
    record = bench.run_case("smp3d", make, shape, torch.device("cpu"), None, False, True, False, iters=1, warmup=0)
    forward = 2 * 8**3 * 2 * 27  # multiply-adds of the convolution, counted as 2 FLOPs each
    # forward + grad of the weight (the input needs none): twice the forward
    assert record["flops"] == 2 * forward and record["ms"] > 0 and record["mode"] == "train"
    infer = bench.run_case("smp3d", make, shape, torch.device("cpu"), None, True, False, False, iters=1, warmup=0)
    assert infer["mode"] == "infer" and infer["channels_last"] is True


def test_markdown_pairs_libraries_and_gives_the_ratio():
    bench = _load()
    common = dict(model="Unet(x)", mode="train", dtype="float32", channels_last=False, compiled=False, gflop=1.0)
    table = bench.markdown([dict(common, library="smp3d", ms=50.0), dict(common, library="smp-3d", ms=100.0)])
    assert "| Unet(x) | train | float32 | False | False | 50.0 | 100.0 | 2.00 | 1.0, 1.0 |" in table


def test_libraries_take_turns_one_alive_at_a_time():
    bench = _load()
    events = []

    def preparer(name):
        def prepare():
            events.append(f"build {name}")
            return bench.Case(name, {"library": name, "compiled": False}, nn.Identity(), lambda: events.append(name))

        return prepare

    rows = bench.measure({"a": preparer("a"), "b": preparer("b")}, torch.device("cpu"), iters=4, rounds=2)
    # (finish_case's FLOP count runs each step once more, in the last round)
    assert events == ["build a", "a", "a", "build b", "b", "b", "build a", "a", "a", "a", "build b", "b", "b", "b"]
    assert [r["library"] for r in rows] == ["a", "b"] and all(r["ms"] >= 0 for r in rows)
