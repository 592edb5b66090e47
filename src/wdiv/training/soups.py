"""Model soups (Wortsman et al. 2022): the averaged final weights of runs that share a start.

Members are the complete runs under RUNS_DIR that share a starting checkpoint (run.json
``pretrained.sha256``), recipe, model and data, further grouped by ``--group`` keys:

* ``arm``: the run's category (arm and variant: one soup per arm, its levels and seeds together);
* ``level``: arm, variant and level (a soup of one level's seeds; implies ``arm``);
* ``seed``: the seed (a soup of every arm and level of one seed).

Two kinds per group, each its own run directory ``RUNS_DIR/soup/<cell>/by-<keys>/<group>/<kind>/``:

* ``uniform``: the mean of every member's weights (float tensors averaged in float64, in run-id
  order, then cast back to their dtype; integer buffers, equal in every member, copied);
* ``greedy``: members sorted by validation accuracy (best first, ties by run id); the best starts
  the soup, each next one is kept only when the uniform mean of the kept ones with it scores a
  validation accuracy at least the current soup's. Its validation accuracy is therefore never
  below its best member's.

Validation accuracy is computed here, for members and soups alike, on the validation split the
members trained with: it depends on the data config alone (``data.split_seed``), which every
member must share (checked). A soup is scored like a run (test accuracy, loss, ECE, OOD sets) and
its run.json has arm ``soup``, variant = kind, level = the group's name, the members' recipe,
model, data and ``pretrained``, so ``wdiv.analyze --base`` and ``wdiv.report`` take it as a run
of its members' cell. Its ``seed`` is the members' seed when they share one (its D is against
that seed's baseline, as theirs is); a soup across seeds takes its lowest member seed (rule
``lowest``: D against that seed's baseline; uniform and greedy soups of one group so share one
reference). run.json ``members`` lists the weights averaged; ``soup.pool`` every candidate with
its validation accuracy and metrics, ``soup.steps`` the greedy decisions.

A group whose members differ in architecture (state-dict keys, shapes or dtypes) or data config,
or whose member's weights fail their record in its run.json, is refused: one line naming the run.
A soup whose run.json is complete, lists the same pool (run and sha256) and whose weights match
its record is up to date and skipped. Every file is written atomically, run.json last.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from wdiv import records
from wdiv.errors import ConfigError, InputError
from wdiv.io import sha256_file, write_json, write_text
from wdiv.training.checkpoint import load_weights, save_weights
from wdiv.training.rebuild import CONFIG, Evaluator, evaluator, load_config
from wdiv.training.runner import runtime

log = logging.getLogger(__name__)

ARM = "soup"
DIR = "soup"  # RUNS_DIR/soup/...
KINDS = ("uniform", "greedy")
GROUP_KEYS = ("arm", "level", "seed")
WEIGHTS = "model.safetensors"
RUN_FILE = "run.json"
SKIP_PARTS = ("checkpoints", "snapshots", "report")  # folders that hold no member runs


class SoupRefused(Exception):
    """A group that cannot be souped; the message is one line naming the run at fault."""


@dataclass
class Member:
    """A complete run that may go into a soup."""

    run_dir: Path
    run_id: str  # relative to RUNS_DIR
    info: dict

    @functools.cached_property
    def sha256(self) -> str:
        """Of its final weights: as run.json records it (checked when loaded), else computed once."""
        recorded = ((self.info.get("files") or {}).get(WEIGHTS) or {}).get("sha256")
        return str(recorded) if recorded else sha256_file(self.run_dir / WEIGHTS)

    @property
    def seed(self) -> int:
        return int(self.info["seed"])

    def cell(self) -> tuple:
        pre = self.info.get("pretrained") or {}
        return (str(self.info.get("model")), str(self.info.get("data")), str(self.info.get("recipe")), str(pre.get("sha256")))

    def group_values(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        parts = []
        if "arm" in keys:
            variant = self.info.get("variant")
            parts.append(str(self.info["arm"]) + (f"-{variant}" if variant else ""))
        if "level" in keys and self.info.get("level") is not None:
            parts.append(f"{self.info['level']:g}" if isinstance(self.info["level"], float) else str(self.info["level"]))
        if "seed" in keys:
            parts.append(f"seed{self.seed}")
        return tuple(parts)


@dataclass
class Group:
    """Runs souped together: one start, recipe, model and data, and the same ``--group`` values."""

    cell: tuple  # model, data, recipe, pretrained sha256
    keys: tuple[str, ...]
    name: str  # the group's label: run.json level of its soups
    members: list[Member]  # in run-id order
    folder: Path  # RUNS_DIR/soup/<cell>/by-<keys>/<name>


@dataclass
class Outcome:
    """What happened to one soup (or, when refused or too small, one group)."""

    action: str  # written | up to date | refused | too few
    folder: Path
    kind: str = ""
    info: dict = field(default_factory=dict)
    reason: str = ""


def normalise_keys(keys) -> tuple[str, ...]:
    """The group keys in canonical order; ``level`` brings ``arm`` (a level belongs to an arm)."""
    wanted = set(keys)
    if "level" in wanted:
        wanted.add("arm")
    return tuple(k for k in GROUP_KEYS if k in wanted)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.+=-]+", "_", text).strip("_") or "_"


def find_members(runs_dir: Path) -> list[Member]:
    """Every complete, non-soup run under ``runs_dir`` (run-id order); others are logged and left out."""
    runs_dir = Path(runs_dir)
    found = []
    for path in sorted(runs_dir.rglob(RUN_FILE)):
        rel = path.parent.relative_to(runs_dir)
        if any(p in SKIP_PARTS or p.startswith(".") for p in rel.parts):
            continue
        try:
            info = records.read_json(path)
        except ValueError as err:
            log.warning("not a soup member: %s", err)
            continue
        run_id = rel.as_posix() or "."
        if info.get("arm") == ARM:
            continue
        if info.get("status") != "complete":
            log.info("not a soup member: %s (status %s)", run_id, info.get("status"))
            continue
        if not (path.parent / WEIGHTS).exists() or "seed" not in info or "arm" not in info:
            log.warning("not a soup member: %s (no %s, seed or arm)", run_id, WEIGHTS)
            continue
        found.append(Member(path.parent, run_id, info))
    return found


def group_members(members: list[Member], keys, runs_dir: Path) -> list[Group]:
    """Members sharing a start, recipe, model, data and the group keys' values."""
    keys = normalise_keys(keys)
    buckets: dict[tuple, list[Member]] = {}
    for m in members:
        buckets.setdefault((m.cell(), m.group_values(keys)), []).append(m)
    starts: dict[tuple, set] = {}
    for cell, _ in buckets:
        starts.setdefault(cell[:3], set()).add(cell[3])
    groups = []
    for (cell, values), grouped in buckets.items():
        cell_name = "-".join((cell[0], cell[1], cell[2][:8]))
        if len(starts[cell[:3]]) > 1:
            cell_name += f"-start{cell[3][:8]}"
        name = "-".join(values) or "all"
        folder = Path(runs_dir) / DIR / _slug(cell_name) / ("by-" + "-".join(keys) if keys else "all") / _slug(name)
        groups.append(Group(cell, keys, name, sorted(grouped, key=lambda m: m.run_id), folder))
    return sorted(groups, key=lambda g: g.folder.as_posix())


