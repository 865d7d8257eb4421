"""The sampler registry: one `Sampler` record per `config.sampling.name`. No jax.

Config validation (choices.SAMPLERS, config_lib), builders.build_plan, evaluate's default_name /
curve_name, the sampler bench (tools/bench_samplers.py) and the sampler table
(tools/paper_tables.py) all read it. Adding a sampler is its plan function (jdiff/sampling.py),
one `register(Sampler(...))` below, and its test.

A record says how to build the plan from the config's sampling fields (`plan(s, context)`,
`context` a PlanContext: the betas, the diffusion, the resolved step schedule and the keyword
arguments every plan takes), which `config.sampling` fields it reads, its reference defaults
(x0 clipping, what schedule='auto' means), its names (the evaluation folder stem, the plot
curve, the tables' label) and the rows it adds to the sampler bench and the sampler table.
The plan functions get jdiff.sampling / jdiff.schedules in their PlanContext, so this module
imports no jax (config validation runs before jax loads).
"""

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

from jdiff import choices


@dataclasses.dataclass(frozen=True)
class PlanContext:
  """What every plan builder gets besides the sampling fields."""
  betas: Any            # float64 [T]
  diffusion: Any        # diffusion.GaussianDiffusion of the full chain
  steps: int            # sampling.steps (or the override)
  schedule: str         # sampling.schedule with 'auto' resolved to the sampler's default
  common: Dict[str, Any]  # variance_type, clip_denoised, depth_schedule
  # The modules the plans are built with (jdiff.sampling, jdiff.schedules), handed in by
  # builders.build_plan: this registry is read by config validation, which imports no jax.
  sampling: Any = None
  schedules: Any = None

  @property
  def num_timesteps(self) -> int:
    return len(self.betas)


@dataclasses.dataclass(frozen=True)
class Sampler:
  """One sampler. s below is config.sampling (or a mapping with its fields)."""
  name: str
  title: str                                    # its name in tables, plots and the docs
  plan: Callable[[Any, PlanContext], Any]       # (s, context) -> sampling.Plan
  label: Callable[[Any, int], str]              # (s, network evaluations) -> "ddim50_eta0.0"
  curve: Callable[[Any], str]                   # (s) -> "DDIM eta=0.0" (the step count left out)
  fields: Tuple[str, ...] = ()                  # config.sampling fields it reads
  clip_x0: bool = False                         # what its reference code does (clip_x0='auto')
  schedules: Tuple[str, ...] = ()               # allowed sampling.schedule values besides 'auto'
  default_schedule: Optional[str] = None        # what schedule='auto' means
  min_steps: int = 1                            # sampling.steps at least
  uses_steps: bool = True                       # False: runs all T steps (ancestral)
  validate: Optional[Callable[[Any, Callable], None]] = None  # (config, check) more rules
  bench: Callable[[Any], List[Tuple[str, Dict]]] = lambda config: []
  # (config) -> [(bench label, builders.build_plan overrides)] for the sampler bench.
  table_rows: Callable[[Any, int, Any], List[Tuple[str, str, Dict]]] = (
      lambda config, steps, settings: [])
  # (config, S, settings) -> [(row key, row label, sampling fields)] for the sampler table.

  def resolve_schedule(self, schedule: str) -> str:
    return self.default_schedule if schedule == "auto" and self.default_schedule else schedule


REGISTRY: Dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
  if sampler.name in REGISTRY:
    raise ValueError(f"sampler {sampler.name!r} is registered twice")
  REGISTRY[sampler.name] = sampler
  return sampler


def names() -> Tuple[str, ...]:
  return tuple(REGISTRY)


def get(name: str) -> Sampler:
  try:
    return REGISTRY[name]
  except KeyError:
    raise ValueError(f"sampler {name!r}: allowed {names()}") from None


def all_schedules() -> Tuple[str, ...]:
  """Every sampling.schedule value some sampler accepts (the field table's check)."""
  seen = []
  for sampler in REGISTRY.values():
    seen += [value for value in sampler.schedules if value not in seen]
  return tuple(seen)


def bench_families() -> Tuple[str, ...]:
  """The sampler bench's families: 'ddpm' (ancestral, always run as the baseline), every other
  registered sampler, and 'surrogate'."""
  return ("ddpm",) + tuple(name for name in REGISTRY if name != "ancestral") + ("surrogate",)


# ------------------------------------------------------------------------------------------------
# DDPM ancestral, respaced, DDIM, FastDPM


register(Sampler(
    name="ancestral", title="DDPM ancestral",
    plan=lambda s, c: c.sampling.ancestral_plan(c.diffusion, **c.common),
    label=lambda s, evaluations: f"ancestral{evaluations}",
    curve=lambda s: "ancestral",
    clip_x0=True, uses_steps=False,
    bench=lambda config: [(f"DDPM-{config.diffusion.num_timesteps}", dict(name="ancestral"))]))


