"""A battery of what users do to the library, run against every exported flow and model.

* every exported flow (``nfcourse.__all__``, ``nfcourse.flows.__all__``, plus the image and
  CNF layers) passes ``check_flow`` in float64, also wrapped in ``Inverse``, and handles an
  empty batch in both directions;
* every model samples and scores empty batches, and refuses counts of the wrong type with a
  message that says what it expected;
* every model the book trains saves and loads back in a *fresh* process that imports only
  ``nfcourse.training.checkpoint`` (no registry filled by an earlier import), with the same outputs,
  and a float64 model comes back as float64;
* a checkpoint whose tensor bytes were damaged on disk is refused;
* every trainer resumes exactly: N steps == N/2 steps, save, resume, N/2 steps.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import nfcourse
import nfcourse.flows
from nfcourse.models import BUILTIN_MODELS, build_model
from nfcourse.training.checkpoint import (CheckpointError, load_checkpoint, load_model,
                                          save_checkpoint)
from nfcourse.flows import ContinuousFlow
from nfcourse.nn import VelocityMLP
from nfcourse.ode import SolverSpec
from nfcourse.core import Compose, Flow, Inverse
from nfcourse.flows import (ActNorm, AdditiveCoupling, AffineCoupling, ChannelSplit,
                            Checkerboard, ContextOnly, DiagonalScaling, ElementwiseAffine, Exp, GlowLevel, GlowStep,
                            InvertibleConv1x1, InvertibleLinear, Logit, MaskedAutoregressive,
                            Planar, Polar, Radial, Sigmoid, SplineCoupling, Split,
                            coupling_masks)
from nfcourse.flows.images import FlipChannels, MultiScaleLevel, Reshape
from nfcourse.core.testing import check_flow
from nfcourse.training.engine import TrainConfig, fit
from nfcourse.core.validation import check_count

SRC = str(Path(__file__).resolve().parents[1] / "src")
Domain = Callable[[int, torch.Generator], Tensor]


def _perturb(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Move every parameter off its (often identity) initialisation, reproducibly, so the
    checks test a generic map and not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _normal(*shape: int) -> Domain:
    return lambda n, g: torch.randn(n, *shape, generator=g)


def _polar_domain(n: int, g: torch.Generator) -> Tensor:
    r = 0.5 + torch.rand(n, generator=g)
    theta = (torch.rand(n, generator=g) * 2 - 1) * 3.0
    return torch.stack([r, theta], dim=1)


def _tight_cnf() -> ContinuousFlow:
    tight = SolverSpec("dopri5", rtol=1e-10, atol=1e-10)
    field = VelocityMLP(2, hidden=8, layers=2, activation="tanh", frequencies=0,
                        time_in_output=True, zero_last=True)
    return ContinuousFlow(field, 2, train_solver=tight, eval_solver=tight)


# name -> (a small flow, a sampler of points in its forward (latent) domain)
FLOWS: dict[str, Callable[[], tuple[Flow, Domain]]] = {
    "ElementwiseAffine": lambda: (ElementwiseAffine(3), _normal(3)),
    "Exp": lambda: (Exp(3), _normal(3)),
    "Sigmoid": lambda: (Sigmoid(3), _normal(3)),
    "Logit": lambda: (Logit(3), lambda n, g: 0.05 + 0.9 * torch.rand(n, 3, generator=g)),
    "Logit[alpha]": lambda: (Logit((1, 2, 2), alpha=0.05), lambda n, g: torch.rand(n, 1, 2, 2,
                                                                                   generator=g)),
    "Polar": lambda: (Polar(), _polar_domain),
    "Planar": lambda: (Planar(3, torch.Generator().manual_seed(1)), _normal(3)),
    "Radial": lambda: (Radial(3, torch.Generator().manual_seed(1)), _normal(3)),
    "Compose": lambda: (Compose(ElementwiseAffine(3), AffineCoupling(coupling_masks(3, 1)[0],
                                                                     8)), _normal(3)),
    "Inverse": lambda: (Inverse(Planar(3, torch.Generator().manual_seed(2))), _normal(3)),
    "AdditiveCoupling": lambda: (AdditiveCoupling(coupling_masks(4, 1)[0], 8), _normal(4)),
    "AffineCoupling": lambda: (AffineCoupling(coupling_masks(4, 1)[0], 8), _normal(4)),
    "AffineCoupling[channels]": lambda: (AffineCoupling(ChannelSplit((2, 2, 2)), hidden=4),
                                         _normal(2, 2, 2)),
    "AffineCoupling[checkerboard]": lambda: (AffineCoupling(Checkerboard((1, 4, 4), 0), 4),
                                             _normal(1, 4, 4)),
    "Conditioned": lambda: (AffineCoupling(ContextOnly(1), 4, context=1).given(
        torch.randn(1, 1, 2, 2)), _normal(1, 2, 2)),
    "DiagonalScaling": lambda: (DiagonalScaling(3), _normal(3)),
    "ActNorm": lambda: (ActNorm((3,)), _normal(3)),
    "ActNorm[image]": lambda: (ActNorm((2, 2, 2)), _normal(2, 2, 2)),
    "InvertibleLinear": lambda: (InvertibleLinear(3), _normal(3)),
    "InvertibleLinear[dense]": lambda: (InvertibleLinear(3, lu=False), _normal(3)),
    "InvertibleConv1x1": lambda: (InvertibleConv1x1((3, 2, 2)), _normal(3, 2, 2)),
    "Split": lambda: (Split((2, 2, 2)), _normal(2, 2, 2)),
    "GlowStep": lambda: (GlowStep((2,), hidden=8), _normal(2)),
    "GlowStep[image]": lambda: (GlowStep((2, 2, 2), hidden=4), _normal(2, 2, 2)),
    "GlowLevel": lambda: (GlowLevel((1, 4, 4), steps=1, hidden=4, levels=2), _normal(1, 4, 4)),
    "Reshape": lambda: (Reshape((1, 2, 2), (4,)), _normal(1, 2, 2)),
    "FlipChannels": lambda: (FlipChannels((2, 2, 2)), _normal(2, 2, 2)),
    "MultiScaleLevel": lambda: (MultiScaleLevel((1, 4, 4), scales=2, hidden=4, checker=1,
                                                channel=1), _normal(1, 4, 4)),
    # the book's MNIST layout in miniature: per-scale counts, gated conditioners, no ActNorm
    "MultiScaleLevel[recipe]": lambda: (MultiScaleLevel((1, 8, 8), scales=2, hidden=(4, 6, 8),
                                                        checker=(1, 0), channel=(1, 2),
                                                        blocks=1, actnorm=False),
                                        _normal(1, 8, 8)),
    # chapter 3's Glow on MNIST in miniature: Glow steps with gated conditioners at two scales
    "MultiScaleLevel[glow]": lambda: (MultiScaleLevel((1, 8, 8), scales=2, hidden=(4, 6, 8),
                                                      checker=(0, 0), channel=(1, 2), blocks=1,
                                                      glow=torch.Generator().manual_seed(0)),
                                      _normal(1, 8, 8)),
    "ContinuousFlow": lambda: (_tight_cnf(), _normal(2)),
    # chapter 10: spline couplings, and masked autoregressive flows in both conventions
    "SplineCoupling": lambda: (SplineCoupling(coupling_masks(4, 1)[0], 5, 2.0, 8), _normal(4)),
    "SplineCoupling[checkerboard]": lambda: (SplineCoupling(Checkerboard((1, 4, 4), 0), 4, 2.0,
                                                            4), _normal(1, 4, 4)),
    "MaskedAutoregressive": lambda: (MaskedAutoregressive(3, 8, order=[2, 0, 1]), _normal(3)),
    "MaskedAutoregressive[iaf]": lambda: (MaskedAutoregressive(3, 8, convention="iaf"),
                                          _normal(3)),
    "MaskedAutoregressive[spline]": lambda: (MaskedAutoregressive(3, 8, transformer="spline",
                                                                  bins=4, bound=2.0),
                                             _normal(3)),
    "MaskedAutoregressive[iaf,spline]": lambda: (MaskedAutoregressive(
        3, 8, transformer="spline", convention="iaf", bins=4, bound=2.0), _normal(3)),
}


def _exported_flow_names() -> set[str]:
    names = set()
    for module in (nfcourse, nfcourse.flows):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, Flow) and obj is not Flow:
                names.add(name)
    return names


def test_every_exported_flow_is_in_the_battery() -> None:
    missing = _exported_flow_names() - {k.split("[")[0] for k in FLOWS}
    assert not missing, f"add a factory to FLOWS for {sorted(missing)}"


def _make(name: str, n: int = 3) -> tuple[Flow, Tensor]:
    torch.manual_seed(0)
    flow, domain = FLOWS[name]()
    _perturb(flow)
    flow.eval()  # ActNorm must not re-initialise itself in the middle of a check
    return flow, domain(n, torch.Generator().manual_seed(5))


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_check_flow_in_float64(name: str) -> None:
    flow, z = _make(name)
    check_flow(flow, z, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_inverse_wrapper_passes_check_flow(name: str) -> None:
    flow, z = _make(name)
    flow.double()
    with torch.no_grad():
        x, _ = flow.forward(z.double())
    check_flow(Inverse(flow), x, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_empty_batch_in_both_directions(name: str) -> None:
    flow, z = _make(name)
    x, ld = flow.forward(z[:0])
    assert ld.shape == (0,) and x.shape[0] == 0
    assert x.shape[1:] == flow.forward(z)[0].shape[1:]
    z_back, ld_back = flow.inverse(x)
    assert z_back.shape == z[:0].shape and ld_back.shape == (0,)


def test_inverse_of_a_reshape_validates_the_swapped_shapes() -> None:
    r = Reshape((1, 2, 2), (4,))
    inv = Inverse(r)
    x, _ = inv.forward(torch.randn(5, 4))           # Reshape.inverse: [B, 4] -> [B, 1, 2, 2]
    assert x.shape == (5, 1, 2, 2)
    assert inv.inverse(x)[0].shape == (5, 4)
    with pytest.raises(ValueError, match=r"expected shape \[B, 4\]"):
        inv.forward(torch.randn(5, 1, 2, 2))
    # a composition that reshapes knows both of its sides
    c = Compose(ElementwiseAffine((1, 2, 2)), r)
    assert c.event_shape == (1, 2, 2) and c.data_shape == (4,)
    assert c.inverse(torch.randn(2, 4))[0].shape == (2, 1, 2, 2)


def test_inverse_refuses_a_non_flow() -> None:
    with pytest.raises(TypeError, match="expected a Flow"):
        Inverse(nn.Linear(2, 2))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- models

def _small_specs() -> dict[str, dict[str, Any]]:
    """A small instance of every built-in checkpoint builder."""
    tight = {"method": "dopri5", "steps": 20, "rtol": 1e-9, "atol": 1e-9, "adjoint": False,
             "backend": "nfcourse"}
    return {
        "realnvp": {"name": "realnvp", "kwargs": {"features": 2, "layers": 2, "hidden": 8}},
        "nice": {"name": "nice", "kwargs": {"features": 2, "layers": 2, "hidden": 8}},
        "maf": {"name": "maf", "kwargs": {"features": 2, "layers": 2, "hidden": 8}},
        "iaf": {"name": "iaf", "kwargs": {"features": 2, "layers": 2, "hidden": 8,
                                          "transformer": "spline", "bins": 3}},
        "nsf": {"name": "nsf", "kwargs": {"features": 2, "layers": 2, "hidden": 8, "bins": 4}},
        "glow": {"name": "glow", "kwargs": {"event_shape": (1, 4, 4), "levels": 2, "steps": 1,
                                            "hidden": 4}},
        "glow_2d": {"name": "glow_2d", "kwargs": {"features": 2, "steps": 2, "hidden": 8}},
        "cnf": {"name": "cnf", "kwargs": {"dim": 2, "hidden": 8, "layers": 2,
                                          "train_solver": tight, "eval_solver": tight}},
        "tiny_realnvp": {"name": "tiny_realnvp", "kwargs": {"shape": (1, 4, 4), "layers": 2,
                                                            "hidden": 8}},
        # the book's MNIST layout in miniature (per-scale counts, gated conditioners)
        "multiscale_realnvp": {"name": "multiscale_realnvp", "kwargs": {
            "shape": (1, 8, 8), "scales": 2, "hidden": [4, 6, 8], "checker": [1, 0],
            "channel": [1, 2], "blocks": 1, "alpha": 1e-5, "actnorm": False}},
        "multiscale_glow": {"name": "multiscale_glow", "kwargs": {
            "shape": (1, 8, 8), "scales": 2, "hidden": [4, 6, 8], "channel": [1, 2],
            "blocks": 1, "alpha": 1e-5}},
        "velocity_mlp": {"name": "velocity_mlp", "kwargs": {"dim": 2, "hidden": 8,
                                                            "layers": 2}},
        "planar_model": {"name": "planar_model", "kwargs": {"features": 2, "layers": 3,
                                                            "seed": 1}},
        "radial_model": {"name": "radial_model", "kwargs": {"features": 2, "layers": 3,
                                                            "seed": 1}},
        "mean_field": {"name": "mean_field", "kwargs": {"features": 2}},
        "vae": {"name": "vae", "kwargs": {"features": 2, "latent": 2, "hidden": 8}},
        "vae_elbo": {"name": "vae_elbo", "kwargs": {"features": 2, "latent": 1, "hidden": 8,
                                                    "kl_warmup": 7}},
    }


FLOW_MODELS = ["realnvp", "nice", "maf", "iaf", "nsf", "planar_model", "radial_model",
               "mean_field", "glow", "glow_2d", "cnf", "tiny_realnvp",
               "multiscale_realnvp", "multiscale_glow"]


def test_every_builtin_model_has_a_small_spec() -> None:
    assert set(_small_specs()) == set(BUILTIN_MODELS)


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _perturb(build_model(_small_specs()[name]), scale=0.1).eval()


def _inputs(model: nn.Module) -> Tensor:
    shape = getattr(model, "event_shape", None) or (model.dim,)  # VelocityMLP has .dim
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(3))
    return 0.1 + 0.8 * x  # inside (0, 1): valid for the image models' logit too


# What to compare after loading: the same expression in this process and in the fresh one.
OUTPUTS = textwrap.dedent("""
    def outputs(model, x):
        import torch
        with torch.no_grad():
            if hasattr(model, "flow"):                    # a FlowModel (incl. CNF)
                return model.log_prob(x)
            if hasattr(model, "encode"):                  # VAE
                return torch.cat(model.encode(x), dim=1)
            if hasattr(model, "vae"):                     # ELBOObjective
                return torch.cat(model.vae.encode(x), dim=1)
            return model(torch.full((x.shape[0],), 0.3, dtype=x.dtype), x)  # velocity field
