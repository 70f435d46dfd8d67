"""``aaren-rl make-dataset TASK``: D4RL's recipe rebuilt on Gymnasium MuJoCo v5 with SB3 SAC.

By default the behaviour policies shipped in the wheel (``aaren_rl/assets/policies``: the SAC
actors of hopper medium and expert, halfcheetah and walker2d medium, listed in its
``policies.json``) are rolled out: ``aaren-rl make-dataset hopper-medium`` writes
``hopper-medium-v5`` without training anything. ``--policies FOLDER`` takes
``TASK-LEVEL-sac.zip`` or ``TASK-LEVEL-actor.pt`` files from another folder. A level that needs
SAC's own training (``medium-replay``, which is its replay buffer, or a policy not shipped)
is a clear error unless ``--train-sac`` is given; then the build trains as below (hours on a CPU
for the D4RL budget).

With ``--train-sac`` one SAC behaviour policy is trained per task. Every ``--eval-freq`` steps it is evaluated
(stochastic actions, ``--eval-episodes`` episodes); the first time the mean return reaches
``--medium-fraction`` of the expert reference (D4RL v2's, unless ``--expert-return`` is given)
the policy is saved as *medium* and the replay buffer up to that step becomes *medium-replay*.
Training then goes on to ``--total-steps`` for the *expert* policy (or stops at medium when no
level needs the expert). The expert is the final policy, as in D4RL, or with ``--expert-policy
best`` the best-evaluated one after the medium snapshot (SAC's evaluation return swings by
thousands between evaluations on Hopper when the budget is far below D4RL's 1M steps; every
evaluation is kept in ``progress.json``, and the dataset's own returns are what report the
level). Each policy is rolled out for ``--transitions`` steps (default 100,000; D4RL's
datasets hold 1,000,000) with actions
sampled from its stochastic policy; *random* draws actions uniformly; *medium-expert* is medium
followed by expert. Files (D4RL HDF5, optionally Minari) are written atomically and never
replace an existing file unless ``--overwrite``; the v5 reference scores measured here (random
mean, expert mean) go to ``<task>-v5-references.json`` beside the datasets.

Training checkpoints the model (``sac.zip``) and the filled rows of its replay buffer
(``replay_buffer.npz``: the transitions stored so far, about 0.2 KB per SAC step on Hopper, not
the preallocated ``--buffer-size``) every ``--checkpoint-freq`` steps in the work folder.
Running the same command again continues from the last checkpoint with the same replay buffer,
and outputs already written by this build are not redone; medium-replay, asked for later, is
read from the checkpoint's buffer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aaren_rl.cli import add_threads_argument, apply_threads
from aaren_rl.data.behaviour import (
    Episode,
    collect_episodes,
    episodes_to_arrays,
    replay_buffer_to_arrays,
    sb3_policy,
    uniform_policy,
)
from aaren_rl.data.d4rl_writer import episode_bounds, write_d4rl
from aaren_rl.data.paths import SHIPPED_POLICY_DIR, data_dir
from aaren_rl.data.sac_actor import find_policy, load_behaviour_policy
from aaren_rl.files import write_text_atomic


@dataclass(frozen=True)
class TaskInfo:
    """What make-dataset needs of a task: the v5 env and D4RL's v2 reference returns."""

    env_id: str
    d4rl_random: float
    d4rl_expert: float


