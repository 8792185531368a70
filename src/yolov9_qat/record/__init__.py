"""The published record: expected figures per device (``baselines/record/*.yaml``) and its tables."""

from yolov9_qat.record.baseline import (
    DEFAULT_TOLERANCES,
    Baseline,
    Figure,
    Tolerance,
    baseline_for_device,
    compare,
    find_baseline_dir,
    load_baseline,
    validate,
    write_device_baseline,
)
from yolov9_qat.record.tables import deltas_from_accuracy, render_record

__all__ = [
    "DEFAULT_TOLERANCES",
    "Baseline",
    "Figure",
    "Tolerance",
    "baseline_for_device",
    "compare",
    "deltas_from_accuracy",
    "find_baseline_dir",
    "load_baseline",
    "render_record",
    "validate",
    "write_device_baseline",
]