# ----------------------------------------------------------------------------- weights


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform mean of state dicts: float tensors in float64 (in the given order), then cast back
    to their dtype; other tensors (integer buffers) from the first, which every member shares."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key] for s in states]).to(torch.float64).mean(0).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def check_architecture(members: list[Member], states: list[dict[str, torch.Tensor]]) -> None:
    """SoupRefused naming the first member whose keys, shapes or dtypes differ from the first's."""
    ref, ref_id = states[0], members[0].run_id
    for m, state in zip(members[1:], states[1:]):
        missing = [k for k in ref if k not in state]
        extra = [k for k in state if k not in ref]
        if missing or extra:
            what = f"lacks {missing[0]}" if missing else f"has {extra[0]} that {ref_id} lacks"
            raise SoupRefused(f"{m.run_id}: architecture differs from {ref_id} ({what})")
        for k, v in ref.items():
            if state[k].shape != v.shape or state[k].dtype != v.dtype:
                raise SoupRefused(f"{m.run_id}: architecture differs from {ref_id} ({k}: {list(state[k].shape)} {state[k].dtype} "
                                  f"vs {list(v.shape)} {v.dtype})")
        for k, v in ref.items():
            if not v.is_floating_point() and not torch.equal(state[k], v):
                raise SoupRefused(f"{m.run_id}: integer buffer {k} differs from {ref_id}'s (a soup averages float weights only)")


def _data_differs(a: dict, b: dict) -> str | None:
    """The first ``data.<key>`` whose value differs, or None."""
    return next((f"data.{key}" for key in sorted(set(a) | set(b), key=str) if a.get(key) != b.get(key)), None)


def check_data(members: list[Member], configs: list) -> None:
    """Every member scored on one validation split: their data configs must be the same."""
    ref = OmegaConf.to_container(configs[0].data, resolve=True)
    for m, cfg in zip(members[1:], configs[1:]):
        key = _data_differs(ref, OmegaConf.to_container(cfg.data, resolve=True))
        if key:
            raise SoupRefused(f"{m.run_id}: {key} differs from {members[0].run_id}'s (config.yaml): its validation split is another")


