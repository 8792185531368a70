"""Where the Q/DQ quantizers go and which of them share one scale: TensorRT's explicit-quantization
rules for the GELAN block set, written as data.

TensorRT runs a layer in INT8 only where the ONNX graph says so with QuantizeLinear/DequantizeLinear
(Q/DQ) pairs, and it runs it *fast* only when the pairs around it agree:

* every convolution has Q/DQ on its input (per-tensor, 8 bit, symmetric) and on its weight
  (per output channel, axis 0);
* a tensor is quantized once: every quantizer that reads the same tensor uses one scale, so the
  producer can write INT8 once;
* Concat, MaxPool and nearest Upsample commute with quantization: their inputs and their output
  carry one scale, so TensorRT moves the Q across them and runs them in INT8; AvgPool does not
  commute with rounding, so its output is re-quantized with a scale of its own;
* both inputs of a residual Add share one scale, so the Add fuses into the convolution before it;
* the outputs of weighted layers are not quantized (the next layer's input quantizer does it).

A graph that breaks these gets reformat (re-quantization) layers and INT8 no faster than FP16.

Three tables say it all:

* :data:`SITES` — which module types get quantizers, and their names;
* :data:`RULES` — per block type, the quantizers that read the block's input tensor (``entry``,
  tied: one tensor, one scale) and further groups that must share a scale (``ties``);
* :data:`MODEL_RULES` — the ties across layers, from the model YAML's wiring.

A *site* is one place a quantizer is used: ``(module path, quantizer attribute)``. Tied sites hold
literally the same ``TensorQuantizer`` object once :func:`yolov9_qat.quant.quantize.prepare_qat_model`
has run, so calibration sees all of their tensors in one histogram and yields one ``amax``.
:func:`plan` turns the tables into the groups of sites for a model; :func:`describe` lists the
quantizers of a model with their group ids.

Two placements (:data:`PLACEMENTS`):

* ``trt`` (the default, the record's): the rules above, for TensorRT;
* ``ort``: for ONNX Runtime on the CPU, whose integer kernels (QLinearConv, QLinearSigmoid,
  QLinearMul, QLinearAdd, QLinearAveragePool) need a Q right after each op. On top of the ``trt``
  quantizers, :data:`ORT_SITES` quantizes every conv block's pre-activation output, SiLU's sigmoid
  and the block's output (its *exit*), and the residual Add's output. Each exit is the one quantizer
  of its values: :func:`flow_ties` traces a forward pass and ties an exit with every quantizer that
  reads those values unchanged (through :data:`PASSTHROUGH` ops: split, concat, max-pool, nearest
  upsample, ReLU), so the exported graph quantizes each tensor once and ONNX Runtime keeps it in
  uint8 from one integer op to the next. QAT then trains with exactly the roundings ORT will do.

Reference rules: ``find_quantizer_pairs`` and ``apply_custom_rules_to_quantizer`` in
levipereira/yolov9-qat ``models/quantize_rules.py`` / ``models/quantize.py`` (concat consumers,
max-pool, residual add), and NVIDIA's TensorRT developer guide, "Explicit quantization".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from torch import nn

from yolov9_qat.errors import UserError
from yolov9_qat.models import blocks
from yolov9_qat.models.heads import DFL, DDetect, DualDDetect
from yolov9_qat.quant.options import DEFAULT_PLACEMENT, PLACEMENTS

INPUT = "input_quantizer"
WEIGHT = "weight_quantizer"

#: 8-bit, symmetric (zero point 0), one scale per tensor: activations
INPUT_FORMAT: dict[str, Any] = {"num_bits": 8, "axis": None, "unsigned": False}
#: 8-bit, symmetric, one scale per output channel: convolution weights
WEIGHT_FORMAT: dict[str, Any] = {"num_bits": 8, "axis": 0, "unsigned": False}

#: module type (see :func:`rule_key`) -> the quantizers its quantized twin carries
SITES: dict[str, tuple[str, ...]] = {
    # every convolution: the blocks' convs, the head's 1x1 output convs, FReLU's depthwise conv
    "nn.Conv2d": (INPUT, WEIGHT),
    # SPPELAN's max-pools (SP.m)
    "nn.MaxPool2d": (INPUT,),
    "nn.Upsample": (INPUT,),
    # one quantizer applied to every input of the model-level Concat layer
    "Concat": (INPUT,),
    # both inputs of the residual add: x (shortcut) and cv2(cv1(x)) (branch)
    "RepNBottleneck+add": ("shortcut_quantizer", "branch_quantizer"),
    # the input of the 2x2 average pool before the strided conv
    "AConv": ("pool_quantizer",),
    # the average pool's input, and the 3x3/s2 max-pool's input in the second half
    "ADown": ("pool_quantizer", "maxpool_quantizer"),
}

#: module types that stay float, with the reason
FLOAT: dict[str, str] = {
    "DFL": "the distribution integral (softmax + a fixed 1x1 conv), like the rest of the box decode "
    "(anchors, sigmoid), runs after the head's last DQ in float: quantizing it would only add "
    "precision boundaries to a tiny op",
}


#: conv block output before the activation (ORT's QLinearConv output)
PREACT = "preact_quantizer"
#: SiLU's sigmoid output (QLinearSigmoid), only where the block's activation is SiLU
GATE = "gate_quantizer"
#: the block's output (QLinearMul's for SiLU), tied with the quantizers that read it
EXIT = "exit_quantizer"
#: the residual Add's output (QLinearAdd)
SUM = "sum_quantizer"

#: the ``ort`` placement's quantizers on top of :data:`SITES` (conv blocks: BN folded, RepConvN fused)
ORT_SITES: dict[str, tuple[str, ...]] = {
    "Conv": (PREACT, GATE, EXIT),
    "RepConvN": (PREACT, GATE, EXIT),
    "RepNBottleneck+add": (SUM,),
}

#: torch functions whose outputs are values of their inputs (selected, copied, or ReLU'd on a
#: symmetric grid): a quantizer reading their output reads the values of the quantizer before them
PASSTHROUGH: frozenset[str] = frozenset(
    {"cat", "concat", "chunk", "split", "max_pool2d", "_max_pool2d", "interpolate", "relu"}
)


def check_placement(placement: str) -> str:
    if placement not in PLACEMENTS:
        raise UserError(f"placement {placement!r} is not one of {', '.join(PLACEMENTS)}")
    return placement


def sites_of(module: nn.Module, placement: str = DEFAULT_PLACEMENT) -> tuple[str, ...]:
    """The quantizer attributes ``module`` carries in ``placement``."""
    key = rule_key(module) or ""
    attrs = SITES.get(key, ())
    if placement == "ort":
        extra = ORT_SITES.get(key, ())
        if GATE in extra and not isinstance(getattr(module, "act", None), nn.SiLU):
            extra = tuple(a for a in extra if a != GATE)
        attrs = attrs + extra
    return attrs


@dataclass(frozen=True)
class BlockRule:
    """The Q/DQ rule of one block type.

    References are relative to the block: ``"cv1.conv.input_quantizer"`` is one site;
    ``"cv2:entry"`` is the ``entry`` of the sub-block ``cv2`` (by that block's own rule). A
    reference to a site that does not exist (a skipped layer, an unfused branch) is dropped.
    """

    #: the quantizers that read the block's input tensor (tied: one tensor, one scale)
    entry: tuple[str, ...] = ()
    #: further groups of quantizers that must share one scale
    ties: tuple[tuple[str, ...], ...] = ()
    #: for blocks with several inputs read by different quantizers (the head): the entry of input
    #: ``i``, with ``{i}`` in the references; the block's ``entry`` is then unused
    per_input: tuple[str, ...] = ()
    #: the output carries the input's scale (Concat, nearest Upsample): the input quantizer is tied
    #: with the quantizers that read the output
    passthrough: bool = False
    #: the TensorRT rule behind it
    why: str = ""


RULES: dict[str, BlockRule] = {
    "nn.Conv2d": BlockRule(entry=(INPUT,), why="every conv: input Q/DQ per tensor, weight Q/DQ per channel"),
    "nn.MaxPool2d": BlockRule(entry=(INPUT,)),
    "nn.Sequential": BlockRule(entry=("0:entry",), why="a chain reads its input with its first block"),
    "Conv": BlockRule(entry=("conv.input_quantizer",), why="conv (BN folded) + activation; output float"),
    "RepConvN": BlockRule(
        entry=("conv.input_quantizer", "conv1:entry", "conv2:entry"),
        why="fused: one 3x3 conv; unfused, both branch convs read x (one scale)",
    ),
    "RepNBottleneck": BlockRule(entry=("cv1:entry",), why="no residual: a plain chain"),
    "RepNBottleneck+add": BlockRule(
        entry=("cv1:entry", "shortcut_quantizer"),
        ties=(("shortcut_quantizer", "branch_quantizer"),),
        why="both Add inputs one scale (the Add fuses into cv2); x is also cv1's input: same tensor",
    ),
    "RepNCSP": BlockRule(
        entry=("cv1:entry", "cv2:entry"),
        why="cv1 and cv2 read x; the concat [m(cv1 x), cv2 x] is read only by cv3, whose input Q "
        "TensorRT moves back through the concat",
    ),
    "RepNCSPELAN4": BlockRule(
        entry=("cv1:entry",),
        ties=(("cv4:entry", "cv2:entry", "cv3:entry"),),
        why="concat [y0, y1, cv2(y1), cv3(cv2 y1)] -> cv4: the concat inputs share cv4's input scale, "
        "and y1 (read by cv2) and cv2's output (read by cv3) are concat inputs",
    ),
    "ELAN1": BlockRule(
        entry=("cv1:entry",),
        ties=(("cv4:entry", "cv2:entry", "cv3:entry"),),
        why="as RepNCSPELAN4, with plain convs as cv2 / cv3",
    ),
    "AConv": BlockRule(
        entry=("pool_quantizer",),
        why="DQ -> AvgPool(2x2, s1) -> Q in INT8; the pool's output is re-quantized with cv1's own "
        "scale (averaging does not commute with rounding: with one scale a quarter of its outputs "
        "fall exactly half-way between two levels, and every runtime breaks those ties its own way)",
    ),
    "ADown": BlockRule(
        entry=("pool_quantizer",),
        ties=(("cv1:entry", "maxpool_quantizer", "cv2:entry"),),
        why="avg-pool (re-quantized, as in AConv), split in halves: cv1 reads one half, max-pool then "
        "cv2 the other; the halves are one tensor and max-pool commutes: one scale",
    ),
    "SP": BlockRule(entry=("m:entry",)),
    "SPPELAN": BlockRule(
        entry=("cv1:entry",),
        ties=(("cv5:entry", "cv2:entry", "cv3:entry", "cv4:entry"),),
        why="y0 = cv1 x and the three chained max-pools are the concat inputs read by cv5: the pool "
        "inputs share cv5's input scale (max-pool between Q/DQ of one scale)",
    ),
    "Concat": BlockRule(
        entry=(INPUT,),
        passthrough=True,
        why="concat inputs share one scale with the quantizers after the concat",
    ),
    "nn.Upsample": BlockRule(
        entry=(INPUT,), passthrough=True, why="nearest upsample between Q/DQ of one scale"
    ),
    "DDetect": BlockRule(
        per_input=("cv2.{i}:entry", "cv3.{i}:entry"),
        why="per level, the box and class towers read the same feature map (one scale); the last "
        "1x1 convs are quantized, their outputs and the decode (DFL, anchors, sigmoid) stay float",
    ),
}

#: the ties across the layers of ``model.model``, read from the YAML's ``from`` wiring
MODEL_RULES: tuple[str, ...] = (
    "one tensor, one scale: the entry quantizers of all layers that read the same layer output "
    "(or the image) are tied",
    "pass-through layers (Concat, nn.Upsample) carry their output's scale: their input quantizer is "
    "tied with the entry quantizers of the layers that read their output",
)

_KEYS: tuple[tuple[type, str], ...] = (
    (DualDDetect, "DualDDetect"),
    (DDetect, "DDetect"),
    (DFL, "DFL"),
    (blocks.Conv, "Conv"),
    (blocks.RepConvN, "RepConvN"),
    (blocks.RepNCSPELAN4, "RepNCSPELAN4"),
    (blocks.ELAN1, "ELAN1"),
    (blocks.RepNCSP, "RepNCSP"),
    (blocks.AConv, "AConv"),
    (blocks.ADown, "ADown"),
    (blocks.SPPELAN, "SPPELAN"),
    (blocks.SP, "SP"),
    (blocks.Concat, "Concat"),
    (nn.Upsample, "nn.Upsample"),
    (nn.Sequential, "nn.Sequential"),
    (nn.Conv2d, "nn.Conv2d"),
    (nn.MaxPool2d, "nn.MaxPool2d"),
)

Site = tuple[str, str]  # (module path, quantizer attribute)
K = TypeVar("K")
_IMAGE = -1


def rule_key(module: nn.Module) -> str | None:
    """The key of ``module`` in :data:`SITES` / :data:`RULES` / :data:`FLOAT` (``None``: no rule).

    Quantized twins subclass their originals, so a quantized model has the same keys.
    """
    if isinstance(module, blocks.RepNBottleneck):
        return "RepNBottleneck+add" if module.add else "RepNBottleneck"
    for cls, key in _KEYS:
        if isinstance(module, cls):
            return key
    return None


def site_name(site: Site) -> str:
    """``"model.4.cv1.conv.input_quantizer"``."""
    path, attr = site
    return f"{path}.{attr}" if path else attr


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


class _UnionFind(Generic[K]):
    """Disjoint sets of hashable items (sites in :func:`plan`, quantizer ids in :func:`flow_ties`)."""

    def __init__(self, items: Iterable[K] = ()) -> None:
        self.parent: dict[K, K] = {k: k for k in items}

    def add(self, s: K) -> None:
        self.parent.setdefault(s, s)

    def __contains__(self, s: object) -> bool:
        return s in self.parent

    def find(self, s: K) -> K:
        root = s
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[s] != root:
            self.parent[s], s = root, self.parent[s]
        return root

    def union(self, items: Iterable[K]) -> None:
        """Merge the sets of ``items`` (the first item's root stays the root)."""
        items = list(items)
        for s in items[1:]:
            a, b = self.find(items[0]), self.find(s)
            if a != b:
                self.parent[b] = a


def _layer_sources(layer: nn.Module) -> list[int]:
    f = layer.f
    return [
        (layer.i - 1 if layer.i > 0 else _IMAGE) if j == -1 else j for j in ([f] if isinstance(f, int) else f)
    ]


def head_output_paths(model: nn.Module) -> tuple[str, ...]:
    """The module paths of the detect head's last 1x1 convs (the last module of each box and class
    tower, per level): what ``head_float`` keeps in float, as both upstream tools do."""
    layers = getattr(model, "model", None)
    if layers is None or not len(layers):
        return ()
    i = len(layers) - 1
    head = layers[i]
    if not isinstance(head, DDetect):
        return ()
    out = []
    for branch in ("cv2", "cv3"):
        for level, tower in enumerate(getattr(head, branch)):
            out.append(f"model.{i}.{branch}.{level}.{len(tower) - 1}")
    return tuple(out)


def skipped_paths(skip_layers: Iterable[int]) -> tuple[str, ...]:
    return tuple(f"model.{int(i)}" for i in skip_layers)


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


@dataclass
class Plan:
    """The quantizer sites of a model and their tie groups (each group: one scale)."""

    sites: list[Site] = field(default_factory=list)  # in module order
    groups: list[list[Site]] = field(default_factory=list)  # every site in exactly one group

    def group_of(self) -> dict[Site, int]:
        return {s: g for g, members in enumerate(self.groups) for s in members}

    def tied(self) -> list[list[Site]]:
        """The groups with more than one site."""
        return [g for g in self.groups if len(g) > 1]


def check_model(model: nn.Module) -> None:
    """Raise :class:`UserError` for models these rules do not cover (dual head, unknown layers)."""
    head = getattr(model, "head", None)
    if isinstance(head, DualDDetect):
        raise UserError(
            f"{getattr(model, 'cfg_name', 'this model')} has a dual (auxiliary) head; quantize its "
            "GELAN form: `yolov9-qat reparameterize --weights W --cfg gelan-X --out W-converted.pt`"
        )
    for layer in model.model:
        if rule_key(layer) not in RULES:
            raise UserError(
                f"layer {layer.i} is a {getattr(layer, 'type', type(layer).__name__)}, which has no "
                f"quantization rule; rules exist for {', '.join(sorted(RULES))}"
            )


def plan(
    model: nn.Module,
    skip_layers: Iterable[int] = (),
    placement: str = DEFAULT_PLACEMENT,
    head_float: bool = False,
) -> Plan:
    """The sites and tie groups that :data:`SITES`, :data:`RULES` and :data:`MODEL_RULES` give ``model``.

    Works on the float model and on its quantized form alike (same module paths). Layers in
    ``skip_layers`` (indices into ``model.model``) get no quantizers and take part in no tie;
    ``head_float`` keeps the head's last 1x1 convs float too (:func:`head_output_paths`). The
    ``ort`` placement adds :data:`ORT_SITES`; its exit ties come from :func:`flow_ties`, which needs
    the quantized model.
    """
    check_placement(placement)
    check_model(model)
    skipped = skipped_paths(skip_layers)
    modules = dict(model.named_modules())
    floating = [p for p, m in modules.items() if rule_key(m) in FLOAT]
    if head_float:
        floating += head_output_paths(model)
    uf = _UnionFind()
    out = Plan()
    for path, m in modules.items():
        if _under(path, skipped) or _under(path, floating):
            continue
        for attr in sites_of(m, placement):
            uf.add((path, attr))
            out.sites.append((path, attr))

    entries: dict[str, list[Site]] = {}

    def resolve(path: str, refs: Iterable[str]) -> list[Site]:
        found: list[Site] = []
        for ref in refs:
            if ref.endswith(":entry"):
                sub = _join(path, ref.removesuffix(":entry"))
                if sub in modules:
                    found.extend(entry_of(sub))
            else:
                sub, _, attr = ref.rpartition(".")
                site = (_join(path, sub), attr)
                if site in uf:
                    found.append(site)
        return found

    def entry_of(path: str) -> list[Site]:
        if path not in entries:
            entries[path] = []  # guards against cycles
            rule = RULES.get(rule_key(modules[path]) or "")
            if rule is not None:
                sites = resolve(path, rule.entry)
                uf.union(sites)
                for group in rule.ties:
                    uf.union(resolve(path, group))
                entries[path] = sites
        return entries[path]

    for path in modules:  # every block's own rule, referenced by a parent or not
        entry_of(path)

    # model level: who reads which tensor
    readers: dict[int, list[Site]] = {}
    for layer in model.model:
        path = f"model.{layer.i}"
        rule = RULES[rule_key(layer) or ""]
        for k, src in enumerate(_layer_sources(layer)):
            if rule.per_input:
                sites = resolve(path, [r.format(i=k) for r in rule.per_input])
                uf.union(sites)
            else:
                sites = entry_of(path)
            readers.setdefault(src, []).extend(sites)
    for sites in readers.values():
        uf.union(sites)
    for layer in model.model:
        if RULES[rule_key(layer) or ""].passthrough:
            uf.union(entry_of(f"model.{layer.i}") + readers.get(layer.i, []))

    by_root: dict[Site, list[Site]] = {}
    for s in out.sites:
        by_root.setdefault(uf.find(s), []).append(s)
    out.groups = list(by_root.values())
    return out


def quantizer_sites(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """``(module path, attribute, quantizer)`` for every quantizer use in a quantized model.

    A tied quantizer appears once per site. Output quantizers (never enabled here) are left out.
    """
    from modelopt.torch.quantization.nn import TensorQuantizer

    found = []
    for path, m in model.named_modules():
        if isinstance(m, TensorQuantizer):
            continue
        for attr, child in m._modules.items():
            if isinstance(child, TensorQuantizer) and attr != "output_quantizer":
                found.append((path, attr, child))
    return found


def flow_ties(model: nn.Module, imgsz: int = 64) -> list[list[Site]]:
    """The ``ort`` placement's exit ties: groups of sites of a quantized ``model`` that read one
    quantizer's values, found by tracing one forward pass (quantizers passing their input through).

    An exit / sum quantizer's output, and everything a :data:`PASSTHROUGH` op makes of it, is on
    that quantizer's grid; every quantizer that reads such a tensor is tied with it. Groups already
    tied by :func:`plan` merge as well. Returns the groups with more than one quantizer object.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    from yolov9_qat.utils.tensors import tensors

    sites = quantizer_sites(model)
    by_id: dict[int, list[Site]] = {}
    for path, attr, q in sites:
        by_id.setdefault(id(q), []).append((path, attr))
    quantizers = {id(q): q for *_, q in sites}
    uf: _UnionFind[int] = _UnionFind(quantizers)

    owner: dict[int, int] = {}  # id(tensor) -> id(quantizer) whose grid the tensor is on
    keep: list[Any] = []  # the traced tensors stay alive, so that their ids stay unique

    class Flow(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            if getattr(func, "__name__", "") in PASSTHROUGH:
                ins = [t for t in tensors((args, kwargs)) if t.is_floating_point() and t.dim() == 4]
                mode = (kwargs or {}).get("mode", "nearest")
                if ins and all(id(t) in owner for t in ins) and mode == "nearest":
                    uf.union(owner[id(t)] for t in ins)
                    for o in tensors(out):
                        owner[id(o)] = owner[id(ins[0])]
                        keep.append(o)
            return out

    def pre(q: nn.Module, args: tuple[Any, ...]) -> None:
        if args and id(args[0]) in owner:
            uf.union((owner[id(args[0])], id(q)))

    def post(q: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if isinstance(out, torch.Tensor):
            owner[id(out)] = id(q)
            keep.append(out)

    handles = [
        h
        for q in quantizers.values()
        for h in (q.register_forward_pre_hook(pre), q.register_forward_hook(post))
    ]
    was_training = model.training
    enabled = [(q, q.is_enabled) for q in quantizers.values()]
    try:
        for q in quantizers.values():
            q.disable()
        param = next(model.parameters())
        x = torch.zeros(1, 3, imgsz, imgsz, device=param.device, dtype=param.dtype)
        with torch.no_grad(), Flow():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
        for q, was_enabled in enabled:
            q.enable() if was_enabled else q.disable()
        model.train(was_training)
    groups: dict[int, list[Site]] = {}
    for k in quantizers:
        groups.setdefault(uf.find(k), []).extend(by_id[k])
    return [g for g in groups.values() if len({id(getattr(_module(model, p), a)) for p, a in g}) > 1]


def _module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _amax_repr(q: Any) -> float | list[float] | None:
    amax = getattr(q, "amax", None)
    if amax is None:
        return None
    flat = amax.detach().float().flatten().cpu()
    return float(flat[0]) if flat.numel() == 1 else [float(v) for v in flat]


def describe(
    model: nn.Module, skip_layers: Iterable[int] = (), head_float: bool = False
) -> list[dict[str, Any]]:
    """One dict per quantizer site: ``path``, ``quantizer`` (attribute), ``kind`` (``input`` /
    ``weight``), ``layer`` (index into ``model.model``), ``block`` (the layer's type), ``group``
    (tie group id: equal ids share one scale), ``tied`` and, on a quantized model, ``enabled``,
    ``num_bits``, ``axis`` and ``amax`` (a float, a per-channel list, or ``None`` before calibration).

    On a float model it lists the planned sites (see :func:`plan`); on a quantized one the actual
    quantizers, grouped by object identity.
    """
    rows: list[dict[str, Any]] = []
    layers = getattr(model, "model", [])

    def base(path: str, attr: str) -> dict[str, Any]:
        parts = path.split(".")
        layer = int(parts[1]) if len(parts) > 1 and parts[0] == "model" and parts[1].isdigit() else None
        block = getattr(layers[layer], "type", None) if layer is not None else None
        kind = "weight" if attr == WEIGHT else "input"
        return {"path": path, "quantizer": attr, "kind": kind, "layer": layer, "block": block}

    sites = quantizer_sites(model)
    if not sites:
        p = plan(model, skip_layers, head_float=head_float)
        gid = p.group_of()
        sizes = [len(g) for g in p.groups]
        for s in p.sites:
            rows.append({**base(*s), "group": gid[s], "tied": sizes[gid[s]] > 1})
        return rows
    ids: dict[int, int] = {}
    counts: dict[int, int] = {}
    for _, _, q in sites:
        counts[id(q)] = counts.get(id(q), 0) + 1
    for path, attr, q in sites:
        g = ids.setdefault(id(q), len(ids))
        rows.append(
            {
                **base(path, attr),
                "group": g,
                "tied": counts[id(q)] > 1,
                "enabled": bool(q.is_enabled),
                "num_bits": q.num_bits,
                "axis": q.axis,
                "amax": _amax_repr(q),
            }
        )
    return rows


def format_rules() -> str:
    """The rules as text (for ``--help`` style listings and the docs)."""
    lines = ["Quantizer sites:"]
    lines += [f"  {k:<20} {', '.join(v)}" for k, v in SITES.items()]
    lines.append("Kept float:")
    lines += [f"  {k:<20} {v}" for k, v in FLOAT.items()]
    lines.append("Block rules (entry: read the block input, one scale; ties: one scale):")
    for k, r in RULES.items():
        parts = []
        if r.entry and not r.per_input:
            parts.append(f"entry={list(r.entry)}")
        if r.per_input:
            parts.append(f"input i={list(r.per_input)}")
        if r.ties:
            parts.append(f"ties={[list(t) for t in r.ties]}")
        if r.passthrough:
            parts.append("passthrough")
        lines.append(f"  {k:<20} {'; '.join(parts)}")
    lines.append("Model rules:")
    lines += [f"  - {r}" for r in MODEL_RULES]
    return "\n".join(lines)