""")
_ns: dict[str, Any] = {}
exec(OUTPUTS, _ns)
outputs: Callable[[nn.Module, Tensor], Tensor] = _ns["outputs"]

FRESH = OUTPUTS + textwrap.dedent("""
    import sys
    import torch
    from nfcourse.training.checkpoint import load_model
    model, ckpt = load_model(sys.argv[1])
    x = torch.load(sys.argv[2], weights_only=True)
    out = outputs(model, x)
    torch.save({"out": out, "dtype": str(next(model.parameters()).dtype),
                "extra": getattr(model, "calls", None)}, sys.argv[3])
""")


def _load_fresh(path: Path, x: Tensor, tmp_path: Path) -> dict[str, Any]:
    torch.save(x, tmp_path / "x.pt")
    result = subprocess.run([sys.executable, "-c", FRESH, str(path), str(tmp_path / "x.pt"),
                             str(tmp_path / "out.pt")], capture_output=True, text=True,
                            env={"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1",
                                 "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "out.pt", weights_only=True)


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_checkpoint_loads_in_a_fresh_process(name: str, tmp_path: Path) -> None:
    model = _model(name)
    if name == "vae_elbo":
        model.calls = 5  # type: ignore[assignment]  # training state must travel too
    x = _inputs(model)
    path = save_checkpoint(tmp_path / f"{name}.pt", {"model_spec": _small_specs()[name],
                                                     "model": model.state_dict()})
    got = _load_fresh(path, x, tmp_path)
    torch.testing.assert_close(got["out"], outputs(model, x), rtol=0, atol=1e-6)
    if name == "vae_elbo":
        assert got["extra"] == 5


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_float64_model_loads_back_as_float64(name: str, tmp_path: Path) -> None:
    model = _model(name).double()
    x = _inputs(model).double()
    path = save_checkpoint(tmp_path / "m.pt", {"model_spec": _small_specs()[name],
                                               "model": model.state_dict()})
    loaded, _ = load_model(path)
    assert next(loaded.parameters()).dtype == torch.float64
    assert torch.equal(outputs(loaded, x), outputs(model, x))


def test_glow_trained_by_fit_loads_in_a_fresh_process(tmp_path: Path) -> None:
    """Glow on (dequantised) digits as chapter 3 trains it: fit with a model_spec, ActNorms
    initialised by the first batch; the fresh process must not re-initialise them."""
    spec = _small_specs()["glow"]
    torch.manual_seed(0)
    model = build_model(spec)
    data = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=3, batch_size=16, warmup=0, eval_every=3, eval_size=16)
    fit(model, data, cfg, eval_data=data[:16], checkpoint=tmp_path / "glow.pt",
        model_spec=spec, progress=False)
    model.eval()
    got = _load_fresh(tmp_path / "glow.pt", data[:4], tmp_path)
    torch.testing.assert_close(got["out"], outputs(model, data[:4]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", FLOW_MODELS)
def test_model_empty_batches(name: str) -> None:
    model = _model(name)
    x = _inputs(model)
    assert model.log_prob(x[:0]).shape == (0,)
    assert model.sample(0).shape == (0, *x.shape[1:])
    s, lp = model.sample_and_log_prob(0)
    assert s.shape == (0, *x.shape[1:]) and lp.shape == (0,)


@pytest.mark.parametrize("name", FLOW_MODELS)
@pytest.mark.parametrize("bad, error, message", [
    (2.5, TypeError, "expected an int"), ("3", TypeError, "expected an int"),
    (True, TypeError, "bool"), (-1, ValueError, ">= 0"), (None, TypeError, "expected an int"),
])
def test_sample_refuses_bad_counts(name: str, bad: object, error: type, message: str) -> None:
    model = _model(name)
    with pytest.raises(error, match=message):
        model.sample(bad)
    if name != "cnf":
        with pytest.raises(error, match=message):
            model.sample_and_log_prob(bad)


def test_check_count_accepts_integer_types() -> None:
    import numpy as np

    assert check_count(np.int64(3)) == 3
    assert check_count(torch.tensor(4)) == 4
    with pytest.raises(TypeError, match=r"int\(2.0\)"):
        check_count(2.0)


def test_model_refuses_wrong_dtype_with_the_fix() -> None:
    model = _model("realnvp")
    with pytest.raises(TypeError, match=r"x.to\(torch.float32\)"):
        model.log_prob(torch.zeros(2, 2, dtype=torch.float64))


# ----------------------------------------------------------------------------- integrity

def _tensor_data_offset(path: Path) -> tuple[int, int]:
    """(offset, size) in the file of the largest tensor storage torch.save wrote."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