def load_member(m: Member) -> dict[str, torch.Tensor]:
    """A member's final weights, checked against its run.json record first."""
    path = m.run_dir / WEIGHTS
    reason = records.check(path, (m.info.get("files") or {}).get(WEIGHTS))
    if reason:
        raise SoupRefused(f"{m.run_id}: {path}: {reason} (rerun its training command to redo it)")
    try:
        return load_weights(path)
    except Exception as err:  # safetensors raises several types for bad bytes
        raise SoupRefused(f"{m.run_id}: {path}: not a readable safetensors file ({type(err).__name__})") from None


# ----------------------------------------------------------------------------- soups


def _pool_entry(m: Member, soup_dir: Path, runs_dir: Path) -> dict:
    rel = Path(*([".."] * len(soup_dir.relative_to(runs_dir).parts))) / m.run_id
    return {"run": m.run_id, "path": rel.as_posix(), "sha256": m.sha256, "arm": m.info.get("arm"),
            "variant": m.info.get("variant"), "level": m.info.get("level"), "seed": m.seed}


def up_to_date(soup_dir: Path, kind: str, pool: list[dict]) -> bool:
    """The soup in ``soup_dir`` is complete, of these members (run and sha256), and its weights match its record."""
    try:
        info = records.read_json(soup_dir / RUN_FILE)
    except ValueError:
        return False
    old = (info.get("soup") or {}).get("pool") or []
    same = [(p.get("run"), p.get("sha256")) for p in old] == [(p["run"], p["sha256"]) for p in pool]
    if info.get("status") != "complete" or info.get("variant") != kind or not same:
        return False
    return records.check(soup_dir / WEIGHTS, (info.get("files") or {}).get(WEIGHTS)) is None


def greedy(order: list[int], states: list[dict], ev: Evaluator, member_val: list[float]) -> tuple[list[int], list[dict], dict, float]:
    """Wortsman's greedy soup over members ``order`` (best validation accuracy first): the kept
    members, one step per candidate, the soup's weights and its validation accuracy."""
    kept = [order[0]]
    best_val = member_val[order[0]]
    steps = [{"member": order[0], "soup_val_acc": best_val, "kept": True}]
    for i in order[1:]:
        candidate = average([states[j] for j in (*kept, i)])
        ev.load(candidate)
        val = ev.val_acc()
        accepted = val >= best_val
        steps.append({"member": i, "soup_val_acc": val, "kept": accepted})
        if accepted:
            kept.append(i)
            best_val = val
    return kept, steps, average([states[j] for j in kept]), best_val


def _soup_config(cfg, kind: str, group: Group, seed: int, members: list[str]):
    """The soup's config.yaml: its first member's, relabelled (arm soup), with the soup's own block."""
    out = OmegaConf.to_container(cfg, resolve=True)
    out.update({"exp_name": ARM, "arm": ARM, "level": group.name, "levels": [], "run_tag": kind, "seed": seed,
                "soup": {"kind": kind, "group": list(group.keys), "members": members}})
    return out


def build_group(group: Group, kinds: tuple[str, ...], runs_dir: Path, rt, force: bool = False) -> list[Outcome]:
    """Both kinds of one group's soup (those not up to date); SoupRefused naming the run otherwise."""
    start = time.time()
    runs_dir = Path(runs_dir)
    members = group.members
    todo = []
    for kind in kinds:
        soup_dir = group.folder / kind
        pool = [_pool_entry(m, soup_dir, runs_dir) for m in members]
        if not force and up_to_date(soup_dir, kind, pool):
            todo.append(None)
        else:
            todo.append(pool)
    outcomes = [Outcome("up to date", group.folder / kind, kind) for kind, pool in zip(kinds, todo) if pool is None]
    if all(p is None for p in todo):
        return outcomes
    configs = [load_config(m.run_dir) for m in members]
    check_data(members, configs)
    states = [load_member(m) for m in members]
    check_architecture(members, states)
    ev = evaluator(configs[0], rt)
    member_val = []
    for state in states:
        ev.load(state)
        member_val.append(ev.val_acc())
    seeds = sorted({m.seed for m in members})
    seed = seeds[0]
    for kind, pool in zip(kinds, todo):
        if pool is None:
            continue
        soup_dir = group.folder / kind
        for entry, m, val in zip(pool, members, member_val):
            entry["val_acc"] = val
            entry["metrics"] = {k: (m.info.get("metrics") or {}).get(k) for k in ("test_acc", "test_ece", "test_loss", "ood_acc", "val_acc")}
        if kind == "uniform":
            kept, steps = list(range(len(members))), []
            weights = average(states)
            ev.load(weights)
            val = ev.val_acc()
        else:
            order = sorted(range(len(members)), key=lambda i: (-member_val[i], members[i].run_id))
            kept, raw_steps, weights, val = greedy(order, states, ev, member_val)
            steps = [{"run": members[s["member"]].run_id, "soup_val_acc": s["soup_val_acc"], "kept": s["kept"]} for s in raw_steps]
            ev.load(weights)  # the model holds the last candidate, which may have been left out
        info = _soup_record(group, kind, members, kept, pool, steps, seed, seeds)
        info["metrics"] = ev.metrics(val_acc=val)
        _write_soup(soup_dir, weights, _soup_config(configs[0], kind, group, seed, [members[i].run_id for i in kept]), info, rt, start)
        outcomes.append(Outcome("written", soup_dir, kind, info))
    return outcomes


