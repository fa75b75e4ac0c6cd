"""Slow reference calculations written from the definitions, shared by several test modules.

Each is a plain Python loop over floats, deliberately unlike the vectorised code it checks, so that a test
comparing the two is an independent check.
"""

from __future__ import annotations


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