@pytest.mark.parametrize("where", [0.0, 0.5, 0.999])
def test_flipped_tensor_byte_is_refused(tmp_path: Path, where: float) -> None:
    model = _model("realnvp")
    path = save_checkpoint(tmp_path / "m.pt", {"model_spec": _small_specs()["realnvp"],
                                               "model": model.state_dict()})
    load_model(path)  # intact: loads
    offset, size = _tensor_data_offset(path)
    data = bytearray(path.read_bytes())
    data[offset + int(where * (size - 1))] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt") as err:
        load_model(path)
    assert str(path) in str(err.value) and "train again" in str(err.value)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


# ----------------------------------------------------------------------------- resume

def _two_moons64(n: int, g: torch.Generator) -> Tensor:
    return torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.5 + 1.0


def _fit_twice(build: Callable[[], nn.Module], sampler: Any, cfg: TrainConfig,
               tmp_path: Path, **kw: Any) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    straight = build()
    torch.manual_seed(123)
    fit(straight, sampler, cfg, progress=False, **kw)
    torch.manual_seed(0)
    resumed = build()
    torch.manual_seed(123)
    ckpt = tmp_path / "run.pt"
    fit(resumed, sampler, cfg, checkpoint=ckpt, stop_at=cfg.steps // 2, progress=False, **kw)
    torch.manual_seed(999)  # a different global RNG state: the checkpoint must restore it
    again = build()
    fit(again, sampler, cfg, checkpoint=ckpt, resume=True, progress=False, **kw)
    return straight, again


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], Tensor):
            assert torch.equal(sa[k], sb[k]), k
        else:
            assert sa[k] == sb[k], k