def _validate_respaced(config, check):
  s, d = config.sampling, config.diffusion
  sections = choices.parse_section_counts(s.respacing)
  if sections is not None:
    check(s.steps == sum(sections), "sampling.steps", s.steps,
          f"the sum of sampling.respacing={s.respacing!r} ({sum(sections)})")
    check(all(count <= d.num_timesteps // len(sections) for count in sections),
          "sampling.respacing", s.respacing,
          f"at most {d.num_timesteps // len(sections)} steps per section "
          f"({len(sections)} sections of {d.num_timesteps} steps)")
  if s.respacing == "ddim":
    check(any(len(range(0, d.num_timesteps, stride)) == s.steps
              for stride in range(1, d.num_timesteps + 1)), "sampling.steps", s.steps,
          f"a count that some stride of range(0, {d.num_timesteps}, stride) gives exactly, "
          "with sampling.respacing='ddim' (or use 'even')")


register(Sampler(
    name="respaced", title="respaced",
    plan=lambda s, c: c.sampling.respaced_plan(
        c.betas, c.schedules.respaced_steps(c.num_timesteps, c.steps, s.respacing), **c.common),
    label=lambda s, evaluations: f"respaced{s.steps}-{s.respacing}",
    curve=lambda s: f"respaced-{s.respacing}",
    fields=("steps", "respacing"), clip_x0=True, validate=_validate_respaced,
    bench=lambda config: [(f"respaced-{k}", dict(name="respaced", steps=k, respacing="even"))
                          for k in (100, 50) if k <= config.diffusion.num_timesteps],
    table_rows=lambda config, steps, settings: [
        (f"respaced{steps}", "respaced (even)", dict(name="respaced", steps=steps,
                                                     respacing="even"))]))


def _ddim_bench(config):
  schedule = config.sampling.schedule
  if schedule not in choices.STEP_SCHEDULES:  # auto, or another sampler's name
    schedule = "uniform"
  return [(f"DDIM-{k} ({schedule})", dict(name="ddim", steps=k, eta=0.0, schedule=schedule))
          for k in (50, 20, 10) if k <= config.diffusion.num_timesteps]


register(Sampler(
    name="ddim", title="DDIM",
    plan=lambda s, c: c.sampling.ddim_plan(
        c.betas, c.schedules.step_schedule(c.num_timesteps, c.steps, c.schedule), eta=s.eta,
        **c.common),
    label=lambda s, evaluations: f"ddim{s.steps}_eta{s.eta}",
    curve=lambda s: f"DDIM eta={s.eta}",
    fields=("steps", "schedule", "eta"), schedules=choices.STEP_SCHEDULES,
    default_schedule="uniform", min_steps=2, bench=_ddim_bench,
    table_rows=lambda config, steps, settings: [
        (f"ddim{steps}-eta0", "DDIM eta=0", dict(name="ddim", steps=steps, eta=0.0)),
        (f"ddim{steps}-eta1", "DDIM eta=1", dict(name="ddim", steps=steps, eta=1.0))]))


def _validate_fastdpm(config, check):
  s, d = config.sampling, config.diffusion
  allowed = choices.VAR_SCHEDULES if s.fastdpm_kind == "var" else choices.STEP_SCHEDULES
  what = ("for FastDPM VAR" if s.fastdpm_kind == "var" else
          f"for sampling.name={s.name!r} (fastdpm_kind={s.fastdpm_kind!r})")
  check(s.schedule in ("auto",) + allowed, "sampling.schedule", s.schedule,
        f"one of {['auto', *allowed]} {what}")
  check(d.beta_schedule == "linear" and d.beta_end > d.beta_start and d.num_timesteps >= 2,
        "diffusion.beta_schedule", d.beta_schedule,
        "'linear' with beta_end > beta_start and num_timesteps >= 2 for FastDPM (its "
        "continuous noise map is that of a linear schedule)")


def _fastdpm_bench(config):
  if config.diffusion.beta_schedule != "linear":
    return []
  return [(f"FastDPM-{kind.upper()}-{reverse}-{s} (quadratic)",
           dict(name="fastdpm", steps=s, fastdpm_kind=kind, schedule="quadratic", kappa=kappa))
          for kind in ("var", "step") for reverse, kappa in (("DDPM-rev", 1.0), ("DDIM-rev", 0.0))
          for s in (10, 20, 50, 100) if s <= config.diffusion.num_timesteps]


def _fastdpm_rows(config, steps, settings):
  rows = []
  schedule = settings["fastdpm_schedule"]
  for kind in ("var", "step"):
    # FastDPM's variance schedules are linear | quadratic; its step schedules uniform | quadratic.
    kind_schedule = "linear" if kind == "var" and schedule == "uniform" else schedule
    for kappa, reverse in ((1.0, "DDPM-rev"), (0.0, "DDIM-rev")):
      rows.append((f"fastdpm-{kind}{steps}-kappa{kappa:g}-{kind_schedule}",
                   f"FastDPM-{kind.upper()} {reverse}",
                   dict(name="fastdpm", fastdpm_kind=kind, steps=steps, kappa=kappa,
                        schedule=kind_schedule)))
  return rows


register(Sampler(
    name="fastdpm", title="FastDPM",
    plan=lambda s, c: c.sampling.fastdpm_plan(
        c.betas, c.steps, kind=s.fastdpm_kind, schedule=c.schedule, kappa=s.kappa,
        var_domain=s.var_domain, **c.common),
    label=lambda s, evaluations: f"fastdpm-{s.fastdpm_kind}{s.steps}_kappa{s.kappa}",
    curve=lambda s: f"FastDPM-{s.fastdpm_kind.upper()} kappa={s.kappa}",
    fields=("steps", "schedule", "kappa", "fastdpm_kind", "var_domain"),
    schedules=tuple(dict.fromkeys(choices.STEP_SCHEDULES + choices.VAR_SCHEDULES)),
    default_schedule="quadratic", min_steps=2, validate=_validate_fastdpm, bench=_fastdpm_bench,
    table_rows=_fastdpm_rows))


# ------------------------------------------------------------------------------------------------
# Multistep solvers: DPM-Solver++ (data prediction), DPM-Solver (noise prediction), UniPC.
#
# Defaults are the official DPM-Solver code's for a discrete-time DDPM (dpm_solver_pytorch
# DPM_Solver.sample's defaults, its README's advice): order 2 (multistep DPM-Solver++ 2M),
# skip_type 'time_uniform' (steps uniform in t = (tau + 1) / T from T - 1 down to 0, the model
# at real steps), lower_order_final (below 10 steps), no x0 correction (correcting_x0_fn=None),
# ending at step 0's noise level (t_end = 1/T, no denoise_to_zero). UniPC: the official UniPC
# class's variant 'bh1' (diffusers' default is bh2). schedule=linspace|leading|trailing is
# diffusers' DPMSolverMultistepScheduler / UniPCMultistepScheduler step for step
# (sampling.multistep_plan).


def _solver_plan(kind):
  def plan(s, c):
    return c.sampling.multistep_plan(c.betas, c.steps, kind=kind, spacing=c.schedule,
                                      order=s.order, variant=s.unipc_variant,
                                      lower_order_final=s.lower_order_final, **c.common)
  return plan


def _validate_solver(config, check):
  s = config.sampling
  check(s.steps >= s.order, "sampling.steps", s.steps,
        f">= sampling.order ({s.order}) for sampling.name={s.name!r} (the references assert "
        "steps >= order)")


def _solver_suffix(s) -> str:
  schedule = s.schedule if s.schedule != "auto" else "time_uniform"
  return "" if (schedule == "time_uniform" and s.lower_order_final) else (
      f"_{schedule}" + ("" if s.lower_order_final else "_nolof"))


_SOLVER_FIELDS = ("steps", "schedule", "order", "lower_order_final")


def _solver_spacing(config) -> str:
  """The config's schedule when it is a solver spacing, else 'auto' (another sampler's value)."""
  schedule = config.sampling.schedule
  return schedule if schedule in choices.SOLVER_SPACINGS else "auto"


def _solver_rows(name, title, extra=None):
  def rows(config, steps, settings):
    fields = dict(name=name, steps=steps, order=2, schedule=_solver_spacing(config),
                  **(extra or {}))
    return [(f"{name}{steps}", title, fields)] if steps >= 2 else []
  return rows


def _solver_bench(name, title, extra=None):
  def bench(config):
    return [(f"{title}-{k}", dict(name=name, steps=k, order=2, schedule=_solver_spacing(config),
                                  **(extra or {})))
            for k in (20, 10, 5) if k <= config.diffusion.num_timesteps]
  return bench


def _register_solver(name: str, title: str, label: Callable, curve: Callable,
                     extra_fields: Tuple[str, ...] = (), row_title: str = "",
                     row_fields: Optional[Dict[str, Any]] = None) -> None:
  """One multistep solver: its plan is sampling.multistep_plan(kind=name); with row_title, it
  has rows in the sampler bench and the sampler table (order 2, that title)."""
  rows = dict(bench=_solver_bench(name, row_title, row_fields),
              table_rows=_solver_rows(name, row_title, row_fields)) if row_title else {}
  register(Sampler(
      name=name, title=title, plan=_solver_plan(name),
      label=lambda s, evaluations: label(s) + _solver_suffix(s),
      curve=lambda s: curve(s) + _solver_suffix(s).replace("_", " "),
      fields=_SOLVER_FIELDS + extra_fields, schedules=choices.SOLVER_SPACINGS,
      default_schedule="time_uniform", validate=_validate_solver, **rows))


_register_solver("dpm_solver_pp", "DPM-Solver++", lambda s: f"dpmpp{s.order}m{s.steps}",
                 lambda s: f"DPM-Solver++ {s.order}M", row_title="DPM-Solver++ 2M")
_register_solver("dpm_solver", "DPM-Solver", lambda s: f"dpm{s.order}m{s.steps}",
                 lambda s: f"DPM-Solver {s.order}M")
_register_solver("unipc", "UniPC", lambda s: f"unipc-{s.unipc_variant}-{s.order}o{s.steps}",
                 lambda s: f"UniPC {s.unipc_variant} order {s.order}",
                 extra_fields=("unipc_variant",), row_title="UniPC bh1",
                 row_fields=dict(unipc_variant="bh1"))
