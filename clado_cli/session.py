"""One config's working set: device, data, float model, layer plan, calibrated quantizers,
and the manifest whose hash (the fingerprint) names the cache directory."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from . import __version__
from .config import Config
from .batchrange import check_batch_range
from .console import log, progress
from .errors import EnvironmentProblem, InputError, UsageError
from .store import Cache, fingerprint_of

CACHE_FORMAT = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem("device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is False)",
                                 params=("device",))
    return torch.device(name)


def check_finite_weights(model: torch.nn.Module, name: str) -> None:
    """NaN or inf in a model's parameters or buffers would flow into every number: refuse them."""
    for key, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise InputError(f"model {name}: {key} has {bad} values that are NaN or inf")


def check_finite_batch(x: torch.Tensor, what: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise InputError(f"{what} has {int((~torch.isfinite(x)).sum())} pixel values that are NaN or inf")


class Session:
    """Lazily builds what a command needs, in the order data -> model -> plan -> quantizers.

    `device`: a specific device (a torchrun rank's `cuda:LOCAL_RANK`) instead of the config's."""

    def __init__(self, cfg: Config, log_fn=log, device: Optional[torch.device] = None):
        self.cfg = cfg
        self.log = log_fn
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = device if device is not None else resolve_device(cfg.device)
        # evaluation results of this session, by model state (evaluate.py: identical decisions
        # are evaluated once), and the float model's row (the sanity checks compare with it)
        self.eval_memo: Dict[Any, Dict[str, Any]] = {}
        self.float_metrics: Optional[Dict[str, Any]] = None

    @cached_property
    def model_preprocessing(self):
        """The preprocessing the model carries (torchvision weights, timm, hf), or None."""
        from .models import model_preprocessing

        return model_preprocessing(self.cfg.model)

    @cached_property
    def data(self):
        from .data import FILE_SOURCES, load_data, parse_spec

        d = self.cfg.data
        pre = self.model_preprocessing if parse_spec(d.dataset)[0] in FILE_SOURCES else None
        splits = load_data(d.dataset, image_size=d.image_size, eval_split=d.eval_split,
                           transform=d.transform.explicit(), model_pre=pre)
        if splits.transform is not None:
            self.log(f"preprocessing: {splits.transform.describe()}")
        if not splits.labeled:
            from .data import pseudo_label

            self.log("unlabeled data: labels are the float model's predictions")
            model = self._build_float(splits).to(self.device)
            splits.train = pseudo_label(splits.train, model, self.device, d.bs, d.workers)
            splits.eval = pseudo_label(splits.eval, model, self.device, d.bs, d.workers)
            # the model that labelled the data is the float model: keep it (cached_property's
            # slot) instead of building and loading it a second time
            self.__dict__["float_model"] = model.eval()
        return splits

    def _build_float(self, splits):
        from .models import build_model

        return build_model(self.cfg.model, splits, log=self.log)

    @cached_property
    def float_model(self) -> torch.nn.Module:
        model = self._build_float(self.data).to(self.device).eval()
        check_finite_weights(model, self.cfg.model.name)
        return model

    @cached_property
    def example_input(self) -> torch.Tensor:
        c, h, w = self.data.input_shape
        return torch.zeros(1, c, h, w, device=self.device)

    @cached_property
    def plan(self):
        from .quant.layers import plan_layers

        model = self.float_model   # built (and, the embedded one, trained) outside no_grad
        try:
            with torch.no_grad():
                out = model(self.example_input)
            self._check_output(out)
            plan = plan_layers(model, self.example_input, self.cfg.layers)
        except UsageError:
            raise
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UsageError(f"model {self.cfg.model.name} cannot run on {self.cfg.data.dataset} "
                             f"inputs of shape {tuple(self.example_input.shape[1:])}: {first}") from None
        return plan

    def _check_output(self, out) -> None:
        """The model must return [batch, classes] logits covering the data's labels: checked once,
        up front, instead of failing after calibration."""
        name = self.cfg.model.name
        if not isinstance(out, torch.Tensor):
            raise UsageError(f"model {name} returns a {type(out).__name__}, not a tensor of logits: wrap it so that "
                             f"forward returns the logits")
        if out.dim() != 2 or out.shape[0] != self.example_input.shape[0]:
            raise UsageError(f"model {name} returns shape {tuple(out.shape)} for a batch of "
                             f"{self.example_input.shape[0]}: clado needs [batch, classes] logits")
        classes = self.data.num_classes
        if classes and out.shape[1] < classes:
            raise UsageError(f"model {name} has {out.shape[1]} outputs but {self.cfg.data.dataset} has {classes} "
                             f"classes (labels 0..{classes - 1}); set model.num_classes or use a matching model")

    @cached_property
    def constraints(self):
        """The program's tie groups and allowed widths over the decided layers (layers.tie,
        layers.tie_shared_input, layers.widths; clado_cli.quant.ties.LayerConstraints). Not part
        of the manifest: they restrict the program, not what prep measures."""
        from .quant.ties import layer_constraints

        c = self.cfg
        return layer_constraints(self.float_model, self.plan.decided_names, c.layers, c.quant.weight_widths(),
                                 self.example_input)

    @cached_property
    def layer_costs(self):
        """(MACs, input-activation elements) per sample of every decided and fixed layer at the
        data's input shape, from one forward pass."""
        from .quant.costs import layer_costs

        names = [l.name for l in self.plan.decided + self.plan.fixed]
        return layer_costs(self.float_model, self.example_input, names)

    @property
    def layer_macs(self) -> Dict[str, int]:
        """MACs per sample of every decided and fixed layer at the data's input shape."""
        return self.layer_costs[0]

    @property
    def layer_act_elements(self) -> Dict[str, int]:
        """Input-activation elements per sample of every decided and fixed layer (all calls)."""
        return self.layer_costs[1]

    @cached_property
    def weights_hash(self) -> str:
        from .models import weights_hash

        return weights_hash(self.float_model)

    @cached_property
    def transform(self) -> Optional[Dict[str, Any]]:
        """The resolved preprocessing of file-backed data (None for digits and synthetic)."""
        t = self.data.transform
        return t.to_dict() if t is not None else None

    @cached_property
    def manifest(self) -> Dict[str, Any]:
        """Everything the cached numbers depend on; its hash names the cache directory.
        File-backed data add their resolved transform (without where each setting came from:
        the same pixels give the same numbers); digits and synthetic add nothing, so their
        fingerprints are what they were before transforms existed."""
        from .models import canonical_name

        c = self.cfg
        m = {
            "format": CACHE_FORMAT,
            "clado_version": __version__,
            "model": {"name": canonical_name(c.model.name), "weights": c.model.weights,
                      "weights_sha256": self.weights_hash},
            "data": {"dataset": c.data.dataset, "bs": c.data.bs, "seed": c.data.seed,
                     "calibration_size": c.data.calibration_size, "image_size": c.data.image_size,
                     # absent for "head", so caches made before the choice existed keep their name
                     **({"calibration_from": "tail"} if c.data.calibration_from == "tail" else {})},
            "quant": c.quant.manifest_dump(),
            "layers": {
                "decided": [[l.name, l.numel] for l in self.plan.decided],
                "fixed": [[l.name, l.numel] for l in self.plan.fixed],
                "fixed_weight_bits": c.layers.fixed_weight_bits,
                "fixed_activation_bits": c.layers.fixed_activation_bits,
            },
            "candidates": [w for w, _ in c.quant.pairs()],
            "loss": c.prep.loss,
        }
        if c.quant.act_options:
            # options differ in activation width: candidate k is (candidates[k], act_bits[k])
            m["act_bits"] = [a for _, a in c.quant.pairs()]
        if self.transform is not None:
            m["data"]["transform"] = {k: v for k, v in self.transform.items() if k not in ("source", "origin")}
        if self.data.holdout is not None:   # which files are training images (data/base.py)
            m["data"]["holdout"] = dict(self.data.holdout)
        return m

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint_of(self.manifest)

    @cached_property
    def cache(self) -> Cache:
        return Cache.open(Path(self.cfg.cache_dir), self.manifest)

    @cached_property
    def qmodel(self):
        """The calibrated QuantModel; the calibration is cached beside the sensitivities."""
        from .data import calibration_batches
        from .quant.model import QuantModel

        c = self.cfg
        qm = QuantModel(self.float_model, self.plan, c.quant, c.layers.fixed_weight_bits,
                        c.layers.fixed_activation_bits).to(self.device).eval()
        state = self.cache.load_quant_state()
        if state is None:
            # one process calibrates; another on the same cache waits and loads its result
            with self.cache.calibration_lock():
                state = self.cache.load_quant_state()
                if state is None:
                    self.log(f"calibrating quantizers on {c.data.calibration_size} training images")
                    n = min(c.data.calibration_size, len(self.data.train))
                    with progress() as bar:
                        task = bar.add_task("calibration batches", total=-(-n // c.data.bs))

                        def batches():
                            for x, _ in calibration_batches(self.data.train, c.data.calibration_size,
                                                            c.data.bs, c.data.seed, c.data.workers,
                                                            c.data.calibration_from):
                                yield x
                                bar.advance(task)

                        qm.calibrate(batches(), self.device)
                    bad = [k for k, v in qm.quant_state().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
                    if bad:
                        raise InputError(f"calibration gave non-finite quantizer parameters ({bad[0]}): the "
                                         f"calibration images or the model's activations hold NaN or inf")
                    self.cache.save_quant_state(qm.quant_state())
        if state is not None:
            qm.load_quant_state(state)
        return qm

    def splits(self) -> Dict[str, Any]:
        """Which images play which part, where they overlap and which overlap the config asked
        for (reported by `clado run`: results.json `splits`, and a warning)."""
        from .data import HOLDOUT_FRACTION, HOLDOUT_SEED
        from .data.batches import split_overlaps

        d = self.cfg.data
        n_eval = len(self.data.eval) if d.eval_size is None else min(d.eval_size, len(self.data.eval))
        on_train = d.eval_split == "train"
        out = split_overlaps(len(self.data.train), d.bs, d.sb, d.eb, d.calibration_size, d.seed, d.calibration_from,
                             n_eval if on_train else None)
        out["calibration_from"] = d.calibration_from
        out["training_images"] = len(self.data.train)
        out["evaluation_images"] = n_eval
        if on_train:
            out["evaluation"] = "the training images"
        elif self.data.holdout is not None:
            out["evaluation"] = (f"a held-out {HOLDOUT_FRACTION:g} of the files, seed {HOLDOUT_SEED} "
                                 f"({len(self.data.eval)} images, disjoint)")
        else:
            out["evaluation"] = f"the {d.eval_split} split (disjoint)"
        out["overlap_requested"] = [k for k, asked in (
            ("data.calibration_from: head", d.calibration_from == "head"),
            ("data.eval_split: train", on_train),
            ("data.allow_overlap: true", d.allow_overlap)) if asked]
        return out

    def sensitivity_batch(self, k: int):
        from .data import sensitivity_batch

        d = self.cfg.data
        x, y = sensitivity_batch(self.data.train, k, d.bs, d.seed, d.workers)
        check_finite_batch(x, f"sensitivity batch {k} of {d.dataset}")
        return x.to(self.device), y.to(self.device)

    def check_batch_range(self, sb: int, eb: int) -> None:
        from .data import num_batches

        from .data.batches import check_disjoint

        d = self.cfg.data
        check_batch_range(sb, eb, num_batches(self.data.train, d.bs), len(self.data.train), d.bs)
        if not d.allow_overlap:   # sensitivity and calibration images apart (docs/methods.md, "Terms")
            check_disjoint(len(self.data.train), d.bs, eb, d.calibration_size, d.calibration_from,
                           f"the training split of {d.dataset}")
