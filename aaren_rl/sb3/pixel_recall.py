"""``PixelRecall-v0``: a small pixel task that needs memory, for image policies.

Every episode lasts ``length`` steps (default 6) with ``n_cues`` actions (default 4). Images
are ``[size, size, 1]`` uint8, channel-last (default 36 x 36, the smallest NatureCNN takes).
The first image shows a bright square in one of ``n_cues`` quadrant-like cells (the cue);
the middle images show only noise; the last shows a bar across the middle (the question) and
the agent must answer with the cue's action: +1 if right, 0 otherwise. Only the last step's
action is scored. Without memory the answer is a guess (``1 / n_cues`` on average); with
memory the best return is 1.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

PIXEL_RECALL_ID = "PixelRecall-v0"


class PixelRecallEnv(gym.Env):
    """See the module docstring."""

    metadata = {"render_modes": ["rgb_array"]}  # accepted (SB3's make_vec_env asks), not drawn

    def __init__(
        self,
        n_cues: int = 4,
        length: int = 6,
        size: int = 36,
        noise: int = 40,
        render_mode: str | None = None,
    ) -> None:
        if n_cues not in (2, 4):
            raise ValueError(f"n_cues must be 2 or 4 (cells of the image), got {n_cues}")
        if length < 2:
            raise ValueError(f"length must be >= 2, got {length}")
        if size < 36:
            raise ValueError(f"size must be >= 36 (NatureCNN's smallest input), got {size}")
        self.n_cues, self.length, self.size, self.noise = n_cues, length, size, noise
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(n_cues)
        self.observation_space = spaces.Box(0, 255, (size, size, 1), np.uint8)
        self.t, self.cue = 0, 0

    def _cell(self, cue: int) -> tuple[slice, slice]:
        """Cue ``cue``'s square, a quarter of the image's side: centred in its quadrant (4
        cues) or in the left or right half (2 cues)."""
        half, side = self.size // 2, self.size // 4
        col = (cue % 2) * half + (half - side) // 2
        row = (
            (cue // 2) * half + (half - side) // 2 if self.n_cues == 4 else (self.size - side) // 2
        )
        return slice(row, row + side), slice(col, col + side)

    def _image(self) -> np.ndarray:
        img = self.np_random.integers(0, self.noise + 1, (self.size, self.size, 1)).astype(np.uint8)
        if self.t == 0:
            rows, cols = self._cell(self.cue)
            img[rows, cols] = 255
        elif self.t == self.length - 1:
            mid = self.size // 2
            img[mid - 2 : mid + 2, :] = 255
        return img

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.cue = int(self.np_random.integers(self.n_cues))
        return self._image(), {}

    def step(self, action):
        if self.t == self.length - 1:
            return self._image(), float(int(action) == self.cue), True, False, {}
        self.t += 1
        return self._image(), 0.0, False, False, {}


def register_pixel_recall() -> None:
    """Register ``PixelRecall-v0`` with Gymnasium (idempotent)."""
    if PIXEL_RECALL_ID not in gym.registry:
        gym.register(PIXEL_RECALL_ID, entry_point=PixelRecallEnv)
