"""Slow reference calculations written from the definitions, shared by several test modules.

Each is a plain Python loop over floats, or a sum over all the data at once, deliberately unlike the
vectorised or running code it checks, so that a test comparing the two is an independent check.
"""

from __future__ import annotations

import math

import numpy as np


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Generalised advantage estimates, one environment at a time, from the definition.

    A_t = sum_k (gamma*lam)^k delta_{t+k}, the sum running to the end of the episode that contains t;
    delta_t = r_t + gamma * V(next obs of t) * (1 - terminated_t) - V(s_t). Inputs are [T][N] lists;
    next_values[t][n] is V of step t's real next observation (the final one at a truncation).
    """
    T, N = len(rewards), len(rewards[0])
    adv = [[0.0] * N for _ in range(T)]
    for n in range(N):
        for t in range(T):
            total, k = 0.0, t
            while k < T:
                delta = rewards[k][n] + gamma * next_values[k][n] * (1 - terminated[k][n]) - values[k][n]
                total += (gamma * lam) ** (k - t) * delta
                if terminated[k][n] or truncated[k][n]:
                    break
                k += 1
            adv[t][n] = total
    return adv


def pooled_with_prior(data: np.ndarray, prior_count: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the data pooled with a prior pseudo-sample (mean 0, variance 1, weight prior_count)."""
    n = len(data) + prior_count
    mean = data.sum(0) / n
    var = (prior_count * (1.0 + mean**2) + ((data - mean) ** 2).sum(0)) / n
    return mean, var


def reference_scaled_rewards(rewards, dones, gamma, clip):
    """From the definitions, with no running state: at step t, G^n_t = sum of gamma^(t-k) r^n_k over the
    steps k <= t of env n's current episode; the scale is the pooled standard deviation of every G seen up
    to and including step t (all environments), with the mean-0 variance-1 prior of weight 1e-4."""
    T, N = rewards.shape
    seen, out = [], np.zeros((T, N))
    for t in range(T):
        for n in range(N):
            start = t
            while start > 0 and not dones[start - 1, n]:
                start -= 1
            seen.append(sum(gamma ** (t - k) * rewards[k, n] for k in range(start, t + 1)))
        _, var = pooled_with_prior(np.array(seen), 1e-4)
        out[t] = np.clip(rewards[t] / math.sqrt(var + 1e-8), -clip, clip)
    return out


