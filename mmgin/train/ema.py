"""Post-hoc EMA (Karras et al. 2023, "Analyzing and Improving the Training Dynamics of
Diffusion Models"), as the reference trains it with nitrous-ema.

During training, one power-function EMA per profile (sigma_rel 0.05 and 0.1 by default) is kept
and a float32 snapshot of each is written every `snapshot_every` steps. After training, any
other sigma_rel is synthesized from the snapshots by least squares (Algorithm 3). The snapshot
files use the reference layout (`<profile>.<step>.pt`, keys `ema_model.<key>` plus
`_extra_state`), so snapshots written by the reference trainer synthesize here too.

Each mmgin snapshot names its run (`_extra_state['run_id']`, kept by a resumed run): synthesis
refuses a folder that mixes runs (a run restarted from scratch over another's snapshots), and
a starting run sets aside what it cannot use (`set_aside`). Reference snapshots have no id:
they are one unnamed run.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from absl import logging

from mmgin import io
from mmgin.train.checkpoint import move_aside

PREFIX = "ema_model."
EXTRA_STATE = "_extra_state"
PROFILES_FILE = "profiles.json"
OTHER_RUNS_DIR = "other_runs"
UNUSABLE_DIR = "unusable"
_SNAPSHOT_NAME = re.compile(r"^(\d+)\.(\d+)\.pt$")


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of the power EMA whose relative width is sigma_rel (Algorithm 2):
    the largest real root of g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2)."""
    if sigma_rel <= 0:
        raise ValueError(f"sigma_rel must be positive, got {sigma_rel}")
    inv = sigma_rel ** -2
    gamma = float(np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv]).real.max())
    if gamma <= -1:
        raise ValueError(f"sigma_rel {sigma_rel} is too wide for a power EMA (gamma {gamma} <= -1)")
    return gamma


def ema_beta(step: int, gamma: float, update_every: int = 1) -> float:
    """The decay applied at counter value `step` (counted after the increment, from 1): with
    nitrous-ema's step-size correction, the geometric mean of (1 - 1/(s+1))^(1+gamma) over the
    `update_every` steps an update stands for, raised to update_every."""
    k = update_every
    return ((1 - 1 / (step + 1)) ** (1 + gamma) * (1 - 1 / (step + 1 + k)) ** (1 + gamma)) ** (k / 2)