def _soup_record(group: Group, kind: str, members: list[Member], kept: list[int], pool: list[dict], steps: list[dict],
                 seed: int, seeds: list[int]) -> dict:
    first = members[0].info
    return {
        "status": "running",
        "exp": ARM, "arm": ARM, "level": group.name, "level_index": None, "variant": kind, "seed": seed,
        "model": first.get("model"), "data": first.get("data"),
        "recipe": first.get("recipe"), "recipe_config": first.get("recipe_config"),
        "pretrained": first.get("pretrained"),
        "members": [{k: pool[i][k] for k in ("run", "path", "sha256", "seed", "val_acc")} for i in kept],
        "soup": {
            "kind": kind, "group": {"by": list(group.keys), "name": group.name},
            "seed_rule": "shared" if len(seeds) == 1 else "lowest", "member_seeds": seeds,
            "val_split": "the members' validation split (data.split_seed; val acc computed by wdiv.soup)",
            "pool": pool, "steps": steps,
        },
    }


def _write_soup(soup_dir: Path, weights: dict, config: dict, info: dict, rt, start: float) -> None:
    soup_dir.mkdir(parents=True, exist_ok=True)
    if (soup_dir / RUN_FILE).exists():  # an older soup: not complete while its weights are replaced
        write_json(soup_dir / RUN_FILE, {**info, "status": "running"})
    save_weights(weights, soup_dir / WEIGHTS)
    write_text(soup_dir / CONFIG, OmegaConf.to_yaml(OmegaConf.create(config)))
    info.update(files={WEIGHTS: records.describe(soup_dir / WEIGHTS)}, device=str(rt.device),
                wall_time_s=round(time.time() - start, 3), status="complete")
    write_json(soup_dir / RUN_FILE, info)


def make_soups(runs_dir: Path, keys=("arm",), kinds=KINDS, device: str = "auto", force: bool = False,
               cpus: int = 1) -> list[Outcome]:
    """Every group's soups under ``runs_dir``; a refused group is one Outcome with the reason, the others still run.
    ``cpus``: what the entry point found this process may use (wdiv.cpus.available_cpus)."""
    runs_dir = Path(runs_dir)
    members = find_members(runs_dir)
    outcomes = []
    for group in group_members(members, keys, runs_dir):
        if len(group.members) < 2:
            log.info("no soup for %s: one complete run (%s)", group.folder, group.members[0].run_id)
            outcomes.append(Outcome("too few", group.folder, reason=f"one complete run ({group.members[0].run_id})"))
            continue
        try:
            cfg = load_config(group.members[0].run_dir)
            rt = runtime(OmegaConf.merge(cfg.trainer, {"device": device, "progress": False}), cpus)
            outcomes += build_group(group, tuple(kinds), runs_dir, rt, force)
        except SoupRefused as why:
            outcomes.append(Outcome("refused", group.folder, reason=str(why)))
        except (ConfigError, InputError) as err:
            outcomes.append(Outcome("refused", group.folder, reason=str(err)))
    return outcomes


def summary(outcome: Outcome) -> str:
    """One line per soup (the CLI prints it on stdout)."""
    if outcome.action != "written":
        return f"{outcome.action} {outcome.folder}" + (f": {outcome.reason}" if outcome.reason else "")
    info, m = outcome.info, outcome.info.get("metrics") or {}
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    n_pool = len(info["soup"]["pool"])
    return (f"soup:{outcome.kind} {info['level']} | members {len(info['members'])}/{n_pool} | val_acc {fmt(m.get('val_acc'))}"
            f" | test_acc {fmt(m.get('test_acc'))} | ece {fmt(m.get('test_ece'))} | ood_acc {fmt(m.get('ood_acc'))} | {outcome.folder}")
