"""The operation space of LANA: candidate operations named by spec strings.

Imported as ``lana.candidates`` (the folder sits at the top of the repository; pyproject maps it).

    >>> from lana.candidates import decode_spec, build_candidate, list_candidates, space_for
    >>> decode_spec("ir_k5_e3_se")
    ('ir', {'kernel_size': 5, 'expansion': 3, 'se': True, 'act': 'relu'})
    >>> list_candidates("dw_k3*")
    ['dw_k3', 'dw_k3_hswish', 'dw_k3_se', 'dw_k3_se_hswish', 'dw_k3_se_silu', 'dw_k3_silu']

Modules: ``spec`` (decode / encode / registry grid), ``blocks`` (the nn.Modules), ``ghost``
(GhostNet modules), ``rep`` (re-parameterisable RepVGG / MobileOne units and their fusion),
``builder`` (spec + layer -> module), ``count`` (parameters and MACs), ``space`` (presets,
``space_for``), ``fuse`` (``inference_form``: rep fusion and BN folding, what ships), ``quant``
(``quantize_int8``: post-training int8 for CPU; int8 specs are ``<float spec>_int8``), ``slim``
(``slim_*``: the teacher's own block with fewer hidden channels, weights sliced from it),
``summary`` (the per-layer table behind ``lana candidates``).
"""

from .builder import BlockPlan, build_candidate, plan_candidate
from .count import Candidate, count_params_macs, estimate_cost
from .fuse import fold_bn, inference_form, is_quantized
from .quant import (
    INT8_SUFFIX,
    QuantizationError,
    float_parent,
    int8_spec,
    is_int8,
    quantization_error,
    quantize_int8,
)
from .rep import reparameterize
from .slim import SLIM_WIDTHS, build_slim, slim_channels, slim_specs
from .space import DEFAULT_MAX_MACS_RATIO, PRESETS, list_candidates, list_spaces, space_for
from .spec import KINDS, decode_spec, encode_spec
from .summary import SpaceRow, SpaceSummary

__all__ = [
    "DEFAULT_MAX_MACS_RATIO",
    "INT8_SUFFIX",
    "KINDS",
    "PRESETS",
    "SLIM_WIDTHS",
    "BlockPlan",
    "Candidate",
    "QuantizationError",
    "SpaceRow",
    "SpaceSummary",
    "build_candidate",
    "build_slim",
    "count_params_macs",
    "decode_spec",
    "encode_spec",
    "estimate_cost",
    "float_parent",
    "fold_bn",
    "inference_form",
    "int8_spec",
    "is_int8",
    "is_quantized",
    "list_candidates",
    "list_spaces",
    "plan_candidate",
    "quantization_error",
    "quantize_int8",
    "reparameterize",
    "slim_channels",
    "slim_specs",
    "space_for",
]
