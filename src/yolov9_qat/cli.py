"""The ``yolov9-qat`` command line: one entry point, one sub-command per step of the record.

Flag names follow the upstream YOLOv9 scripts. A user-caused error ends in one line on stderr and
exit status 2; everything that produces figures also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from yolov9_qat import __version__
from yolov9_qat.errors import UserError

log = logging.getLogger("yolov9_qat")

Handler = Callable[[argparse.Namespace], int | None]
_COMMANDS: dict[str, Handler] = {}


def _command(
    sub: argparse._SubParsersAction, name: str, help: str
) -> Callable[[Handler], argparse.ArgumentParser]:
    def register(fn: Handler) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _COMMANDS[name] = fn
        p.set_defaults(_command=name)
        return p

    return register


def _json_out(args: argparse.Namespace, obj: Any, run_file: Path | None = None) -> None:
    """Write ``obj`` as JSON to the run folder's file and to ``--json-out`` when given."""
    from yolov9_qat.utils.files import atomic_write_json

    if run_file is not None:
        atomic_write_json(run_file, obj)
    if getattr(args, "json_out", None):
        atomic_write_json(args.json_out, obj)


# --- synth -----------------------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    from yolov9_qat.data.synth import generate

    data_yaml = generate(args.out, seed=args.seed, n_train=args.train, n_val=args.val, imgsz=args.imgsz)
    print(f"synthetic data set: {data_yaml}")
    return 0


# --- reparameterize ------------------------------------------------------------------------------
def cmd_reparameterize(args: argparse.Namespace) -> int:
    from yolov9_qat.models.checkpoint import load, save
    from yolov9_qat.models.reparam import reparameterize

    ck = load(args.weights)
    converted = reparameterize(ck.model, args.cfg)
    meta = {**ck.meta, "reparameterized_from": str(args.weights), "source_cfg": ck.model.cfg_name}
    out = (
        Path(args.out)
        if args.out
        else Path(args.weights).with_name(Path(args.weights).stem + "-converted.pt")
    )
    save(converted, out, meta=meta)
    before, after = ck.model.info()["params"], converted.info()["params"]
    print(
        f"{args.weights} ({ck.model.cfg_name}, {before:,} params) -> {out} ({converted.cfg_name}, {after:,} params)"
    )
    return 0


# --- info ----------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from yolov9_qat.models.checkpoint import load
    from yolov9_qat.models.yolo import DetectionModel

    if args.weights:
        model = load(args.weights).model
    else:
        model = DetectionModel(args.cfg, nc=args.nc, activation=args.activation)
    if args.fuse:
        model.fuse()
    info = model.info()
    if args.verbose:
        for layer in model.model:
            print(f"{layer.i:>3} {layer.f!s:>20} {layer.type:<14} {layer.np:>10,}")
    print(json.dumps(info))
    _json_out(args, info)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yolov9-qat",
        description="YOLOv9 / GELAN: train, reparameterize, quantize (QAT), export, build and benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = _command(sub, "synth", "write the deterministic synthetic detection data set")(cmd_synth)
    p.add_argument("--out", required=True, help="output folder (gets data.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=1500, help="number of training images")
    p.add_argument("--val", type=int, default=300, help="number of validation images")
    p.add_argument("--imgsz", type=int, default=160, help="image side in pixels")

    p = _command(sub, "reparameterize", "YOLOv9 (dual head) -> GELAN converted model")(cmd_reparameterize)
    p.add_argument("--weights", required=True, help="YOLOv9 checkpoint (upstream or yolov9-qat)")
    p.add_argument("--cfg", required=True, help="GELAN config name (gelan-c) or YAML path")
    p.add_argument("--out", default="", help="output checkpoint (default: <weights>-converted.pt)")

    p = _command(sub, "info", "model summary: layers, parameters, activation")(cmd_info)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cfg", help="config name or YAML path")
    src.add_argument("--weights", help="checkpoint")
    p.add_argument("--nc", type=int, default=None, help="number of classes (with --cfg)")
    p.add_argument("--activation", default=None, help="SiLU, ReLU, FReLU, Mish or AconC (with --cfg)")
    p.add_argument("--fuse", action="store_true", help="fold Conv+BN and RepConvN branches first")
    p.add_argument("--json-out", default=None, help="also write the summary here")
    p.add_argument("--verbose", action="store_true", help="list the layers")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(message)s",
    )
    name = getattr(args, "_command", None)
    if name is None:
        parser.print_help()
        return 0
    try:
        return int(_COMMANDS[name](args) or 0)
    except UserError as e:
        print(f"yolov9-qat {name}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"yolov9-qat {name}: interrupted", file=sys.stderr)
        return 130