def test_vae_resume_is_exact_with_kl_warmup(tmp_path: Path) -> None:
    from nfcourse.vae import VAE, ELBOObjective

    cfg = TrainConfig(steps=20, batch_size=32, lr=3e-3, warmup=2, eval_every=5, eval_size=64)
    straight, again = _fit_twice(
        lambda: ELBOObjective(VAE(2, 1, hidden=8), kl_warmup=15).double(), _two_moons64, cfg,
        tmp_path)
    assert straight.calls == again.calls == 20  # type: ignore[attr-defined]
    _assert_same(straight, again)


def test_vae_restore_best_does_not_rewind_the_warmup(tmp_path: Path) -> None:
    from nfcourse.vae import VAE, ELBOObjective

    torch.manual_seed(0)
    objective = ELBOObjective(VAE(2, 1, hidden=8), kl_warmup=15)
    cfg = TrainConfig(steps=12, batch_size=32, lr=3e-3, warmup=2, eval_every=3, eval_size=64)
    fit(objective, lambda n, g: torch.randn(n, 2, generator=g), cfg, progress=False)
    assert objective.calls == 12


@pytest.mark.parametrize("name", ["realnvp", "glow_2d", "nice"])
def test_fit_resume_is_exact_in_float64(name: str, tmp_path: Path) -> None:
    spec = _small_specs()[name]
    cfg = TrainConfig(steps=10, batch_size=32, warmup=2, eval_every=5, eval_size=64)
    straight, again = _fit_twice(lambda: build_model(spec).double(), _two_moons64, cfg,
                                 tmp_path, model_spec=spec)
    _assert_same(straight, again)