def ema_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The averaged entries: every floating tensor, frozen parameters and buffers included
    (the reference averages latent statistics and the empty-string feature too)."""
    return [k for k, v in state_dict.items() if torch.is_floating_point(v)]


class PostHocEMA:
    """The EMA profiles of one network, updated after every optimizer step.

    Keep one instance on the rank that writes snapshots (rank 0); the profiles are float32 copies
    on the network's device. `update()` never syncs with the host. EMAConfig checks the settings.
    """

    def __init__(self, network: torch.nn.Module, snapshot_dir: str | Path, sigma_rels: Sequence[float] = (0.05, 0.1),
                 snapshot_every: int = 5000, update_every: int = 1, run_id: str | None = None):
        self.network = network
        self.snapshot_dir = Path(snapshot_dir)
        # Temp files of a snapshot write killed half-way (the next write would not replace them).
        io.remove_stale_temps(self.snapshot_dir / "*", name_is_glob=True)
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.snapshot_every = int(snapshot_every)
        self.update_every = int(update_every)
        self.run_id = run_id
        self.step = 0
        self.initted = False
        online = network.state_dict()
        self.keys = ema_keys(online)
        self.profiles: list[list[torch.Tensor]] = [
            [online[k].detach().to(torch.float32, copy=True) for k in self.keys] for _ in self.gammas
        ]

    @torch.no_grad()
    def update(self) -> None:
        step_before = self.step
        self.step += 1
        if step_before % self.update_every == 0:
            state = self.network.state_dict()
            online = [state[k].detach().float() for k in self.keys]
            if not self.initted:
                for profile in self.profiles:
                    torch._foreach_copy_(profile, online)
                self.initted = True
            for gamma, profile in zip(self.gammas, self.profiles):
                beta = ema_beta(self.step, gamma, self.update_every)
                torch._foreach_lerp_(profile, online, 1.0 - beta)

    def snapshot_due(self) -> bool:
        """Whether this step's snapshot is to be written. The caller writes it (`write_snapshots`)
        outside the timed training step: a snapshot copies every profile to the host and disk."""
        return self.step > 0 and self.step % self.snapshot_every == 0

    def profile_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """One profile as a network state dict (plain keys)."""
        return dict(zip(self.keys, self.profiles[index]))

    def write_snapshots(self) -> None:
        profiles = json.dumps({"sigma_rels": self.sigma_rels, "gammas": self.gammas}, indent=1)
        io.write_text(self.snapshot_dir / PROFILES_FILE, profiles)
        for index in range(len(self.gammas)):
            package: dict[str, object] = {
                PREFIX + k: v.detach().to("cpu", torch.float32, copy=True)
                for k, v in self.profile_state_dict(index).items()
            }
            extra: dict[str, object] = {"initted": self.initted, "step": self.step}
            if self.run_id is not None:  # unnamed: the reference's layout exactly
                extra["run_id"] = self.run_id
            package[EXTRA_STATE] = extra
            io.save_torch(package, self.snapshot_dir / f"{index}.{self.step}.pt")

    def state_dict(self) -> dict[str, object]:
        return {
            "step": self.step,
            "initted": self.initted,
            "sigma_rels": list(self.sigma_rels),
            "keys": list(self.keys),
            "profiles": [[t.detach().cpu() for t in p] for p in self.profiles],
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        if list(state["sigma_rels"]) != self.sigma_rels:
            raise ValueError(
                f"checkpoint EMA has sigma_rels {state['sigma_rels']}, this run {self.sigma_rels}; "
                "keep the EMA profiles of a run fixed when resuming"
            )
        if list(state["keys"]) != self.keys:
            raise ValueError("checkpoint EMA keys differ from the network's state dict")
        self.step = int(state["step"])
        self.initted = bool(state["initted"])
        for mine, saved in zip(self.profiles, state["profiles"]):
            torch._foreach_copy_(mine, [t.to(m.device) for m, t in zip(mine, saved)])


class SnapshotError(ValueError):
    """EMA snapshots that cannot be synthesized as they are; the message says what to move."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One EMA snapshot file: its profile's gamma, the step it was taken at and its run."""

    path: Path
    step: int
    gamma: float
    run_id: str | None = None


def _snapshot_files(folder: Path) -> list[tuple[Path, int, int]]:
    """(path, profile, step) of each `<profile>.<step>.pt` in ``folder``."""
    found = [(p, _SNAPSHOT_NAME.match(p.name)) for p in sorted(folder.iterdir())]
    return [(p, int(m.group(1)), int(m.group(2))) for p, m in found if m]


def _run_id(path: Path) -> str | None:
    """The run a snapshot belongs to (None: unnamed); reads only its pickle (tensors mapped)."""
    extra = io.load_torch(path, mmap=True).get(EXTRA_STATE)
    return extra.get("run_id") if isinstance(extra, dict) else None


def _describe_runs(snapshots: Sequence[Snapshot]) -> str:
    runs: dict[str | None, list[int]] = {}
    for snapshot in snapshots:
        runs.setdefault(snapshot.run_id, []).append(snapshot.step)
    return "; ".join(f"{'run ' + run if run else 'an unnamed run (reference, or mmgin before run ids)'}: "
                     f"{len(steps)} snapshots, steps {min(steps)}-{max(steps)}" for run, steps in runs.items())