# D4RL's reference returns (random, expert) for the v2 datasets; see docs/design.md section 4.
TASKS: dict[str, TaskInfo] = {
    "hopper": TaskInfo("Hopper-v5", -20.272305, 3234.3),
    "halfcheetah": TaskInfo("HalfCheetah-v5", -280.178953, 12135.0),
    "walker2d": TaskInfo("Walker2d-v5", 1.629008, 4592.3),
    "ant": TaskInfo("Ant-v5", -325.6, 3879.7),
}
LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
SHIPPED_POLICIES = SHIPPED_POLICY_DIR
GENERATOR = "aaren-rl make-dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``aaren-rl make-dataset``."""
    parser.add_argument("task", help=f"one of {', '.join(TASKS)}")
    parser.add_argument(
        "--levels",
        default="random,medium,medium-replay,expert,medium-expert",
        help=f"comma-separated subset of {','.join(LEVELS)}",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for the datasets (default: the library's data folder, $AAREN_RL_DATA_DIR, "
        "else $D4RL_DATASET_DIR, else ~/.aaren_rl/datasets)",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="checkpoints, progress and TensorBoard logs (default runs/make-dataset/TASK-seedS)",
    )
    parser.add_argument(
        "--policies",
        default=None,
        help="folder of behaviour policies TASK-{medium,expert}-sac.zip or -actor.pt (default: "
        "the policies shipped in the wheel; with --train-sac, OUT/policies); policies found "
        "there are rolled out instead of trained",
    )
    parser.add_argument(
        "--train-sac",
        action="store_true",
        help="train SB3 SAC for the levels no policy covers, and for medium-replay (its replay "
        "buffer): D4RL's full recipe, hours on a CPU; checkpointed and resumable",
    )
    parser.add_argument("--env-id", default=None, help="override the Gymnasium env id")
    parser.add_argument("--total-steps", type=int, default=1_000_000, help="SAC steps (expert)")
    parser.add_argument(
        "--medium-fraction", type=float, default=1 / 3, help="medium = this x expert return"
    )
    parser.add_argument(
        "--expert-return",
        type=float,
        default=None,
        help="expert return the medium threshold is a fraction of (default D4RL v2 reference)",
    )
    parser.add_argument(
        "--transitions",
        type=int,
        default=100_000,
        help="steps per rollout (default 100,000: under a minute on one CPU thread; D4RL's "
        "datasets hold 1,000,000, several minutes)",
    )
    parser.add_argument(
        "--max-episodes", type=int, default=None, help="at most this many episodes per rollout"
    )
    parser.add_argument(
        "--max-episode-steps",
        type=int,
        default=None,
        help="time limit of the env (default the env's own, 1000 for MuJoCo v5, as D4RL)",
    )
    parser.add_argument("--suffix", default="", help="name datasets TASK-LEVEL-SUFFIX-v5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-freq", type=int, default=5_000, help="SAC steps between evals")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument(
        "--expert-policy",
        choices=("final", "best"),
        default="final",
        help="expert = the policy at --total-steps (D4RL) or the best-evaluated one past medium",
    )
    parser.add_argument("--checkpoint-freq", type=int, default=10_000)
    parser.add_argument("--learning-starts", type=int, default=10_000, help="SAC random steps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--buffer-size",
        type=int,
        default=None,
        help="SAC replay buffer (default --total-steps; larger lets a later run train longer)",
    )
    parser.add_argument(
        "--train-steps-per-run",
        type=int,
        default=None,
        help="train at most this many SAC steps in this call, checkpoint and exit (re-run to go on)",
    )
    parser.add_argument("--rollout-envs", type=int, default=8, help="parallel envs per rollout")
    parser.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none")
    parser.add_argument("--minari", action="store_true", help="also write Minari datasets")
    parser.add_argument("--overwrite", action="store_true", help="replace existing datasets")
    parser.add_argument("--device", default="auto", help="torch device for SAC (auto|cpu|cuda)")
    add_threads_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def dataset_name(task: str, level: str, suffix: str = "") -> str:
    """``hopper-medium-v5``, or ``hopper-medium-small-v5`` with ``suffix='small'``."""
    return f"{task}-{level}-{suffix}-v5" if suffix else f"{task}-{level}-v5"


# --------------------------------------------------------------------------- progress file


class Progress:
    """The build's memory (``WORK/progress.json``): SAC step, medium snapshot, outputs done."""

    def __init__(self, path: Path, fields: dict[str, Any]):
        self.path = path
        self.fields = fields

    @classmethod
    def load(cls, path: Path) -> Progress:
        if path.exists():
            try:
                fields = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}: not valid JSON ({exc}); delete it to start over"
                ) from exc
        else:
            fields = {"num_timesteps": 0, "checkpoint": None, "medium": None, "outputs": {}}
        return cls(path, fields)

    def _outputs_on_disk(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text()).get("outputs", {})
        except (OSError, json.JSONDecodeError):
            return {}

    def save(self) -> None:
        # Another make-dataset call on the same work folder (say a rollout started while SAC
        # trains) may have recorded outputs meanwhile: keep them.
        self.fields["outputs"] = {**self._outputs_on_disk(), **self.fields["outputs"]}
        write_text_atomic(self.path, json.dumps(self.fields, indent=2))

    def output_done(self, path: Path) -> bool:
        self.fields["outputs"] = {**self._outputs_on_disk(), **self.fields["outputs"]}
        return str(path.resolve()) in self.fields["outputs"] and path.exists()

    def mark_output(self, path: Path, info: dict[str, Any]) -> None:
        self.fields["outputs"][str(path.resolve())] = info
        self.fields.get("pending", {}).pop(str(path.resolve()), None)
        self.save()

    def mark_pending(self, path: Path) -> None:
        """Say, before writing ``path``, that this build is writing it: if the build is killed
        after the file lands but before :meth:`mark_output`, the next run knows the file is its
        own (and rebuilds it) instead of refusing it as someone else's."""
        self.fields.setdefault("pending", {})[str(path.resolve())] = True
        self.save()

    def is_pending(self, path: Path) -> bool:
        return str(path.resolve()) in self.fields.get("pending", {})