def test_train_images_resume_is_exact(tmp_path: Path) -> None:
    from nfcourse.flows.images import VariationalDequantizer
    from nfcourse.training.images import train_images

    spec = _small_specs()["tiny_realnvp"]
    images = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=6, batch_size=8, warmup=0, eval_every=3, eval_size=8,
                      weight_decay=0.0)

    def run(stop_at: int | None, resume: bool) -> tuple[nn.Module, nn.Module]:
        torch.manual_seed(0)
        model, deq = build_model(spec), VariationalDequantizer(1, hidden=4)
        train_images(model, images, cfg, eval_images=images[:8], dequantizer=deq,
                     checkpoint=tmp_path / "img.pt", resume=resume, stop_at=stop_at,
                     model_spec=spec, progress=False)
        return model, deq

    straight = run(None, False)
    run(3, False)
    again = run(None, True)
    _assert_same(straight[0], again[0])
    _assert_same(straight[1], again[1])


@pytest.mark.parametrize("ema", [0.99, None])
def test_train_cfm_resume_is_exact(ema: float | None, tmp_path: Path) -> None:
    from nfcourse.matching import StraightPath, train_cfm
    from nfcourse.nn import VelocityMLP

    spec = _small_specs()["velocity_mlp"]

    def run(**kw: Any) -> Any:
        torch.manual_seed(0)
        field = VelocityMLP(**spec["kwargs"])
        hist = train_cfm(field, StraightPath(), lambda n, g: torch.randn(n, 2, generator=g) + 2,
                         steps=12, batch_size=16, seed=4,
                         ema=ema, checkpoint=tmp_path / "cfm.pt", model_spec=spec, **kw)
        return field, hist

    straight, h_straight = run()
    run(stop_at=5)
    again, h_again = run(resume=True)
    _assert_same(straight, again)
    assert h_again.train_loss == h_straight.train_loss
    x = _inputs(straight)
    got = _load_fresh(tmp_path / "cfm.pt", x, tmp_path)  # the finished (EMA) field
    torch.testing.assert_close(got["out"], outputs(straight, x), rtol=0, atol=1e-6)


def test_train_cfm_resume_refuses_other_settings(tmp_path: Path) -> None:
    from nfcourse.matching import StraightPath, train_cfm
    from nfcourse.nn import VelocityMLP

    def sampler(n: int, g: torch.Generator) -> Tensor:
        return torch.randn(n, 2, generator=g)

    train_cfm(VelocityMLP(2, 8, 1), StraightPath(), sampler, steps=4, batch_size=8,
              checkpoint=tmp_path / "c.pt", stop_at=2)
    with pytest.raises(ValueError, match="cannot resume"):
        train_cfm(VelocityMLP(2, 8, 1), StraightPath(), sampler, steps=5, batch_size=8,
                  checkpoint=tmp_path / "c.pt", resume=True)