def set_aside(folder: str | Path, run_id: str | None) -> None:
    """Moves out of ``folder`` the snapshots a run ``run_id`` cannot synthesize from, never
    deleting them: unreadable ones to `unusable/`, other runs' to `other_runs/<run>/` (with a
    copy of profiles.json, so they still synthesize there). Each move is a warning."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path, _, _ in _snapshot_files(folder):
        try:
            owner = _run_id(path)
        except Exception as e:  # a truncated copy, a foreign file
            moved = move_aside(path, folder / UNUSABLE_DIR)
            logging.warning("EMA snapshot %s is unreadable (%s): moved to %s; synthesis uses the others",
                            path, io.unreadable_reason(e), moved)
            continue
        if owner == run_id:
            continue
        aside = folder / OTHER_RUNS_DIR / (owner or "unnamed")
        if (folder / PROFILES_FILE).is_file() and not (aside / PROFILES_FILE).exists():
            io.write_bytes(aside / PROFILES_FILE, (folder / PROFILES_FILE).read_bytes())
        moved = move_aside(path, aside)
        logging.warning("EMA snapshot %s belongs to %s, not to this run: moved to %s", path,
                        f"run {owner}" if owner else "an unnamed run", moved)


def find_snapshots(folder: str | Path, sigma_rels: Sequence[float] | None = None) -> list[Snapshot]:
    """Lists `<profile>.<step>.pt` files with each profile's gamma.

    The profiles' sigma_rels come from the folder's profiles.json (written by mmgin) or, for
    reference snapshots, from `sigma_rels` (the run's EMA setting, in profile order).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"EMA snapshot folder {folder} does not exist")
    recorded = folder / PROFILES_FILE
    if recorded.is_file():
        sigma_rels = json.loads(recorded.read_text())["sigma_rels"]
    snapshots = []
    for path, profile, step in _snapshot_files(folder):
        if sigma_rels is None or profile >= len(sigma_rels):
            raise ValueError(
                f"{path}: profile {profile} has no sigma_rel ({folder / PROFILES_FILE} is missing); "
                "pass the training run's EMA sigma_rels in profile order"
            )
        try:
            run_id = _run_id(path)
        except Exception as e:
            raise SnapshotError(f"EMA snapshot {path} is unreadable ({io.unreadable_reason(e)}); move it "
                                f"out of {folder} and synthesis uses the others") from None
        snapshots.append(Snapshot(path, step, sigma_rel_to_gamma(sigma_rels[profile]), run_id))
    if not snapshots:
        raise FileNotFoundError(f"no EMA snapshots (<profile>.<step>.pt) in {folder}")
    return snapshots


def p_dot_p(t_a: np.ndarray, gamma_a: np.ndarray, t_b: np.ndarray, gamma_b: np.ndarray) -> np.ndarray:
    """Inner product of two power-EMA averaging profiles (Karras et al., Algorithm 3)."""
    t_ratio = t_a / t_b
    exponent = np.where(t_a < t_b, gamma_b, -gamma_a)
    numerator = (gamma_a + 1) * (gamma_b + 1) * t_ratio ** exponent
    return numerator / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def solve_weights(t_i: Sequence[float], gamma_i: Sequence[float], t_r: float, gamma_r: float) -> np.ndarray:
    """Least-squares weights (float64) so that sum_i w_i profile_i best matches profile (t_r, gamma_r)."""
    t = np.asarray(t_i, dtype=np.float64)
    g = np.asarray(gamma_i, dtype=np.float64)
    a = p_dot_p(t[:, None], g[:, None], t[None, :], g[None, :])
    b = p_dot_p(t, g, np.float64(t_r), np.float64(gamma_r))
    weights, *_ = np.linalg.lstsq(a, b, rcond=None)
    return weights


def synthesize(snapshots: Sequence[Snapshot], sigma_rel: float, step: int | None = None) -> dict[str, torch.Tensor]:
    """The EMA with `sigma_rel` at `step` (default: the latest snapshot), as a plain state dict.

    Only snapshots taken at or before `step` take part, all of one run (SnapshotError naming
    the runs otherwise). Floating tensors are summed in float64 and returned as float32; other
    tensors come from the latest snapshot used.
    """
    if len({s.run_id for s in snapshots}) > 1:
        folders = sorted({str(s.path.parent) for s in snapshots})
        raise SnapshotError(
            f"the EMA snapshots in {', '.join(folders)} are of several runs ({_describe_runs(snapshots)}): "
            "averaging them mixes unrelated weights; move all but one run's snapshots to another folder"
        )
    if step is None:
        step = max(s.step for s in snapshots)
    used = sorted((s for s in snapshots if s.step <= step), key=lambda s: (s.step, s.gamma))
    if len(used) < 2:
        raise ValueError(f"need at least two EMA snapshots at or before step {step}, found {len(used)}")
    weights = solve_weights([s.step for s in used], [s.gamma for s in used], step, sigma_rel_to_gamma(sigma_rel))
    total: dict[str, torch.Tensor] = {}
    for snapshot, weight in zip(used, weights.tolist()):
        package = io.load_torch(snapshot.path)
        for key, value in package.items():
            if key == EXTRA_STATE:
                continue
            name = key[len(PREFIX):] if key.startswith(PREFIX) else key
            if not torch.is_floating_point(value):
                total[name] = value
            elif name in total:
                total[name] += value.double() * weight
            else:
                total[name] = value.double() * weight
    return {k: v.float() if torch.is_floating_point(v) else v for k, v in total.items()}
