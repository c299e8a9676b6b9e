"""One run's configuration (:class:`RunConfig`): its keys and types, their coercion and validation, and the run policy.

Every key is a field of :class:`RunConfig` with its default and a comment; a suite file
(``bench.suite``) and ``--set key=value`` set them, :func:`coerce` checks each value against the
field's type and :func:`validate` what the types do not catch (an unknown key or a wrong type is
an error naming the valid keys). The run policy answers, from a configuration alone, what it can
run where and what it measures: :func:`resolve_device`, :func:`step_mode_unsupported`,
:func:`skipped_measurements`; the driver asks it before any run starts, the loop when it runs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.errors import ConfigError

if TYPE_CHECKING:
    import torch

# How and where a run executes, not what it computes (``field(metadata=PLACED)``): left out of the run
# key (``bench.run.plan.run_key``; the device enters as its type only) and of the coordinates that
# ``bench compare`` pairs runs by.
PLACED = {"placement": True}


@dataclass
class RunConfig:
    """One child run. Metric conventions: nats per example, higher is better.

    ``objective = ""`` and ``k = 0`` mean the variant's default objective and k.

    ``eval_chunk``: how many log-weights one pass of the evaluations (``test/log_px``, the
    validation ELBO, the gaps; latent draws for AIS and BDMC) holds. ``0`` sizes it for the device
    (``bench.passes.pass_bytes``: about 32 MiB of tensors a pass on CPU; on CUDA a quarter of the
    free memory shared among the runs on the GPU, at most 4 GiB); a positive value is used as given.

    ``step_mode``: how each training step (forward, backward, Adam) runs. ``"eager"`` (default):
    plain PyTorch. ``"compile"``: the objective's forward and backward compiled by ``torch.compile``
    (inductor; on CPU it needs a C++ compiler), eager's random streams kept, so the numbers equal
    eager's up to float rounding. ``"cuda-graph"`` (CUDA only): the whole step captured once per
    batch shape in a CUDA graph after 3 eager warm-up steps and replayed (one launch instead of
    about a hundred), Adam ``capturable``. Both refuse objectives with parameters of their own
    (NVIL, REBAR, RELAX: eager only). See ``bench.step.make_step``.

    ``evaluate``: ``"test"`` (default) makes every scheduled and final measurement; ``"validation"``
    is a search trial's (``bench.run.search``): it trains and logs the per-epoch ``train/*`` and
    ``val/*`` metrics and nothing else, so no number a trial logs, and no selection made from
    them, has seen the test split.
    ``optimizer``: the update of the model's parameters at learning rate ``lr``, torch's
    implementations (``bench.step.make_optimizer``): ``"adam"`` (Kingma & Ba 2015, with
    ``adam_eps``), ``"sgd"`` (heavy-ball ``momentum`` mu: ``v <- mu v + g``, ``theta <- theta - lr v``),
    ``"adagrad"`` (Duchi et al. 2011: ``theta <- theta - lr g / (sqrt(sum_s g_s^2) + 1e-10)``;
    Kingma & Welling 2014 use it with lr from {0.01, 0.02, 0.1}) or ``"rmsprop"`` (Tieleman &
    Hinton 2012; torch's alpha 0.99 and eps 1e-8; ``momentum``). ``weight_decay`` (wd) adds
    ``wd * theta`` to every gradient before the update; for Adam it is torch's L2 penalty in the
    gradient, not AdamW's decoupled decay. It is the gradient of ``-log N(theta; 0, I / wd)``: a
    Gaussian prior on the parameters (MAP instead of maximum likelihood for theta), as in Kingma &
    Welling 2014 (sec. 5); since the objective is a mean over examples, a ``N(0, I)`` prior over
    ``N`` training examples is ``wd = 1 / N``.

    ``lr_schedule``: the learning rate of each optimizer step, ``lr_t = lr * m``
    (``bench.schedules``): ``"constant"`` (``m = 1``); ``"burda"`` (per epoch, Burda et al. 2016:
    ``m = 10^(-i/7)`` for 3^i epochs, i = 0..7); ``"exponential"`` (per step:
    ``m = lr_decay ** floor(t / lr_decay_every)``, ``t`` the optimizer steps so far; Jang et al.
    2017's notebook multiplies the rate by 0.9 every 1,000 steps).

    ``prior_optimizer`` and ``prior_lr``: a learned prior's parameters (the ``bernoulli`` variant's
    ``prior_logits``; the ``mog`` and ``vamp`` priors) trained by an optimizer of their own at
    ``prior_lr`` (``0``: ``lr``), with torch's defaults otherwise (no momentum, no weight decay;
    Adam with ``adam_eps``), as in the DisARM code (Dong et al. 2020: the prior's logits by SGD at
    1e-2, everything else by Adam at 1e-4). ``""`` (default): the prior goes with the rest. The
    schedule scales both rates by the same ``m``.

    ``prior``: ``p(z)`` of the Gaussian latent (two-layer variants: of the top layer).
    ``"standard"`` is ``N(0, I)``, the variant's own code unchanged; ``"mog"`` a learned mixture of
    ``prior_components`` diagonal Gaussians; ``"vamp"`` the VampPrior (Tomczak & Welling 2018) with
    ``prior_components`` pseudo-inputs (``variants.priors``). A learned prior has no closed-form
    KL: the ELBO uses ``log p(z) - log q(z | x)`` at the sample.
    """

    variant: str = "vanilla"
    objective: str = ""
    dataset: str = "digits"
    seed: int = 0
    k: int = 0  # samples per example in the training objective
    latent_dim: int = 16
    prior: str = "standard"  # standard (N(0, I)) | mog | vamp: p(z) of the (top) Gaussian latent (variants.priors)
    prior_components: int = 0  # mixture components / VampPrior pseudo-inputs; 0 = the prior's default (mog 10, vamp 500)
    hidden: list[int] = field(default_factory=lambda: [200, 200])
    activation: str = "tanh"
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | burda (per epoch) | exponential (per step) (bench.schedules.LR_SCHEDULES)
    lr_decay: float = 0.0  # exponential: lr * lr_decay ** floor(step / lr_decay_every); 0 = unset
    lr_decay_every: int = 0  # exponential: optimizer steps between two decays; 0 = unset
    optimizer: str = "adam"  # adam | sgd | adagrad | rmsprop (bench.step.make_optimizer)
    momentum: float = 0.0  # sgd and rmsprop only (heavy-ball momentum)
    weight_decay: float = 0.0  # L2 penalty added to the gradient (Adam: not AdamW); a N(0, I/wd) prior on the weights
    adam_eps: float = 1e-8  # Adam's epsilon (torch's default; Burda et al. 2016 use 1e-4)
    prior_optimizer: str = ""  # "" = the prior goes with the rest | adam | sgd | adagrad | rmsprop: a learned prior's own optimizer
    prior_lr: float = 0.0  # the prior's optimizer's learning rate; 0 = lr
    device: str = field(default="auto", metadata=PLACED)  # auto | cpu | cuda | cuda:N
    step_mode: str = "eager"  # eager | compile (torch.compile) | cuda-graph (CUDA only): how the training step runs
    threads: int = field(default=0, metadata=PLACED)  # torch CPU threads; 0 = leave torch's default (recorded either way)
    binarization: str = "dynamic"  # dynamic | static | threshold (x >= 0.5) | none (continuous, Gaussian likelihood)
    shuffle: bool = True  # false: each epoch's minibatches in the training split's order (Burda et al.'s code)
    train_size: int = 0  # 0 = the whole training split (a prefix otherwise: reduced suites)
    val_size: int = 0  # 0 = the dataset's validation split (MNIST: the last 10,000 training images)
    init_decoder_bias: bool = False  # start the decoder's output bias at the training mean's logits
    test_size: int = 0  # 0 = the whole test split
    val_k: int = 5  # samples per example for the per-epoch validation ELBO
    eval_k: int = 1000  # samples per example for the test log-likelihood (5000 in the papers)
    eval_chunk: int = 0  # log-weights (AIS: latent draws) per evaluation pass; 0 = sized for the device
    gap_epochs: list[int] = field(default_factory=list)  # gaps after these epochs; final always
    gap_size: int = 100  # fixed test subset for the gaps
    gap_steps: int = 1000  # step budget of the local (per-datapoint) optimization
    gap_k: int = 0  # samples for log p(x) in the gaps; 0 = eval_k
    grad_epochs: list[int] = field(default_factory=list)  # gradient stats after these; final always
    grad_objectives: list[str] = field(default_factory=list)  # extra objectives measured
    grad_ks: list[int] = field(default_factory=list)  # k values for grad_objectives; [] = [k]
    grad_draws: int = 50
    grad_batch: int = 64
    grad_fit_steps: int = 100  # a trainable grad_objective's own parameters are fitted this long first
    kl_warmup_epochs: int = 0  # KL weight 0 -> 1 linearly over this many epochs (per step); 0 = off
    ais_size: int = 0  # first test examples scored by AIS (test/log_px_ais); 0 = off
    ais_chains: int = 16  # AIS chains per example (plus 4 pilot chains that tune the HMC step)
    ais_steps: int = 500  # AIS intermediate distributions (sigmoid schedule), for BDMC too
    bdmc_size: int = 0  # points simulated from the model for BDMC (test/bdmc_gap); 0 = off
    gap_log_px: str = "iwae"  # iwae | max-iwae-ais: the gaps' log p(x), per example
    evaluate: str = "test"  # test | validation: "validation" (a search trial) trains, logs val/* and never reads the test split
    data_dir: str = field(default="", metadata=PLACED)  # where downloaded / user-provided datasets live; "" = ./data
    variant_options: dict = field(default_factory=dict)
    objective_options: dict = field(default_factory=dict)  # objective name -> its keyword options

    def params(self) -> dict[str, str]:
        """Flat string params for MLflow (lists joined by commas, options as key.option)."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "variant_options":
                out.update({f"option.{k}": str(x) for k, x in v.items()})
            elif f.name == "objective_options":
                out.update({f"objective_option.{o}.{k}": str(x) for o, opts in v.items() for k, x in opts.items()})
            elif isinstance(v, list):
                out[f.name] = ",".join(map(str, v))
            else:
                out[f.name] = str(v)
        return out

    @property
    def run_name(self) -> str:
        return f"{self.variant}/{self.objective}/{self.dataset}/seed{self.seed}"


OPTIMIZERS = ("adam", "sgd", "adagrad", "rmsprop")  # the values of ``optimizer`` (bench.step.make_optimizer)
WITH_MOMENTUM = ("sgd", "rmsprop")  # the optimizers that take ``momentum``


# -- run policy: what a configuration can run where, and what it measures ------------------------
def resolve_device(name: str) -> torch.device:
    """The device ``name`` (``auto``: CUDA where there is a GPU, else the CPU) names here; a CUDA
    device where CUDA is not available is a :class:`ConfigError`."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use device=auto or cpu")
    return dev


def step_mode_unsupported(cfg: RunConfig) -> str | None:
    """Why ``cfg.step_mode`` cannot run this configuration (a sentence), or ``None``."""
    from bench import objectives

    if cfg.step_mode == "eager":
        return None
    if objectives.spec(cfg.objective).trainable:
        return (f"step_mode = {cfg.step_mode!r} does not run objective {cfg.objective!r}, which trains parameters "
                "of its own (a second optimizer; REBAR and RELAX take a double backward): use step_mode = 'eager'")
    if cfg.step_mode == "cuda-graph" and cfg.device == "cpu":
        return "step_mode = 'cuda-graph' needs a CUDA device (device = cuda, or auto on a machine with a GPU)"
    if cfg.step_mode == "cuda-graph" and (cfg.optimizer != "adam" or cfg.prior_optimizer):
        return (f"step_mode = 'cuda-graph' captures Adam only (torch's capturable Adam keeps its step counters on "
                f"the device), not optimizer = {cfg.optimizer!r}"
                + (f" with prior_optimizer = {cfg.prior_optimizer!r}" if cfg.prior_optimizer else "")
                + ": use step_mode = 'compile' or 'eager'")
    return None


def learned_prior(cfg: RunConfig, variant_cls) -> bool:
    """Whether the run's prior has parameters of its own: a ``mog`` or ``vamp`` prior
    (``variants.priors``), or the variant's own learned prior (its ``prior_parameter_names``,
    e.g. the ``bernoulli`` variant's ``prior_logits``)."""
    return cfg.prior != "standard" or bool(getattr(variant_cls, "prior_parameter_names", ()))


def skipped_measurements(cfg: RunConfig, variant_cls) -> dict[str, str]:
    """Measurements this run skips, each with its reason: the variant's ``not_applicable``
    (``"log_px"``, ``"gaps"``, ``"grad"``, ``"active_units"``), plus ``"log_px"`` whenever q is a
    point mass and ``eval_k > 1``, and ``"ais"`` (AIS and BDMC) where the config asks for them
    and the variant has no continuous latent (``bench.ais.unsupported``) (importance sampling would repeat one sample: the IWAE estimate
    equals the ELBO and is no estimate of log p(x)). The loop does not compute them; the driver
    records each as the tag ``vaebench.skipped.<name>`` of the run."""
    from bench import ais

    out = dict(getattr(variant_cls, "not_applicable", {}))
    if getattr(variant_cls, "deterministic_q", False) and cfg.eval_k > 1 and "log_px" not in out:
        out["log_px"] = (
            f"q(z | x) is a point mass: importance sampling with eval_k = {cfg.eval_k} repeats one "
            "sample, so the estimate is the ELBO (test/elbo), not an estimate of log p(x)"
        )
    wants_ais = cfg.ais_size > 0 or cfg.bdmc_size > 0 or cfg.gap_log_px == "max-iwae-ais"
    reason = ais.unsupported(variant_cls) if wants_ais else None
    if reason and "ais" not in out:  # AIS (test/log_px_ais, the gaps' max) and BDMC (test/bdmc_gap)
        out["ais"] = reason
    return out


def sampling_modes(cfg: RunConfig, variant_cls) -> set[str]:
    """The sampling modes (``variants.base.MODES``) a run draws in: its objective's, those of its
    ``grad_objectives`` (measured on the same model), and the variant's ``eval_mode`` (every
    bound, log p(x) and gap it logs)."""
    from bench import objectives

    modes = {variant_cls.eval_mode}
    for name in (cfg.objective, *cfg.grad_objectives):
        modes |= objectives.spec(name).modes
    return modes


def unread_options(cfg: RunConfig, variant_cls) -> set[str]:
    """The variant options this run does not read: those of the variant's ``mode_options`` none
    of whose modes the run samples in (:func:`sampling_modes`); the temperature schedule of a
    discrete variant trained and measured with the score function, for instance. Two
    configurations that differ only there compute the same numbers, bit for bit."""
    modes = sampling_modes(cfg, variant_cls)
    return {o for o, read_in in getattr(variant_cls, "mode_options", {}).items() if not read_in & modes}


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
PLACEMENT = tuple(f.name for f in dataclasses.fields(RunConfig) if f.metadata.get("placement"))
SETTABLE = sorted(
    k for k in FIELDS if k not in ("variant", "objective", "dataset", "seed", "variant_options", "objective_options")
)
GRID_KEYS = ("variants", "objectives", "datasets", "seeds")
_HINTS = typing.get_type_hints(RunConfig)


def coerce(key: str, value, *, source: str):
    """Check ``value`` (from TOML or a ``key=value`` string) against the type of ``key``: a list
    of int or str, or a bool, int, float or str (the types of the settable RunConfig fields)."""
    t = _HINTS[key]
    if typing.get_origin(t) is list:
        (item,) = typing.get_args(t)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list of {item.__name__}, got {value!r}")
        return [_scalar(key, item, v, source) for v in value]
    return _scalar(key, t, value, source)


def _scalar(key: str, t: type, value, source: str):
    if isinstance(value, str) and t is not str and source != "--set":
        raise ConfigError(f"{source}: {key} must be {t.__name__}, got the string {value!r}")
    try:
        if t is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if t is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if t is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if t is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{source}: {key} must be {t.__name__}, got {value!r}")


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``["epochs=3", "hidden=64,64"]`` -> typed dict; grid keys stay lists of strings."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        if key in GRID_KEYS:
            vals = [v.strip() for v in raw.split(",") if v.strip()]
            out[key] = [_scalar(key, int, v, "--set") for v in vals] if key == "seeds" else vals
        elif key in SETTABLE:
            out[key] = coerce(key, raw, source="--set")
        else:
            raise ConfigError(
                f"--set: unknown key {key!r}; valid keys: {', '.join(SETTABLE + list(GRID_KEYS))}"
            )
    return out


def validate(cfg: RunConfig, where: str) -> None:
    """Values the types do not catch; ``where`` (the suite file) starts every message."""
    from bench import objectives
    from bench.schedules import LR_SCHEDULES
    from variants.nets import ACTIVATIONS

    choices = {
        "binarization": ("dynamic", "static", "threshold", "none"),
        "activation": tuple(ACTIVATIONS),
        "lr_schedule": tuple(LR_SCHEDULES),
        "gap_log_px": ("iwae", "max-iwae-ais"),
        "step_mode": ("eager", "compile", "cuda-graph"),
        "evaluate": ("test", "validation"),
        "optimizer": OPTIMIZERS,
        "prior_optimizer": ("", *OPTIMIZERS),
    }
    for key, valid in choices.items():
        if getattr(cfg, key) not in valid:
            names = ", ".join(v or '""' for v in valid)
            raise ConfigError(f"{where}: {key} must be one of {names}, got {getattr(cfg, key)!r}")
    positive = ("epochs", "batch_size", "k", "latent_dim", "val_k", "eval_k", "gap_size", "grad_draws", "grad_batch")
    for key in (*positive, "ais_chains", "ais_steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{where}: {key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.eval_chunk < 0:
        raise ConfigError(f"{where}: eval_chunk must be >= 0 (0 = sized for the device), got {cfg.eval_chunk}")
    if cfg.step_mode != "eager":
        why = step_mode_unsupported(cfg)
        if why:
            raise ConfigError(f"{where}: {cfg.run_name}: {why}")
    for key in ("ais_size", "bdmc_size"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{where}: {key} must be >= 0, got {getattr(cfg, key)}")
    if not cfg.lr > 0:
        raise ConfigError(f"{where}: lr must be > 0, got {cfg.lr}")
    if not cfg.adam_eps > 0:
        raise ConfigError(f"{where}: adam_eps must be > 0, got {cfg.adam_eps}")
    _validate_optimizer(cfg, where)
    if cfg.val_size < 0:
        raise ConfigError(f"{where}: val_size must be >= 0 (0 = the dataset's split), got {cfg.val_size}")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"{where}: device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    from variants import priors

    if cfg.prior_components < 0:
        raise ConfigError(f"{where}: prior_components must be >= 0 (0 = the prior's default), got {cfg.prior_components}")
    if cfg.prior == "standard" and cfg.prior_components:
        raise ConfigError(f"{where}: prior_components = {cfg.prior_components} needs prior = 'mog' or 'vamp' "
                          "(the standard prior N(0, I) has no components)")
    import variants

    why = priors.unsupported(variants.get(cfg.variant), cfg.prior, cfg.variant_options)
    if why:
        raise ConfigError(f"{where}: {cfg.run_name}: {why}")
    if cfg.prior_optimizer and not learned_prior(cfg, variants.get(cfg.variant)):
        raise ConfigError(
            f"{where}: {cfg.run_name}: prior_optimizer = {cfg.prior_optimizer!r} but the prior has no parameters "
            f"(variant {cfg.variant!r} with prior = {cfg.prior!r}); a learned prior: prior = 'mog' or 'vamp', or a "
            "variant that learns its own (bernoulli)")
    for o in cfg.grad_objectives:
        if o not in objectives.available():
            raise ConfigError(f"{where}: grad_objectives: unknown objective {o!r}; valid: {', '.join(objectives.available())}")
    if cfg.kl_warmup_epochs < 0 or cfg.grad_fit_steps < 0:
        raise ConfigError(f"{where}: kl_warmup_epochs and grad_fit_steps must be >= 0")
    if cfg.kl_warmup_epochs and not objectives.spec(cfg.objective).warmup:
        with_warmup = [o for o in objectives.available() if objectives.spec(o).warmup]
        raise ConfigError(
            f"{where}: kl_warmup_epochs = {cfg.kl_warmup_epochs} but objective {cfg.objective!r} has no "
            "separate KL term to warm up (IWAE-type bounds such as iwae, dreg and vimco weight the whole "
            f"log-weight inside a log-mean-exp); objectives with warm-up: {', '.join(with_warmup)}"
        )
    for name, opts in cfg.objective_options.items():
        try:
            objectives.build(name, **opts)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where} [objective_options.{name}]: {e}") from None


def _validate_optimizer(cfg: RunConfig, where: str) -> None:
    """The optimizer's and the schedule's keys: each one used only where it applies."""
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"{where}: momentum must be in [0, 1), got {cfg.momentum}")
    if cfg.momentum and cfg.optimizer not in WITH_MOMENTUM:
        raise ConfigError(f"{where}: momentum = {cfg.momentum} applies to optimizer = {' or '.join(WITH_MOMENTUM)}, "
                          f"not {cfg.optimizer!r} (Adam's moments are its betas)")
    if not cfg.weight_decay >= 0:
        raise ConfigError(f"{where}: weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.adam_eps != RunConfig.adam_eps and "adam" not in (cfg.optimizer, cfg.prior_optimizer):
        raise ConfigError(f"{where}: adam_eps = {cfg.adam_eps} but no parameter is trained by Adam "
                          f"(optimizer = {cfg.optimizer!r})")
    if cfg.lr_schedule == "exponential":
        if not (0 < cfg.lr_decay <= 1 and cfg.lr_decay_every >= 1):
            raise ConfigError(f"{where}: lr_schedule = 'exponential' needs lr_decay in (0, 1] and lr_decay_every >= 1 "
                              f"(steps), got {cfg.lr_decay} and {cfg.lr_decay_every} (Jang et al.'s notebook: 0.9, 1000)")
    elif cfg.lr_decay or cfg.lr_decay_every:
        raise ConfigError(f"{where}: lr_decay and lr_decay_every apply to lr_schedule = 'exponential', "
                          f"not {cfg.lr_schedule!r}")
    if cfg.prior_lr < 0:
        raise ConfigError(f"{where}: prior_lr must be >= 0 (0 = lr), got {cfg.prior_lr}")
    if cfg.prior_lr and not cfg.prior_optimizer:
        raise ConfigError(f"{where}: prior_lr = {cfg.prior_lr} needs prior_optimizer "
                          f"(one of {', '.join(OPTIMIZERS)}); without it the prior goes with the rest at lr")