# --------------------------------------------------------------------------- the build


class Build:
    """Everything one ``make-dataset`` call does, in order: check, train, roll out, write."""

    def __init__(self, args: argparse.Namespace):
        if args.task not in TASKS:
            # `make-dataset hopper-medium` = `make-dataset hopper --levels medium`
            for level in sorted(LEVELS, key=len, reverse=True):
                task = args.task.removesuffix(f"-{level}")
                if task != args.task and task in TASKS:
                    args.task, args.levels = task, level
                    break
        if args.task not in TASKS and args.env_id is None:
            raise SystemExit(
                f"make-dataset: unknown task {args.task!r}; known: {', '.join(TASKS)} "
                "(or give --env-id and --expert-return for another task)"
            )
        self.args = args
        self.task = args.task
        info = TASKS.get(args.task, TaskInfo(args.env_id, float("nan"), float("nan")))
        self.info = info
        self.env_id = args.env_id or info.env_id
        self.levels = [s.strip() for s in args.levels.split(",") if s.strip()]
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad or not self.levels:
            raise SystemExit(
                f"make-dataset: unknown level(s) {bad}; choose from {','.join(LEVELS)}"
            )
        self.expert_return = (
            args.expert_return if args.expert_return is not None else info.d4rl_expert
        )
        if not np.isfinite(self.expert_return):
            raise SystemExit("make-dataset: give --expert-return for a task without a reference")
        self.threshold = args.medium_fraction * self.expert_return
        self.out = Path(args.out) if args.out else data_dir()
        self.work = Path(args.work_dir or f"runs/make-dataset/{self.task}-seed{args.seed}")
        if args.policies:
            self.policies = Path(args.policies)
        else:
            self.policies = self.out / "policies" if args.train_sac else SHIPPED_POLICIES
        self.progress = Progress.load(self.work / "progress.json")
        self.compression = None if args.compression == "none" else args.compression
        self.log = print if not args.quiet else (lambda *a, **k: None)
        self.summary_path = (
            self.out / f"{self.task}{'-' + args.suffix if args.suffix else ''}-v5-summary.json"
        )
        self.refs_path = self.out / f"{self.task}-v5-references.json"
        self.policy_used: dict[str, dict[str, Any]] = {}

    # ---- paths
    def dataset_path(self, level: str) -> Path:
        return self.out / f"{dataset_name(self.task, level, self.args.suffix)}.hdf5"

    def policy_path(self, level: str) -> Path:
        """Where training saves the ``level`` policy (an SB3 SAC zip)."""
        return self.policies / f"{self.task}-{level}-sac.zip"

    def find_policy(self, level: str) -> Path | None:
        """The ``level`` policy to roll out: a SAC zip or an actor file in the policy folder."""
        return find_policy(self.policies, self.task, level)

    def max_episode_steps(self) -> int | None:
        env = self.make_env()
        steps = env.spec.max_episode_steps if env.spec is not None else None
        env.close()
        return steps

    def make_env(self):
        import gymnasium as gym

        if self.args.max_episode_steps:
            return gym.make(self.env_id, max_episode_steps=self.args.max_episode_steps)
        return gym.make(self.env_id)

    # ---- checks before any work
    def check_outputs(self) -> list[str]:
        """Levels still to write; refuses (before any work) to replace a file not ours."""
        todo = []
        for level in self.levels:
            path = self.dataset_path(level)
            if self.progress.output_done(path) and not self.args.overwrite:
                self.log(f"[make-dataset] {path} already built by this run; skipping")
                continue
            if self.progress.is_pending(path):
                self.log(f"[make-dataset] {path} was being written when a run stopped; rebuilding")
            elif path.exists() and not self.args.overwrite:
                raise FileExistsError(
                    f"{path} already exists and was not written by this build "
                    f"(work folder {self.work}); pass --overwrite to replace it, "
                    "or choose another --out"
                )
            todo.append(level)
        return todo

    # ---- training
    def no_training_message(self, todo: list[str]) -> str:
        """Why this build would need SAC training, and the two ways on."""
        why = []
        if "medium-replay" in todo:
            why.append("medium-replay is the replay buffer of a SAC run")
        for level in ("medium", "expert"):
            if any(lv in todo for lv in (level, "medium-expert")) and not self.find_policy(level):
                why.append(f"no {self.task}-{level} policy in {self.policies}")
        shipped = sorted(p.name for p in SHIPPED_POLICIES.glob("*-actor.pt"))
        return (
            f"make-dataset: {'; '.join(why)}. Fix: pass --train-sac to train SB3 SAC here "
            "(hours on a CPU; resumable), or --policies FOLDER holding "
            f"{self.task}-LEVEL-sac.zip or -actor.pt files. Shipped policies: {', '.join(shipped)}"
        )

    def needs_training(self, todo: list[str]) -> tuple[bool, bool]:
        """(train at all, train past medium to the expert)."""
        need_medium = (
            any(lv in todo for lv in ("medium", "medium-expert"))
            and self.find_policy("medium") is None
        )
        need_replay = "medium-replay" in todo
        # A build that trains its own SAC and is asked for more steps than it has trained
        # (a larger --total-steps on a re-run) trains on and replaces its expert policy.
        trained = self.progress.fields.get("num_timesteps", 0)
        more_steps = (
            bool(self.progress.fields.get("checkpoint")) and trained < self.args.total_steps
        )
        need_expert = any(lv in todo for lv in ("expert", "medium-expert")) and (
            self.find_policy("expert") is None or more_steps
        )
        return (need_medium or need_replay or need_expert), need_expert

    def train(self, to_expert: bool) -> bool:
        """Train (or resume) SAC; returns False when stopped early by --train-steps-per-run."""
        from stable_baselines3 import SAC
        from stable_baselines3.common.utils import set_random_seed

        args, prog = self.args, self.progress.fields
        env = self.make_env()
        tb = str(self.work / "tensorboard")
        ckpt = prog.get("checkpoint")
        if ckpt and Path(ckpt, "sac.zip").exists():
            model = SAC.load(Path(ckpt, "sac.zip"), env=env, device=args.device, tensorboard_log=tb)
            load_replay_rows(model.replay_buffer, Path(ckpt, REPLAY_FILE))
            # SB3 does not save RNG states: reseed from (seed, step) so a resumed run is seeded.
            set_random_seed(args.seed + model.num_timesteps, using_cuda=True)
            env.reset(seed=args.seed + model.num_timesteps)
            self.log(f"[make-dataset] resuming SAC from {ckpt} at step {model.num_timesteps}")
        else:
            model = SAC(
                "MlpPolicy",
                env,
                buffer_size=max(args.buffer_size or args.total_steps, args.total_steps),
                learning_starts=args.learning_starts,
                batch_size=args.batch_size,
                seed=args.seed,
                device=args.device,
                tensorboard_log=tb,
                verbose=0,
            )
        start = model.num_timesteps
        target = args.total_steps
        if model.replay_buffer.buffer_size < target:
            # A later call asked for more steps than the first one: grow the buffer, keeping
            # every stored transition (medium-replay needs all of them).
            model.replay_buffer = grow_replay_buffer(model.replay_buffer, target)
            model.buffer_size = target
        if not to_expert and prog.get("medium"):
            return True
        if start >= target:
            if to_expert and not self.policy_path("expert").exists():
                self.save_policy(model, "expert")
            return True
        callback = _BuildCallback(self, model, start, target, to_expert)
        model.learn(
            total_timesteps=target - start,
            reset_num_timesteps=False,
            callback=callback,
            tb_log_name="sac",
        )
        env.close()
        if callback.stopped_early:
            return False
        if to_expert and model.num_timesteps >= target:
            if args.expert_policy == "final" or not prog.get("expert_best"):
                self.save_policy(model, "expert")
        if prog.get("medium") is None:
            # Never reached the threshold: keep the last policy as medium and say so.
            self.log(
                f"[make-dataset] WARNING: eval return never reached {self.threshold:.1f}; "
                "the final policy is used as medium (metadata threshold_reached=0)"
            )
            self.snapshot_medium(model, None, reached=False)
        return True

    def save_policy(self, model, level: str) -> None:
        path = self.policy_path(level)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.zip")
        model.save(tmp)
        os.replace(tmp, path)
        self.log(f"[make-dataset] saved {level} policy to {path}")

    def record_expert_eval(self, model, step: int, mean: float, std: float) -> None:
        """Keep an evaluation past the medium snapshot in progress.json; with ``--expert-policy
        best``, save the policy as expert when it beats every earlier one."""
        fields = self.progress.fields
        fields.setdefault("expert_evals", []).append([int(step), mean, std])
        best = fields.get("expert_best")
        if self.args.expert_policy == "best" and (best is None or mean > best["eval_return"]):
            self.save_policy(model, "expert")
            fields["expert_best"] = {"step": int(step), "eval_return": mean, "eval_std": std}
        self.progress.save()

    def snapshot_medium(self, model, eval_return: float | None, reached: bool) -> None:
        """Save the medium policy and, if asked, write medium-replay from the buffer."""
        buf = model.replay_buffer
        n = buf.buffer_size if buf.full else buf.pos
        self.save_policy(model, "medium")
        # the buffer up to the snapshot is on disk before the snapshot is recorded: a build
        # killed from here on rebuilds medium-replay from this checkpoint
        self.save_checkpoint(model)
        self.progress.fields["medium"] = {
            "step": int(model.num_timesteps),
            "buffer_transitions": int(n),
            "eval_return": eval_return,
            "threshold": self.threshold,
            "threshold_reached": reached,
        }
        self.progress.save()
        if "medium-replay" in self.levels:
            path = self.dataset_path("medium-replay")
            if not self.progress.output_done(path) or self.args.overwrite:
                data = replay_buffer_to_arrays(buf, n, unscale=model.policy.unscale_action)
                self.write_dataset("medium-replay", data, {}, extra={"sac_step": int(n)})

    def replay_from_checkpoint(self) -> None:
        """Write medium-replay from the last checkpoint's replay buffer, which still holds every
        transition up to the medium snapshot (the buffer never wraps)."""
        medium, ckpt = self.progress.fields.get("medium"), self.progress.fields.get("checkpoint")
        if not medium or not ckpt or not Path(ckpt, REPLAY_FILE).exists():
            return
        from stable_baselines3 import SAC

        model = SAC.load(Path(ckpt, "sac.zip"), device="cpu")
        load_replay_rows(model.replay_buffer, Path(ckpt, REPLAY_FILE))
        n = medium["buffer_transitions"]
        data = replay_buffer_to_arrays(model.replay_buffer, n, unscale=model.policy.unscale_action)
        self.write_dataset("medium-replay", data, {}, extra={"sac_step": int(n)})

    def save_checkpoint(self, model) -> None:
        """Model + the replay buffer's filled rows in a fresh folder, then point progress.json
        at it (a kill at any point leaves the previous checkpoint in use)."""
        step = int(model.num_timesteps)
        folder = self.work / "checkpoints" / f"step-{step:09d}"
        if self.progress.fields.get("checkpoint") == str(folder) and (folder / "sac.zip").exists():
            return  # this step is saved already (deleting it to rewrite would open a gap)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save(tmp / "sac.zip")
        save_replay_rows(model.replay_buffer, tmp / REPLAY_FILE)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        old = self.progress.fields.get("checkpoint")
        self.progress.fields["checkpoint"] = str(folder)
        self.progress.fields["num_timesteps"] = step
        self.progress.save()
        if old and Path(old) != folder:
            shutil.rmtree(old, ignore_errors=True)

    def evaluate(self, model) -> tuple[float, float]:
        eps = collect_episodes(
            self.make_env,
            sb3_policy(model, deterministic=False),
            max_episodes=self.args.eval_episodes,
            n_envs=self.args.eval_episodes,
            seed=self.args.seed + 100_000_000 + int(model.num_timesteps),
        )
        returns = np.array([e.episode_return for e in eps])
        return float(returns.mean()), float(returns.std())

    # ---- rollouts and files
    def rollout(self, level: str) -> list[Episode]:
        offsets = {"random": 1_000_000, "medium": 2_000_000, "expert": 3_000_000}
        seed = self.args.seed + offsets[level]
        if level == "random":
            act = uniform_policy(self.make_env().action_space, seed)
        else:
            path = self.find_policy(level)
            model, sac_step = load_behaviour_policy(path, device=self.args.device)
            act = sb3_policy(model, deterministic=False)
            self.policy_used[level] = {**_file_info(path), "sac_step": sac_step}
        return collect_episodes(
            self.make_env,
            act,
            n_transitions=self.args.transitions,
            max_episodes=self.args.max_episodes,
            n_envs=self.args.rollout_envs,
            seed=seed,
            desc=None if self.args.quiet else f"{self.task}-{level} rollout",
        )

    def write_dataset(
        self,
        level: str,
        data: dict[str, np.ndarray],
        infos: dict[str, np.ndarray],
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        path = self.dataset_path(level)
        bounds = episode_bounds(data["terminals"], data["timeouts"])
        rewards64 = data["rewards"].astype(np.float64)
        returns = np.array([rewards64[s:e].sum() for s, e in bounds])
        lengths = np.array([e - s for s, e in bounds])
        metadata = {
            "generator": GENERATOR,
            "task": self.task,
            "env_id": self.env_id,
            "level": level,
            "algorithm": "SB3 SAC" if level != "random" else "uniform random",
            "actions": "sampled from the stochastic policy" if level != "random" else "uniform",
            "seed": self.args.seed,
            "max_episode_steps": self.max_episode_steps() or 0,
            "medium_threshold": self.threshold,
            "episode_returns": returns,
            "episode_lengths": lengths,
            "versions": _versions(),
            **({"policy": self.policy_used[level]} if level in self.policy_used else {}),
            **(extra or {}),
        }
        self.progress.mark_pending(path)
        write_d4rl(
            path,
            data,
            infos=infos,
            metadata=metadata,
            overwrite=True,  # check_outputs() already refused files that are not ours
            compression=self.compression,
        )
        max_steps = self.max_episode_steps()
        complete = data["terminals"][[e - 1 for _, e in bounds]] | (lengths == max_steps)
        stats = _stats(returns, lengths, complete, len(data["rewards"]))
        self.progress.mark_output(path, stats)
        self.log(
            f"[make-dataset] wrote {path}: {stats['transitions']} transitions, "
            f"{stats['episodes']} episodes, return {stats['return_mean']:.1f} "
            f"+- {stats['return_std']:.1f}"
        )
        if self.args.minari:
            self.write_minari(level, data)
        return stats

    def write_minari(self, level: str, data: dict[str, np.ndarray]) -> None:
        from aaren_rl.data.minari_export import write_minari

        dataset_id = (
            f"aaren/{self.task}/{level}{'-' + self.args.suffix if self.args.suffix else ''}-v0"
        )
        write_minari(dataset_id, self.env_id, data, overwrite=self.args.overwrite)
        self.log(f"[make-dataset] wrote Minari dataset {dataset_id}")

    def read_dataset(self, level: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        import h5py

        with h5py.File(self.dataset_path(level), "r") as f:
            data = {
                k: f[k][:] for k in ("observations", "actions", "rewards", "terminals", "timeouts")
            }
            if "next_observations" in f:
                data["next_observations"] = f["next_observations"][:]
            infos = {k: f["infos"][k][:] for k in f.get("infos", {})}
        return data, infos

    def write_summary(self) -> None:
        """``TASK-v5-summary.json`` (every dataset's stats) and the references JSON."""
        outputs = self.progress.fields["outputs"]
        datasets = {}
        refs = self.references()
        for level in LEVELS:
            path = self.dataset_path(level)
            key = str(path.resolve())
            if key in outputs and path.exists():
                s = dict(outputs[key])
                s["d4rl_normalised_mean"] = _normalise(
                    s["return_mean"], self.info.d4rl_random, self.info.d4rl_expert
                )
                if refs.get("random_mean") is not None and refs.get("expert_mean") is not None:
                    s["v5_normalised_mean"] = _normalise(
                        s["return_mean"], refs["random_mean"], refs["expert_mean"]
                    )
                datasets[path.stem] = s
        summary = {
            "generator": GENERATOR,
            "task": self.task,
            "env_id": self.env_id,
            "seed": self.args.seed,
            "sac_steps_trained_here": self.progress.fields.get("num_timesteps", 0),
            "medium": self.progress.fields.get("medium"),
            "policies": {
                level: _file_info(path)
                for level in ("medium", "expert")
                if (path := self.find_policy(level)) is not None
            },
            "references": refs,
            "datasets": datasets,
        }
        write_text_atomic(self.summary_path, json.dumps(summary, indent=2))
        if refs.get("random_mean") is not None or refs.get("expert_mean") is not None:
            write_text_atomic(self.refs_path, json.dumps(refs, indent=2))

    def references(self) -> dict[str, Any]:
        """v5 reference returns measured here: mean return of the random and expert datasets."""
        refs: dict[str, Any] = {
            "env_id": self.env_id,
            "d4rl_random": self.info.d4rl_random,
            "d4rl_expert": self.info.d4rl_expert,
            "random_mean": None,
            "expert_mean": None,
        }
        if self.refs_path.exists():
            try:
                old = json.loads(self.refs_path.read_text())
                refs.update(
                    {
                        k: old[k]
                        for k in (
                            "random_mean",
                            "expert_mean",
                            "random_episodes",
                            "expert_episodes",
                        )
                        if k in old
                    }
                )
            except (json.JSONDecodeError, KeyError):
                pass
        outputs = self.progress.fields["outputs"]
        for level in ("random", "expert"):
            key = str(self.dataset_path(level).resolve())
            if key in outputs:
                refs[f"{level}_mean"] = outputs[key]["return_mean"]
                refs[f"{level}_episodes"] = outputs[key]["complete_episodes"]
        refs["how"] = (
            "mean undiscounted return of the complete episodes of this build's random "
            "(uniform actions) and expert (SAC, sampled actions) datasets on the v5 env"
        )
        return refs

    # ---- everything
    def run(self) -> int:
        todo = self.check_outputs()
        if not todo:
            self.write_summary()
            self.log("[make-dataset] nothing to do: every requested dataset is built")
            return 0
        self.work.mkdir(parents=True, exist_ok=True)
        self.progress.fields.setdefault("task", self.task)
        self.progress.fields.setdefault("seed", self.args.seed)
        if self.progress.fields["seed"] != self.args.seed:
            raise SystemExit(
                f"make-dataset: {self.progress.path} belongs to seed {self.progress.fields['seed']}, "
                f"not {self.args.seed}; use another --work-dir"
            )
        self.progress.save()
        train, to_expert = self.needs_training(todo)
        if train and not self.args.train_sac:
            raise SystemExit(self.no_training_message(todo))
        if train and not self.train(to_expert):
            self.log(
                f"[make-dataset] stopped after --train-steps-per-run at step "
                f"{self.progress.fields['num_timesteps']}; run the same command again to continue"
            )
            return 0
        if "medium-replay" in todo and not self.progress.output_done(
            self.dataset_path("medium-replay")
        ):
            self.replay_from_checkpoint()
        if "medium-replay" in todo and not self.progress.output_done(
            self.dataset_path("medium-replay")
        ):
            raise SystemExit(
                "make-dataset: medium-replay needs the replay buffer of this build's SAC run, but "
                f"{self.work} has none up to the medium snapshot; use a fresh --work-dir"
            )
        built: dict[str, tuple[dict, dict]] = {}

        def level_arrays(level: str) -> tuple[dict, dict]:
            if level not in built:
                path = self.dataset_path(level)
                if self.progress.output_done(path) and not (level in todo and self.args.overwrite):
                    built[level] = self.read_dataset(level)
                else:
                    built[level] = episodes_to_arrays(self.rollout(level))
                    if level in todo:
                        self.write_dataset(level, *built[level])
            return built[level]

        for level in ("random", "medium", "expert"):
            if level in todo or (level in ("medium", "expert") and "medium-expert" in todo):
                level_arrays(level)
        if "medium-expert" in todo:
            (dm, im), (de, ie) = level_arrays("medium"), level_arrays("expert")
            data = {k: np.concatenate([dm[k], de[k]]) for k in dm if k in de}
            infos = {k: np.concatenate([im[k], ie[k]]) for k in im if k in ie}
            self.write_dataset("medium-expert", data, infos)
        self.write_summary()
        self.log(f"[make-dataset] done; summary in {self.summary_path}")
        return 0


REPLAY_FILE = "replay_buffer.npz"
REPLAY_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def save_replay_rows(buffer, path: Path) -> None:
    """Write the filled rows of an SB3 ``ReplayBuffer`` (``[n, n_envs, ...]`` each) to ``path``.

    SB3's ``save_replay_buffer`` pickles the whole preallocated buffer (200 MB for Hopper at
    ``buffer_size`` 1M, however few steps are stored); this keeps only the ``n`` rows filled so
    far, so the file grows with the steps trained (about 0.2 KB a step on Hopper).
    """
    n = buffer.buffer_size if buffer.full else buffer.pos
    rows = {name: getattr(buffer, name)[:n] for name in REPLAY_FIELDS}
    with open(path, "wb") as handle:
        np.savez(handle, pos=buffer.pos, full=buffer.full, buffer_size=buffer.buffer_size, **rows)


def load_replay_rows(buffer, path: Path) -> None:
    """Fill an SB3 ``ReplayBuffer`` with the rows :func:`save_replay_rows` wrote to ``path``;
    ``pos`` and ``full`` as they were, so SAC trains on from exactly the stored transitions."""
    with np.load(path) as saved:
        n = len(saved["rewards"])
        if n > buffer.buffer_size:
            raise ValueError(
                f"{path}: holds {n} transitions, more than the buffer's {buffer.buffer_size}. "
                "Fix: give --buffer-size of at least that"
            )
        for name in REPLAY_FIELDS:
            getattr(buffer, name)[:n] = saved[name]
        if int(saved["buffer_size"]) == buffer.buffer_size:
            buffer.pos, buffer.full = int(saved["pos"]), bool(saved["full"])
        else:  # a buffer that never wrapped, loaded into one of another size
            buffer.pos, buffer.full = n % buffer.buffer_size, n == buffer.buffer_size


def grow_replay_buffer(buffer, size: int):
    """A copy of an SB3 ``ReplayBuffer`` (not wrapped around) with room for ``size`` steps."""
    if buffer.full and buffer.pos != 0:
        raise ValueError("cannot grow a replay buffer that has wrapped around")
    n = buffer.buffer_size if buffer.full else buffer.pos
    bigger = type(buffer)(
        size,
        buffer.observation_space,
        buffer.action_space,
        device=buffer.device,
        n_envs=buffer.n_envs,
        handle_timeout_termination=buffer.handle_timeout_termination,
    )
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        getattr(bigger, name)[:n] = getattr(buffer, name)[:n]
    bigger.pos = n
    bigger.full = n == size
    return bigger


def _file_info(path: Path) -> dict[str, Any]:
    """Name, size and SHA-256 of a file (to tie a dataset to the policy that made it)."""
    import hashlib

    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def _stats(
    returns: np.ndarray, lengths: np.ndarray, complete: np.ndarray, transitions: int
) -> dict[str, Any]:
    """Return statistics over the complete episodes (ended by the env: terminal or time limit);
    an episode cut by the transition budget or a snapshot is counted but not averaged."""
    done = returns[complete] if complete.any() else returns
    return {
        "transitions": int(transitions),
        "episodes": len(returns),
        "complete_episodes": int(complete.sum()),
        "return_mean": float(done.mean()),
        "return_std": float(done.std()),
        "return_min": float(done.min()),
        "return_max": float(done.max()),
        "length_mean": float(lengths[complete].mean() if complete.any() else lengths.mean()),
    }


def _normalise(value: float, low: float | None, high: float | None) -> float | None:
    if low is None or high is None or not np.isfinite(low) or not np.isfinite(high) or high == low:
        return None
    return 100.0 * (value - low) / (high - low)


def _versions() -> str:
    import gymnasium
    import mujoco
    import stable_baselines3

    return (
        f"gymnasium {gymnasium.__version__}, mujoco {mujoco.__version__}, "
        f"stable-baselines3 {stable_baselines3.__version__}, python {sys.version.split()[0]}"
    )


def _make_callback_class():
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class BuildCallback(BaseCallback):
        """Evaluate, snapshot medium, checkpoint and show progress during ``SAC.learn``.

        Work happens in ``_on_rollout_end`` (after SB3 has stored the step's transition, so the
        replay buffer holds exactly ``num_timesteps`` transitions); stopping happens in the next
        ``_on_step``.
        """

        def __init__(self, build: Build, model, start: int, target: int, to_expert: bool):
            super().__init__()
            self.build, self.start, self.target, self.to_expert = build, start, target, to_expert
            self.stop = False
            self.stopped_early = False
            self.last_eval: float | None = None
            self.bar = tqdm(
                total=target,
                initial=start,
                desc=f"{build.task} SAC",
                unit="step",
                disable=build.args.quiet,
                mininterval=1.0 if sys.stderr.isatty() else 60.0,
            )
            self.t0 = time.time()

        def _on_step(self) -> bool:
            return not self.stop

        def _on_rollout_end(self) -> None:
            args, b = self.build.args, self.build
            step = self.model.num_timesteps
            self.bar.update(step - self.bar.n)
            if step % args.eval_freq == 0 or step >= self.target:
                mean, std = b.evaluate(self.model)
                self.last_eval = mean
                self.logger.record("eval/mean_return", mean)
                self.logger.record("eval/std_return", std)
                self.logger.record(
                    "time/sac_steps_per_s", (step - self.start) / (time.time() - self.t0)
                )
                self.logger.dump(step)
                self.bar.set_postfix(eval=f"{mean:.0f}", target=f"{b.threshold:.0f}")
                if not self.bar.disable and not sys.stderr.isatty():
                    print(
                        f"[make-dataset] step {step}: eval return {mean:.1f} +- {std:.1f}",
                        flush=True,
                    )
                if b.progress.fields.get("medium") is None and mean >= b.threshold:
                    self.bar.write(f"[make-dataset] medium reached at step {step}: {mean:.1f}")
                    b.snapshot_medium(self.model, mean, reached=True)
                    if not self.to_expert:
                        self.stop = True
                elif self.to_expert and b.progress.fields.get("medium") is not None:
                    b.record_expert_eval(self.model, step, mean, std)
            per_run = args.train_steps_per_run
            if per_run is not None and step - self.start >= per_run and step < self.target:
                self.stop = self.stopped_early = True
            if step % args.checkpoint_freq == 0 or step >= self.target or self.stop:
                b.save_checkpoint(self.model)

        def _on_training_end(self) -> None:
            self.bar.close()

    return BuildCallback


def _BuildCallback(*a, **k):  # noqa: N802 - built lazily so SB3 is imported only when training
    return _make_callback_class()(*a, **k)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``aaren-rl make-dataset``."""
    apply_threads(args.threads)
    try:
        return Build(args).run()
    except FileExistsError as exc:
        print(f"make-dataset: {exc}", file=sys.stderr)
        return 2
