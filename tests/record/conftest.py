"""Record tests: one parametrized case per documented figure; the activations come from ``--activations``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "act" in metafunc.fixturenames:
        acts = [a for a in metafunc.config.getoption("--activations").split(",") if a]
        metafunc.parametrize("act", acts)


@pytest.fixture(scope="session")
def cpu_record(cpu_pipeline) -> Any:
    """``record(act)``: the test profile's record row of one activation (built once, then cached)."""
    memo: dict[str, dict[str, Any]] = {}

    def record(act: str) -> dict[str, Any]:
        if act not in memo:
            memo[act] = cpu_pipeline.activation_record(act)
        return memo[act]

    return record


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup`` all cases of one activation run on one worker, so the
    workers build different activations' artefacts in parallel instead of waiting on one lock. Only this
    folder's cases: the hook sees the whole session's items, and other modules group their own. (xdist
    hands out the groups with the most cases first, so the workers start on these long builds.)"""
    here = Path(__file__).parent
    for item in items:
        if here not in item.path.parents:
            continue
        act = getattr(getattr(item, "callspec", None), "params", {}).get("act")
        if act is not None:
            item.add_marker(pytest.mark.xdist_group(f"record-{act}"))
