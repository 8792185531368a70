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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup`` all cases of one activation run on one worker, so the
    workers build different activations' artefacts in parallel instead of waiting on one lock. Only this
    folder's cases: the hook sees the whole session's items, and other modules group their own. The
    grouped cases go first: xdist hands out groups in this order, so the workers start on the long
    builds and the many short tests fill the tail (the longest-first rule)."""
    here = Path(__file__).parent
    grouped = []
    for item in items:
        if here not in item.path.parents:
            continue
        act = getattr(getattr(item, "callspec", None), "params", {}).get("act")
        if act is not None:
            item.add_marker(pytest.mark.xdist_group(f"record-{act}"))
            grouped.append(item)
    ids = {id(it) for it in grouped}
    items[:] = grouped + [it for it in items if id(it) not in ids]
