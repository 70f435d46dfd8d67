"""AarenPPO: PPO with an Aaren memory, an SB3 on-policy algorithm.

Follows sb3-contrib's ``RecurrentPPO`` (docs/design.md section 5) with the LSTM swapped for Aaren:

- collection steps every env's memory once per step and stores the state carried into each
  step (through :class:`~aaren_rl.sb3.fast_collect.FastCollectionStep`, built from the weights
  at the start of every rollout: ``policy.forward``'s results with less overhead); a
  truncated episode is bootstrapped from its terminal observation with that env's critic
  state;
- the update cuts each env's rollout into sequences of ``sequence_length`` steps and runs each
  minibatch through the parallel scan in one call: the stored state carried in, the memory
  restarted at episode starts inside a sequence, the padding masked out of every loss. There is
  no Python loop over timesteps, which is where ``RecurrentPPO`` spends its time when an
  episode starts inside a batch (its ``_process_sequence``);
- SB3 supplies the rest unchanged: callbacks, the ``train/*`` logger keys, ``save``/``load``
  (the live memory stays out of the file and is rebuilt by ``_setup_model``) and ``set_env``,
  here also with a different number of envs.

``batch_size`` counts steps, as in PPO: a minibatch holds ``batch_size // sequence_length``
sequences (at least one). ``sequence_length`` defaults to ``n_steps`` (one sequence per env).
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from aaren_rl.sb3.buffers import AarenDictRolloutBuffer, AarenRolloutBuffer
from aaren_rl.sb3.checks import check_rollout_step, check_saved_model
from aaren_rl.sb3.fast_collect import FastCollectionStep
from aaren_rl.sb3.names import unknown_policy_message
from aaren_rl.sb3.policies import (
    AarenActorCriticPolicy,
    AarenPPOState,
    CnnAarenPolicy,
    MlpAarenPolicy,
    MultiInputAarenPolicy,
)

SelfAarenPPO = TypeVar("SelfAarenPPO", bound="AarenPPO")


class AarenPPO(OnPolicyAlgorithm):
    """Proximal Policy Optimisation with an Aaren memory (see the module docstring).

    Arguments are PPO's (``stable_baselines3.PPO``) plus ``sequence_length``; the memory's
    size and the critic option go in ``policy_kwargs`` (``d_model``, ``n_layers``,
    ``n_heads``, ``d_ff``, ``critic="separate" | "shared" | "joint" | "none"``, ...).

    Two defaults differ from PPO's: ``target_kl=0.01`` (an epoch loop stops once a
    minibatch's approximate KL passes 0.015) and ``ent_coef=0.01``. With them and the
    policy's default memory, sb3-contrib's RecurrentPPO performance test passes on seeds 0-5
    (docs/sb3.md, "Defaults"); pass ``target_kl=None, ent_coef=0.0`` for PPO's.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpAarenPolicy": MlpAarenPolicy,
        "CnnAarenPolicy": CnnAarenPolicy,
        "MultiInputAarenPolicy": MultiInputAarenPolicy,
    }

    def __init__(
        self,
        policy: str | type[AarenActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 128,
        batch_size: int = 128,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.01,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        target_kl: float | None = 0.01,
        sequence_length: int | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
            supported_action_spaces=(
                spaces.Box,
                spaces.Discrete,
                spaces.MultiDiscrete,
                spaces.MultiBinary,
            ),
        )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if sequence_length is not None and sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1 or None, got {sequence_length}")
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range
        self.clip_range_vf = clip_range_vf
        self.normalize_advantage = normalize_advantage
        self.target_kl = target_kl
        self.sequence_length = sequence_length
        self._last_aaren_state: AarenPPOState | None = None
        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------ set-up
    def _get_policy_from_name(self, policy_name: str) -> type[BasePolicy]:
        """SB3's alias lookup; an unknown name gets the known ones (and a RecurrentPPO name
        its AarenPPO equivalent)."""
        if policy_name in self.policy_aliases:
            return self.policy_aliases[policy_name]
        raise ValueError(
            unknown_policy_message(policy_name, self.policy_aliases, type(self).__name__)
        )

    def _mask_dims(self) -> int:
        """Numbers per env in a step's action mask that the rollout buffer keeps (0: none;
        MaskableAarenPPO keeps them)."""
        return 0

    def _action_masks(self, env: VecEnv) -> np.ndarray | None:
        """The allowed actions of every env at the current step, or None (every action
        allowed): AarenPPO takes none, MaskableAarenPPO asks the env."""
        return None

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(
            self.observation_space,
            self.action_space,
            self.lr_schedule,
            use_sde=self.use_sde,
            **self.policy_kwargs,
        )
        self.policy = self.policy.to(self.device)
        if not isinstance(self.policy, AarenActorCriticPolicy):
            raise ValueError("AarenPPO's policy must subclass AarenActorCriticPolicy")
        self._setup_rollout()
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            if isinstance(self.clip_range_vf, (float, int)) and self.clip_range_vf <= 0:
                raise ValueError("clip_range_vf must be positive; pass None to turn it off")
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)

    def _setup_rollout(self) -> None:
        """The live memory and the rollout buffer for ``self.n_envs`` envs."""
        buffer_cls = (
            AarenDictRolloutBuffer
            if isinstance(self.observation_space, spaces.Dict)
            else AarenRolloutBuffer
        )
        self.rollout_buffer = buffer_cls(
            self.n_steps,
            self.observation_space,
            self.action_space,
            self.policy.state_dim,
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            mask_dims=self._mask_dims(),
        )
        with torch.no_grad():
            self._last_aaren_state = self.policy.initial_state(self.n_envs)

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        """SB3's ``set_env``, also for a different number of envs (the memory and the buffer
        are rebuilt for the new count, and the env is reset)."""
        env = self._wrap_env(env, self.verbose)
        changed = env.num_envs != self.n_envs
        self.n_envs = env.num_envs
        super().set_env(env, force_reset=force_reset or changed)
        if changed or self._last_aaren_state is None:
            self._setup_rollout()

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfAarenPPO], path: Any, *args: Any, **kwargs: Any
    ) -> SelfAarenPPO:
        """SB3's ``load``, after checking the file (:func:`~aaren_rl.sb3.checks.check_saved_model`):
        a truncated zip or another algorithm's save is an :class:`SB3InputError` naming the
        file and the fix."""
        check_saved_model(path, cls.__name__, AarenActorCriticPolicy)
        return super().load(path, *args, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_last_aaren_state"]

    # ------------------------------------------------------------------ collection
    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """Fill ``rollout_buffer`` with ``n_rollout_steps`` steps of every env (SB3's
        contract: False if a callback stopped the rollout)."""
        assert isinstance(rollout_buffer, (AarenRolloutBuffer, AarenDictRolloutBuffer))
        assert self._last_obs is not None, "No previous observation was provided"
        policy: AarenActorCriticPolicy = self.policy  # type: ignore[assignment]
        policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        if self.use_sde:
            policy.reset_noise(env.num_envs)
        callback.on_rollout_start()
        state = self._last_aaren_state
        with torch.no_grad():  # the weights are fixed for the rollout: their fused form once
            step = FastCollectionStep(policy)
        while n_steps < n_rollout_steps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
                policy.reset_noise(env.num_envs)
            with torch.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)
                starts = torch.as_tensor(self._last_episode_starts, device=self.device)
                action_masks = self._action_masks(env)  # before the step, as MaskablePPO
                actions, values, log_probs, new_state = step(
                    obs_tensor, state, starts, action_masks=action_masks
                )
                packed = policy.pack(state).cpu().numpy()
            actions = actions.cpu().numpy()
            clipped = actions
            if isinstance(self.action_space, spaces.Box):
                if policy.squash_output:
                    clipped = policy.unscale_action(clipped)
                else:
                    clipped = np.clip(actions, self.action_space.low, self.action_space.high)
            new_obs, rewards, dones, infos = env.step(clipped)
            check_rollout_step(new_obs, rewards, n_steps, self.num_timesteps + env.num_envs)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            for idx, done in enumerate(dones):
                if (
                    done
                    and infos[idx].get("terminal_observation") is not None
                    and infos[idx].get("TimeLimit.truncated", False)
                ):
                    terminal_obs = policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with torch.no_grad():
                        env_state = policy.select_rows(new_state, slice(idx, idx + 1))
                        no_start = torch.zeros(1, dtype=torch.bool, device=self.device)
                        terminal_value = policy.predict_values(terminal_obs, env_state, no_start)
                    rewards[idx] += self.gamma * terminal_value.item()
            rollout_buffer.add(
                self._last_obs,
                actions,
                rewards,
                self._last_episode_starts,
                values,
                log_probs,
                state=packed,
                action_masks=action_masks,
            )
            self._last_obs = new_obs
            self._last_episode_starts = dones
            state = new_state
        self._last_aaren_state = state
        with torch.no_grad():
            starts = torch.as_tensor(dones, device=self.device)
            values = policy.predict_values(obs_as_tensor(new_obs, self.device), state, starts)
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.on_rollout_end()
        return True

    # ------------------------------------------------------------------ update
    def train(self) -> None:
        """PPO's clipped update over whole padded sequences (one scan per minibatch)."""
        policy: AarenActorCriticPolicy = self.policy  # type: ignore[assignment]
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)
        seq_len = self.sequence_length or self.n_steps
        # the per-minibatch statistics stay tensors and are read once, after the update (one
        # .item() each per minibatch was a sync apiece); target_kl reads approx_kl as it goes
        entropy_losses: list[Tensor] = []
        pg_losses: list[Tensor] = []
        value_losses: list[Tensor] = []
        clip_fractions: list[Tensor] = []
        approx_kl_divs: list[Tensor] = []
        continue_training = True
        loss = torch.zeros(())
        params = list(policy.parameters())  # once: walking the modules costs ~0.1 ms a time
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for batch in self.rollout_buffer.sequences(seq_len, self.batch_size):
                actions = batch.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = actions.long().flatten()
                values, log_prob, entropy = policy.evaluate_actions(
                    batch.observations,
                    actions,
                    policy.unpack(batch.states),
                    batch.episode_starts,
                    batch.mask,
                    batch.action_masks,
                )
                advantages = batch.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                ratio = torch.exp(log_prob - batch.old_log_prob)
                surrogate = torch.min(
                    advantages * ratio,
                    advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range),
                )
                policy_loss = -surrogate.mean()
                pg_losses.append(policy_loss.detach())
                clip_fractions.append(((ratio - 1).abs() > clip_range).float().mean().detach())
                values_pred = values
                if clip_range_vf is not None:
                    values_pred = batch.old_values + torch.clamp(
                        values - batch.old_values, -clip_range_vf, clip_range_vf
                    )
                value_loss = ((batch.returns - values_pred) ** 2).mean()
                value_losses.append(value_loss.detach())
                entropy_loss = -(entropy.mean() if entropy is not None else (-log_prob).mean())
                entropy_losses.append(entropy_loss.detach())
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                with torch.no_grad():
                    log_ratio = log_prob - batch.old_log_prob
                    approx_kl = ((torch.exp(log_ratio) - 1) - log_ratio).mean()
                    approx_kl_divs.append(approx_kl)
                if self.target_kl is not None and approx_kl.item() > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(
                            f"Early stopping at step {epoch} due to reaching max kl: "
                            f"{approx_kl.item():.2f}"
                        )
                    break
                policy.optimizer.zero_grad()
                loss.backward()
                clip_grad_norm(params, self.max_grad_norm)
                policy.optimizer.step()
            self._n_updates += 1
            if not continue_training:
                break
        explained_var = explained_variance(
            self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()
        )
        self.logger.record("train/entropy_loss", _mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", _mean(pg_losses))
        self.logger.record("train/value_loss", _mean(value_losses))
        self.logger.record("train/approx_kl", _mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", _mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(policy, "log_std"):
            self.logger.record("train/std", torch.exp(policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def learn(
        self: SelfAarenPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "AarenPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfAarenPPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


def _mean(stats: list[Tensor]) -> np.floating:
    """``np.mean`` of the per-minibatch statistics, as SB3's PPO takes it of their ``.item()``
    (each float32 value widened to a Python float, then averaged in float64; NaN if none)."""
    if not stats:
        return np.mean([])
    return np.mean(torch.stack(stats).cpu().numpy().astype(np.float64))


@torch.no_grad()
def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm)`` (the 2-norm over every gradient,
    scaled down to ``max_norm`` if above it; the same ops, so the same bits) with one foreach
    norm and one foreach multiply and no per-call grouping by device and dtype: the grouping
    and its Python cost about 60 us per minibatch on one CPU thread. Every gradient must
    share one device and dtype (a policy's do); otherwise torch's function is used.
    -> the total norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    first = grads[0]
    if any(g.device != first.device or g.dtype != first.dtype for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    clip_coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, clip_coef)
    return total
