"""The teacher, its layers and their candidates, in memory: what builds, loads and times them.

A :class:`LibraryContext` is made for a build (:meth:`LibraryContext.for_space`: layers found by
tracing the teacher, candidates from a space) or from a finished library
(:func:`context_from_library`: layers, specs and distilled weights read back from the file);
:func:`load_library_teacher` and :func:`load_candidate` rebuild single modules from a library.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from lana.library import Library

__all__ = ["LibraryContext", "context_from_library", "load_candidate", "load_library_teacher"]

log = logging.getLogger(__name__)


class LibraryContext:
    """A teacher with its layers and candidate specs; builds and loads candidates.

    Int8 candidates (``S_int8``) load as their float parent quantized with ``calibration``'s
    images: the teacher's inputs at the layer, captured in one teacher pass on the first int8
    load and kept (``calibration_inputs``).
    """

    def __init__(self, teacher, input_shape, layers, specs, weights=None, calibration=None):
        """A context over given layers and specs (see :meth:`for_space` and :func:`context_from_library`).

        Args:
            teacher: the teacher network (put in eval mode).
            input_shape: its input ``(C, H, W)``.
            layers: its replaceable layers (:class:`lana.layers.Layer`).
            specs: per layer, the candidate specs.
            weights: ``"<layer index>/<spec>"`` -> distilled state dict (filled by the build).
            calibration: a :class:`lana.calibration.CalibrationSet`; needed by int8 specs only.
        """
        from lana.candidates import estimate_cost
        from lana.layers import get_layer

        self.teacher = teacher.eval()
        self.input_shape = tuple(input_shape)
        self.layers = list(layers)
        self.specs = [list(s) for s in specs]
        # teacher-derived candidates (slim_*) are counted on the module cut from the teacher's block
        self.costs = [
            [estimate_cost(s, layer, teacher_block=get_layer(self.teacher, layer.name)) for s in specs]
            for layer, specs in zip(self.layers, self.specs)
        ]
        self.weights: dict[str, dict[str, torch.Tensor]] = dict(weights or {})
        self.calibration = calibration
        self._calibration_inputs: dict[str, list[torch.Tensor]] | None = None

    @classmethod
    def for_space(
        cls, teacher, img_size: int, space: str, max_macs_ratio=2.0, int8: bool = False, calibration=None
    ) -> LibraryContext:
        """The teacher's layers (found by tracing) with the candidates of ``space`` that fit each."""
        from lana.candidates import space_for
        from lana.layers import find_layers, get_layer

        input_shape = (3, img_size, img_size)
        layers = find_layers(teacher, input_shape)
        specs = [
            space_for(
                layer, space, max_macs_ratio=max_macs_ratio, int8=int8, teacher_block=get_layer(teacher, layer.name)
            )
            for layer in layers
        ]
        return cls(teacher, input_shape, layers, specs, calibration=calibration)

    def build(self, li: int, spec: str):
        from lana.candidates import build_candidate
        from lana.layers import get_layer

        return build_candidate(spec, self.layers[li], teacher_block=get_layer(self.teacher, self.layers[li].name))

    def load_inference(self, li: int, spec: str):
        """The candidate as it ships: distilled weights, branches fused, BN folded (for timing);
        an int8 one is in that form already."""
        from lana.candidates import inference_form, is_int8

        module = self.load(li, spec)
        return module if is_int8(spec) else inference_form(module)

    def inference_teacher(self):
        """The teacher as it ships (BN folded): what latency tables time."""
        from lana.candidates import inference_form

        return inference_form(self.teacher)

    def calibration_inputs(self) -> dict[str, list[torch.Tensor]]:
        """The teacher's inputs at every layer on the calibration images (computed once)."""
        from lana.calibration import capture_inputs

        if self._calibration_inputs is None:
            if self.calibration is None:
                raise ValueError(
                    "int8 candidates need calibration images: this context has no CalibrationSet "
                    "(a library built with int8 records its data set; pass calibration= otherwise)"
                )
            images = self.calibration.images()
            self._calibration_inputs = capture_inputs(self.teacher, [layer.name for layer in self.layers], images)
            log.info(
                "int8 calibration: the teacher's inputs at %d layers on %d training images",
                len(self.layers),
                len(images),
            )
        return self._calibration_inputs

    def load(self, li: int, spec: str):
        """The candidate with its distilled weights (eval mode); an int8 one is its float parent,
        quantized with the teacher's inputs at layer ``li`` as calibration data."""
        from lana.candidates import float_parent, is_int8, quantize_int8
        from lana.distill import untrained_specs

        if is_int8(spec):
            inputs = self.calibration_inputs()[self.layers[li].name]
            return quantize_int8(self.load(li, float_parent(spec)), inputs[0], inputs)
        module = self.build(li, spec)
        key = f"{li}/{spec}"
        if key in self.weights:
            module.load_state_dict(self.weights[key])
        elif not untrained_specs(spec):
            raise KeyError(f"no distilled weights for {spec} at layer {self.layers[li].name}")
        return module.eval()


def load_library_teacher(path: str | os.PathLike | Library):
    """The teacher (eval mode) exactly as the library was built from it."""
    from lana.teacher import create_model

    library = path if isinstance(path, Library) else Library(path)
    teacher = library.teacher
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in library.teacher_state().items()}
    model = create_model(teacher["model"], teacher["num_classes"], in_chans=teacher.get("in_chans", 3))
    model.load_state_dict(state)
    return model.eval()


def context_from_library(path: str | os.PathLike | Library) -> LibraryContext:
    """A :class:`LibraryContext` whose candidates load their weights from the library (and int8
    ones their calibration images from the data set the library was built on)."""
    from lana.calibration import CalibrationSet

    library = path if isinstance(path, Library) else Library(path)
    teacher = load_library_teacher(library)
    config = library.config
    records = library.layers()
    weights = {
        f"{index}/{spec}": {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
        for (index, spec), state in library.all_weights().items()
    }
    return LibraryContext(
        teacher,
        library.input_shape,
        [r.to_layer() for r in records],
        [r.specs for r in records],
        weights,
        calibration=CalibrationSet.of(config) if "dataset" in config else None,
    )


def load_candidate(path: str | os.PathLike, layer: int | str, spec: str, teacher=None):
    """Rebuild one candidate with its distilled weights (eval mode).

    Args:
        layer: the layer's index or name.
        teacher: the library's teacher (for the ``teacher`` spec); loaded when needed.

    An int8 spec returns its distilled float parent quantized as the build did
    (:meth:`LibraryContext.load`, calibrated on the build's training images).
    """
    from lana.candidates import build_candidate, is_int8
    from lana.layers import get_layer

    library = Library(path)
    index = library.layer_index(layer)
    record = library.layers()[index].to_layer()
    state = library.weights(index, spec)  # also checks that the layer has the spec
    if is_int8(spec):  # the distilled parent, quantized on the teacher's inputs: needs the whole context
        return context_from_library(library).load(index, spec)
    # the teacher's block is where `teacher` and the teacher-derived candidates (slim_*) come from
    teacher = teacher if teacher is not None else load_library_teacher(library)
    module = build_candidate(spec, record, teacher_block=get_layer(teacher, record.name))
    if spec == "teacher":
        return module.eval()
    if state is not None:
        module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return module.eval()