def categorical_projection_cases():
    """Hand-worked cases of C51's projection of the target distribution onto a fixed support.

    Each case: next_probs [B, 5], rewards [B], dones [B] (1.0 = terminated), gamma, support [5], and the
    expected projection [B, 5] worked out by hand. The support is z = [-2, -1, 0, 1, 2] (delta_z = 1), so
    an atom's position is b = Tz + 2; Tz = clamp(r + gamma * (1 - done) * z, -2, 2); probability p at
    position b goes (u - b) * p to atom l = floor(b) and (b - l) * p to atom u = ceil(b), all of it to l
    when b is an atom (l == u). Shared by the C51 and Rainbow tests.
    """
    import torch

    support = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    p = [0.1, 0.2, 0.3, 0.15, 0.25]  # an asymmetric next-state distribution used by several rows
    return [
        {   # an ordinary shift, every target between two atoms
            # r = 0.25, gamma = 0.5: Tz = 0.25 + 0.5 z = [-0.75, -0.25, 0.25, 0.75, 1.25], b = [1.25, 1.75, 2.25, 2.75, 3.25]
            # p=0.1 at 1.25 -> atom1 0.075, atom2 0.025;  p=0.2 at 1.75 -> atom1 0.05, atom2 0.15
            # p=0.4 at 2.25 -> atom2 0.3,  atom3 0.1;     p=0.2 at 2.75 -> atom2 0.05, atom3 0.15
            # p=0.1 at 3.25 -> atom3 0.075, atom4 0.025
            # atom1 0.075+0.05 = 0.125; atom2 0.025+0.15+0.3+0.05 = 0.525; atom3 0.1+0.15+0.075 = 0.325; atom4 0.025
            # (the mean is preserved: 0.25 + 0.5 * 0 = -0.125 + 0.325 + 2 * 0.025 = 0.25)
            "next_probs": torch.tensor([[0.1, 0.2, 0.4, 0.2, 0.1]]),
            "rewards": torch.tensor([0.25]),
            "dones": torch.tensor([0.0]),
            "gamma": 0.5,
            "support": support,
            "expected": torch.tensor([[0.0, 0.125, 0.525, 0.325, 0.025]]),
        },
        {   # atoms pushed beyond the support are clipped to v_max (row 0) and v_min (row 1)
            # row 0: r = 1.5, gamma = 1: Tz = [-0.5, 0.5, 1.5, 2.5, 3.5] -> clamp -> [-0.5, 0.5, 1.5, 2, 2], b = [1.5, 2.5, 3.5, 4, 4]
            #   0.1 at 1.5 -> atom1 0.05, atom2 0.05;  0.2 at 2.5 -> atom2 0.1, atom3 0.1;  0.3 at 3.5 -> atom3 0.15, atom4 0.15
            #   0.15 and 0.25 at 4 -> atom4;  atom4 = 0.15 + 0.15 + 0.25 = 0.55
            # row 1: r = -1.5, gamma = 1: Tz = [-3.5, -2.5, -1.5, -0.5, 0.5] -> clamp -> [-2, -2, -1.5, -0.5, 0.5], b = [0, 0, 0.5, 1.5, 2.5]
            #   0.1 and 0.2 at 0 -> atom0;  0.3 at 0.5 -> atom0 0.15, atom1 0.15;  0.15 at 1.5 -> atom1 0.075, atom2 0.075
            #   0.25 at 2.5 -> atom2 0.125, atom3 0.125;  atom0 = 0.1 + 0.2 + 0.15 = 0.45, atom1 = 0.225, atom2 = 0.2
            "next_probs": torch.tensor([p, p]),
            "rewards": torch.tensor([1.5, -1.5]),
            "dones": torch.tensor([0.0, 0.0]),
            "gamma": 1.0,
            "support": support,
            "expected": torch.tensor([[0.0, 0.05, 0.15, 0.25, 0.55],
                                      [0.45, 0.225, 0.2, 0.125, 0.0]]),
        },
        {   # targets landing exactly on atoms (l == u: the mass must not be lost)
            # r = 1, gamma = 1: Tz = [-1, 0, 1, 2, 3] -> clamp -> [-1, 0, 1, 2, 2], b = [1, 2, 3, 4, 4]
            #   atom1 0.1, atom2 0.2, atom3 0.3, atom4 0.15 + 0.25 = 0.4
            "next_probs": torch.tensor([p]),
            "rewards": torch.tensor([1.0]),
            "dones": torch.tensor([0.0]),
            "gamma": 1.0,
            "support": support,
            "expected": torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4]]),
        },
        {   # some targets on atoms, some between them
            # r = 0, gamma = 0.5: Tz = [-1, -0.5, 0, 0.5, 1], b = [1, 1.5, 2, 2.5, 3]
            #   0.1 at 1 -> atom1;  0.2 at 1.5 -> atom1 0.1, atom2 0.1;  0.3 at 2 -> atom2;  0.15 at 2.5 -> atom2 0.075, atom3 0.075
            #   0.25 at 3 -> atom3;  atom1 = 0.2, atom2 = 0.1 + 0.3 + 0.075 = 0.475, atom3 = 0.075 + 0.25 = 0.325
            "next_probs": torch.tensor([p]),
            "rewards": torch.tensor([0.0]),
            "dones": torch.tensor([0.0]),
            "gamma": 0.5,
            "support": support,
            "expected": torch.tensor([[0.0, 0.2, 0.475, 0.325, 0.0]]),
        },
        {   # terminal transitions: no bootstrap, all the mass at r whatever next_probs says
            # row 0: r = 0.5 -> b = 2.5 -> atom2 0.5, atom3 0.5
            # row 1: r = -1.25 -> b = 0.75 -> atom0 0.25, atom1 0.75
            # row 2: r = 3 -> clamp -> 2 -> b = 4 -> atom4 1
            "next_probs": torch.tensor([p, p, p]),
            "rewards": torch.tensor([0.5, -1.25, 3.0]),
            "dones": torch.tensor([1.0, 1.0, 1.0]),
            "gamma": 0.99,
            "support": support,
            "expected": torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0],
                                      [0.25, 0.75, 0.0, 0.0, 0.0],
                                      [0.0, 0.0, 0.0, 0.0, 1.0]]),
        },
    ]
