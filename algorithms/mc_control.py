"""Monte Carlo control: exploring starts (§5.3) and on-policy first-visit epsilon-soft control (§5.4).

Sutton & Barto, Reinforcement Learning: An Introduction, 2nd ed., 2018, Chapter 5, on Blackjack
(Example 5.3, Figure 5.2); http://incompleteideas.net/book/the-book-2nd.html

Run:
    python algorithms/mc_control.py                       # Figure 5.2 + the epsilon-soft policy
    python algorithms/mc_control.py --num-episodes 2000000

Update rules, as in the code (first-visit; Blackjack never repeats a state within an episode):

    Monte Carlo ES (§5.3):
        pick S0, A0 uniformly at random (exploring start), then follow pi
        G <- 0;  for t = T-1..0:  G <- gamma*G + R[t+1]
                                  N(S_t,A_t) += 1;  Q(S_t,A_t) += (G - Q(S_t,A_t)) / N(S_t,A_t)
                                  pi(S_t) <- argmax_a Q(S_t,a)
    On-policy first-visit epsilon-soft (§5.4): the same backward loop from an ordinary deal, acting
        with pi(a|s) = 1 - eps + eps/|A| for a = A* = argmax_a Q(s,a), and eps/|A| otherwise.

The incremental mean Q += (G - Q)/N is the book's "Append G to Returns; Q <- average(Returns)".

Blackjack: Gymnasium's Blackjack-v1 with `sab=True` (a natural wins unless the dealer also has one),
stepped through its API. As in the book the player decides only for sums 12-21 (200 states): with 11 or
less the player always hits (no card can bust), and those steps are neither chosen nor learned.

How the exploring start is set: `env.reset()` deals a hand as usual (so the dealer's hidden card is
drawn by the environment's own generator), then `set_start_state` overwrites `env.unwrapped.player` with
a hand that has the chosen (sum, usable ace) and `env.unwrapped.dealer[0]` with the chosen showing card.
The hand for sum s with a usable ace is [ace, s-11] (so 21 with a usable ace is a natural, which is the
only way a game can start in that state); without one it is [10, s-10], and [10, 5, 6] for 21. Only the
sum and the usable ace matter for what happens next (infinite deck), apart from the natural.

The ties in argmax are broken towards "stick" (action 0), like numpy's argmax; Q starts at 0 and the
initial policy is Example 5.3's "stick only on 20 or 21".

Tested: Monte Carlo ES reproduces Figure 5.2's usable-ace policy (tests/test_mc_control.py).
Results: benchmark_results/mc_control.md
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import matplotlib
import numpy as np
import tyro
from gymnasium import spaces
from gymnasium.envs.toy_text.blackjack import BlackjackEnv

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Args:
    seed: int = 1
    """seed of the agent's generator and of the environment's first reset"""
    env_id: str = "Blackjack-v1"
    """the environment; only Blackjack-v1 (made with sab=True) is supported"""
    num_episodes: int = 500_000
    """training episodes for each method (ES and epsilon-soft)"""
    epsilon: float = 0.1
    """epsilon of the epsilon-soft policy (§5.4; the book gives no value for Blackjack)"""
    gamma: float = 1.0
    """discount factor (Blackjack is undiscounted in the book)"""
    eval_episodes: int = 100_000
    """episodes used to measure the mean return of each greedy policy and of the stick-on-20 policy"""
    plot: str = "benchmark_results/classic/figure_5_2_blackjack_optimal.png"
    """where to save the figure (Figure 5.2, plus the epsilon-soft greedy policy)"""


STICK, HIT = 0, 1
SUMS, DEALER = np.arange(12, 22), np.arange(1, 11)  # the 200 decision states of Example 5.1


# ----------------------------------------------------------------------------------------------------
# Environment helpers (Gymnasium's Blackjack-v1, set to a chosen state for exploring starts)
# ----------------------------------------------------------------------------------------------------
def make_blackjack(seed: int):
    """Gymnasium's Blackjack-v1 with the book's rules (sab=True); seeds its first reset and its action space."""
    env = gym.make("Blackjack-v1", sab=True)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def hand_for(player_sum: int, usable_ace: int) -> list[int]:
    """A hand of cards (1 = ace) whose sum is `player_sum` (12..21) with or without a usable ace."""
    if usable_ace:
        return [1, player_sum - 11]
    return [10, player_sum - 10] if player_sum <= 20 else [10, 5, 6]


def set_start_state(env, player_sum: int, dealer_card: int, usable_ace: int) -> tuple:
    """After env.reset(): overwrite the dealt hands so the game is in the chosen state; returns the obs."""
    game = env.unwrapped
    game.player = hand_for(player_sum, usable_ace)
    game.dealer[0] = dealer_card  # the hidden card game.dealer[1] stays as the environment drew it
    return (player_sum, dealer_card, usable_ace)


# ----------------------------------------------------------------------------------------------------
# Pure functions (what the tests check)
# ----------------------------------------------------------------------------------------------------
def initial_policy() -> np.ndarray:
    """Greedy action per observation (player sum 0..31, dealer 0..10, usable ace): stick on 20/21."""
    policy = np.full((32, 11, 2), HIT, dtype=np.int64)
    policy[20:, :, :] = STICK
    return policy


def epsilon_soft_probs(q_values: np.ndarray, epsilon: float) -> np.ndarray:
    """pi(.|s) of §5.4: 1 - eps + eps/|A| on the greedy action (ties -> lowest index), eps/|A| elsewhere."""
    num_actions = q_values.shape[-1]
    probs = np.full(q_values.shape, epsilon / num_actions)
    greedy = np.argmax(q_values, axis=-1)
    np.put_along_axis(probs, greedy[..., None], 1.0 - epsilon + epsilon / num_actions, axis=-1)
    return probs


def first_visit_update(q: np.ndarray, n: np.ndarray, policy: np.ndarray | None, states: list, actions: list,
                       rewards: list, gamma: float) -> None:
    """The backward loop of §5.3/§5.4 for one episode, in place.

    q, n: arrays indexed [*state, action]; policy (or None): greedy action per state, improved at each
    visited state. rewards[t] is R_{t+1}. Only the first visit of a pair (S_t, A_t) is averaged.
    """
    first = {}
    for t, pair in enumerate(zip(states, actions, strict=True)):
        first.setdefault(pair, t)
    g = 0.0
    for t in range(len(states) - 1, -1, -1):
        g = gamma * g + rewards[t]
        if first[(states[t], actions[t])] != t:
            continue
        index = (*states[t], actions[t])
        n[index] += 1
        q[index] += (g - q[index]) / n[index]
        if policy is not None:
            policy[states[t]] = int(np.argmax(q[states[t]]))


def play_episode(env, choose_action, obs, first_action=None):
    """Play one game from the observation `obs`; returns the decision steps (states, actions, rewards).

    first_action, if given, is taken at the first decision instead of choose_action's (an exploring start).
    With sums 11 or less every policy here hits without a decision (the book's convention): such a step
    has reward 0 and, for off-policy methods, ratio pi/b = 1, so it is played but not returned.
    """
    states, actions, rewards, done = [], [], [], False
    while not done:
        if obs[0] < 12:
            obs, _, terminated, truncated, _ = env.step(HIT)
            done = terminated or truncated
            continue
        action = first_action if first_action is not None and not states else choose_action(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        states.append(obs)
        actions.append(action)
        rewards.append(reward)
        obs, done = next_obs, terminated or truncated
    return states, actions, rewards


def play_games(env, choose_action, num_episodes: int) -> np.ndarray:
    """The returns of `num_episodes` ordinary games (dealt by env.reset()) played with choose_action(obs)."""
    returns = np.zeros(num_episodes)
    for i in range(num_episodes):
        obs, _ = env.reset()
        returns[i] = sum(play_episode(env, choose_action, obs)[2])
    return returns


# ----------------------------------------------------------------------------------------------------
# The two control methods
# ----------------------------------------------------------------------------------------------------
def monte_carlo_es(num_episodes: int, seed: int, gamma: float = 1.0):
    """§5.3: returns (Q, greedy policy, visit counts N). Arrays are indexed by the observation (and action)."""
    rng = np.random.default_rng(seed)
    env = make_blackjack(seed)
    q, n = np.zeros((32, 11, 2, 2)), np.zeros((32, 11, 2, 2), dtype=np.int64)
    policy = initial_policy()
    for _ in range(num_episodes):
        env.reset()
        # exploring start: every state-action pair of the 200 states has probability 1/400
        obs = set_start_state(env, int(rng.choice(SUMS)), int(rng.choice(DEALER)), int(rng.integers(2)))
        first_action = int(rng.integers(2))
        states, actions, rewards = play_episode(env, lambda o: int(policy[o]), obs, first_action)
        first_visit_update(q, n, policy, states, actions, rewards, gamma)
    env.close()
    return q, policy, n


def on_policy_epsilon_soft(num_episodes: int, epsilon: float, seed: int, gamma: float = 1.0):
    """§5.4: returns (Q, greedy policy w.r.t. Q, i.e. the epsilon-soft policy's A*, visit counts N)."""
    rng = np.random.default_rng(seed)
    env = make_blackjack(seed)
    q, n = np.zeros((32, 11, 2, 2)), np.zeros((32, 11, 2, 2), dtype=np.int64)
    greedy = initial_policy()  # A* of the initial epsilon-soft policy

    def behave(obs):
        # sample from pi(.|s): the greedy action with probability 1 - eps + eps/2, the other eps/2
        return int(rng.integers(2)) if rng.random() < epsilon else int(greedy[obs])

    for _ in range(num_episodes):
        obs, _ = env.reset()
        states, actions, rewards = play_episode(env, behave, obs)
        first_visit_update(q, n, greedy, states, actions, rewards, gamma)
    env.close()
    return q, greedy, n


# ----------------------------------------------------------------------------------------------------
def plot_figure_5_2(q_es, policy_es, policy_soft, epsilon, num_episodes, path):
    fig = plt.figure(figsize=(14, 8))
    for row, ace in enumerate((1, 0)):
        label = "usable ace" if ace else "no usable ace"
        for col, (policy, name) in enumerate(((policy_es, "pi* (Monte Carlo ES)"),
                                              (policy_soft, f"greedy of {epsilon}-soft (§5.4)"))):
            ax = fig.add_subplot(2, 3, 3 * row + 1 + 2 * col)
            ax.imshow(policy[12:22, 1:11, ace], origin="lower", cmap="coolwarm", vmin=0, vmax=1,
                      extent=(0.5, 10.5, 11.5, 21.5))
            ax.set_title(f"{name}, {label}\n(blue = STICK, red = HIT)", fontsize=9)
            ax.set_xlabel("dealer showing")
            ax.set_ylabel("player sum")
            ax.set_xticks(DEALER, ["A", *map(str, range(2, 11))])
            ax.set_yticks(SUMS)
        ax = fig.add_subplot(2, 3, 3 * row + 2, projection="3d")
        d_grid, s_grid = np.meshgrid(DEALER, SUMS)
        ax.plot_surface(d_grid, s_grid, q_es[12:22, 1:11, ace].max(axis=-1), cmap="viridis", vmin=-1, vmax=1)
        ax.set_zlim(-1, 1)
        ax.set_xlabel("dealer showing")
        ax.set_ylabel("player sum")
        ax.set_title(f"v* (Monte Carlo ES), {label}", fontsize=9)
    fig.suptitle(f"Figure 5.2: optimal policy and state-value function for Blackjack, {num_episodes:,} "
                 "episodes each")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of an --env-id, else gym.error.Error with a one-line reason. In Gymnasium's
    "module:Env-v0" form the module registers Env-v0 when imported: it is imported first, as gym.make does
    (gym.spec alone does not), so that a user's own environment passes the checks."""
    module, colon, name = env_id.rpartition(":")
    if colon:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - a user's module can fail to import in any way
            reason = (str(error).splitlines() or [""])[0]
            raise gym.error.Error(f"module {module!r} cannot be imported: {type(error).__name__}: {reason}") from None
    try:
        return gym.spec(name)
    except gym.error.Error as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise gym.error.Error(f"module {module!r} does not register {name}: {reason}" if colon else reason) from None


def check_args(args: Args) -> None:
    """Reject bad input with one line on stderr and exit status 2, before any work."""
    try:
        env_spec(args.env_id)
    except gym.error.Error as error:
        fail(f"--env-id {args.env_id} is unknown ({error}); use Blackjack-v1")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = gym.make(args.env_id)
        space, game = env.observation_space, env.unwrapped
    except Exception:  # an environment whose dependencies are missing is just as unusable here
        space, game = None, None
    if isinstance(space, spaces.Box):
        fail(f"--env-id {args.env_id} has a continuous observation space ({space}); this tabular "
             "file needs Blackjack-v1")
    if not isinstance(game, BlackjackEnv):
        fail(f"--env-id {args.env_id} is not Blackjack; this file's exploring starts need Blackjack-v1")
    for name in ("num_episodes", "eval_episodes"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not 0.0 < args.epsilon <= 1.0:
        fail(f"--epsilon must lie in (0, 1] for an epsilon-soft policy, got {args.epsilon}")
    if not 0.0 <= args.gamma <= 1.0:
        fail(f"--gamma must lie in [0, 1], got {args.gamma}")
    # A --plot path that cannot be written is bad input: say so now, not after the experiment (checked last,
    # so that no other bad input leaves a directory behind).
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    except OSError as exc:
        fail(f"cannot write --plot {args.plot}: {exc.strerror}; give a path in a writable directory")


def main(args: Args) -> dict:
    check_args(args)
    start = time.time()
    plot = Path(args.plot)
    q_es, policy_es, _ = monte_carlo_es(args.num_episodes, args.seed, args.gamma)
    _, policy_soft, _ = on_policy_epsilon_soft(args.num_episodes, args.epsilon, args.seed + 1, args.gamma)
    train_seconds = time.time() - start
    plot_figure_5_2(q_es, policy_es, policy_soft, args.epsilon, args.num_episodes, plot)

    # Each policy plays its own games; the SE of a mean of independent returns is sd / sqrt(n).
    env = make_blackjack(args.seed + 2)
    result = {"train_seconds": train_seconds}
    for name, policy in (("stick20", initial_policy()), ("es", policy_es), ("eps_soft", policy_soft)):
        returns = play_games(env, lambda o, policy=policy: int(policy[o]), args.eval_episodes)
        result[f"{name}_return"] = float(returns.mean())
        result[f"{name}_return_se"] = float(returns.std(ddof=1) / np.sqrt(args.eval_episodes))
    env.close()

    # Figure 5.2's usable-ace policy: stick on 19+, and on 18 against a dealer 2..8.
    book_usable = np.full((10, 10), HIT)
    book_usable[19 - 12:, :] = STICK
    book_usable[18 - 12, 1:8] = STICK
    result["es_usable_ace_cells_matching_book"] = int((policy_es[12:22, 1:11, 1] == book_usable).sum())
    print(f"Blackjack, {args.num_episodes:,} episodes per method ({train_seconds:.1f} s of training)")
    for name in ("stick20", "es", "eps_soft"):
        print(f"  greedy return {name:9s}: {result[f'{name}_return']:+.4f} +- "
              f"{result[f'{name}_return_se']:.4f} (SE, {args.eval_episodes:,} games)")
    print(f"  ES usable-ace policy matches Figure 5.2 in {result['es_usable_ace_cells_matching_book']}/100 cells")
    print(f"  figure: {plot}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
