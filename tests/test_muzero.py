"""Tests of algorithms/muzero.py: the tree search given the true rules of tic-tac-toe against an exact minimax
solver (tools/tictactoe_eval.py), the pUCT score, the value transform and its inverse, the two-hot support, the
n-step value targets, min-max normalisation, the replay's unrolled targets, and (slow) learning at tic-tac-toe and on CartPole-v1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tictactoe_eval
import torch
from conftest import assert_one_line_exit_2, load_algo, run_main
from tictactoe_eval import move_values, play, won  # the exact solver, independent of muzero.py

mz = load_algo("muzero")

class TrueRules:
    """Tic-tac-toe's real dynamics as a model for run_mcts: a state is the board from the mover's view (+1 the
    mover's marks); the value of every non-terminal state is 0 (no knowledge), the prior uniform over empty cells."""

    @staticmethod
    def logits(boards: np.ndarray, terminal: np.ndarray) -> np.ndarray:
        return np.where((boards == 0) & ~terminal[:, None], 0.0, -np.inf)

    def initial_inference(self, obs: np.ndarray):
        boards = obs[:, :9] - obs[:, 9:]
        return np.zeros(len(obs)), self.logits(boards, np.zeros(len(obs), bool)), boards

    def recurrent_inference(self, boards: np.ndarray, actions: np.ndarray):
        after = boards.copy()
        after[np.arange(len(after)), actions] = 1
        wins = np.array([won(tuple(b), 1) for b in after])
        terminal = wins | (after != 0).all(axis=1)
        return np.zeros(len(after)), wins.astype(float), self.logits(-after, terminal), -after


def observation(board: tuple) -> np.ndarray:
    b = np.array(board)
    return np.concatenate([b == 1, b == -1]).astype(np.float32)


def endgame_positions() -> list[tuple]:
    """Every reachable position with 4 or 5 empty cells in which some legal move is worse than the best one."""
    found, frontier = set(), {tuple([0] * 9)}
    for _ in range(5):  # positions after 5 moves (4 empty cells), then after 4 (5 empty): the mover's view
        nxt = set()
        for board in frontier:
            if won(tuple(-x for x in board), 1):
                continue  # the previous mover already won
            for a in (i for i in range(9) if board[i] == 0):
                after = list(board)
                after[a] = 1
                nxt.add(tuple(-x for x in after))
        frontier = nxt
        if 4 <= sum(x == 0 for x in next(iter(frontier))) <= 5:
            found |= {b for b in frontier if not won(tuple(-x for x in b), 1) and len(set(move_values(b).values())) > 1}
    return sorted(found)


def test_mcts_with_the_true_rules_plays_minimax_optimal_moves():
    positions = endgame_positions()
    rng = np.random.default_rng(0)
    chosen = [positions[i] for i in rng.choice(len(positions), size=40, replace=False)]
    obs = np.stack([observation(b) for b in chosen])
    legal = mz.legal_actions(obs, True, 9)
    visits, _ = mz.run_mcts(TrueRules(), obs, legal, num_simulations=300, discount=1.0, two_player=True,
                            known_bounds=(-1.0, 1.0))
    for board, v in zip(chosen, visits, strict=True):
        values = move_values(board)
        assert v.sum() == 300 and all(v[a] == 0 for a in range(9) if a not in values)
        best = max(values.values())
        assert values[int(v.argmax())] == best, (board, values, v)


def test_mcts_root_value_of_a_won_position():
    """The mover has two ways to complete a line: every simulation through them backs up +1."""
    board = (1, 1, 0, -1, -1, 0, 0, 0, 0)
    visits, root_values = mz.run_mcts(TrueRules(), observation(board)[None], mz.legal_actions(observation(board)[None], True, 9),
                                      num_simulations=200, discount=1.0, two_player=True, known_bounds=(-1.0, 1.0))
    assert int(visits[0].argmax()) == 2
    assert root_values[0] > 0.8


def test_ucb_score_against_hand_values():
    stats = mz.MinMaxStats()
    for q in (-1.0, 3.0):
        stats.update(q)
    prior, visits, q = np.array([0.5, 0.3, 0.2]), np.array([2.0, 0.0, 7.0]), np.array([1.0, 0.0, 2.0])
    parent = 10
    c = 1.25 + math.log((10 + 19652 + 1) / 19652)
    expected = [0.5 + 0.5 * math.sqrt(10) / 3 * c, 0.0 + 0.3 * math.sqrt(10) / 1 * c, 0.75 + 0.2 * math.sqrt(10) / 8 * c]
    np.testing.assert_allclose(mz.ucb_scores(prior, visits, q, parent, stats, 1.25, 19652.0), expected, rtol=1e-12)
    # the exploration term's growth with N(s): c2 small makes it visible
    assert mz.ucb_scores(np.array([1.0]), np.array([0.0]), np.array([0.0]), 4, mz.MinMaxStats(), 1.0, 1.0)[0] == \
        pytest.approx(2 * (1.0 + math.log(6.0)))


def test_min_max_normalisation():
    stats = mz.MinMaxStats()
    np.testing.assert_allclose(stats.normalize(np.array([0.3, 7.0])), [0.3, 7.0])  # nothing seen: unchanged
    for q in (2.0, -1.0, 5.0):
        stats.update(q)
    np.testing.assert_allclose(stats.normalize(np.array([2.0, -1.0, 5.0])), [0.5, 0.0, 1.0])
    bounded = mz.MinMaxStats((-1.0, 1.0))
    np.testing.assert_allclose(bounded.normalize(np.array([0.0, 1.0])), [0.5, 1.0])
    bounded.update(3.0)
    np.testing.assert_allclose(bounded.normalize(np.array([1.0])), [0.5])


def test_value_transform_and_inverse():
    x = torch.tensor([0.0, 3.0, -8.0, 99.0], dtype=torch.float64)
    np.testing.assert_allclose(mz.value_transform(x).numpy(), [0.0, 1.003, -2.008, 9.099], atol=1e-12)
    xs = torch.cat([torch.linspace(-1000, 1000, 2001, dtype=torch.float64), torch.tensor([1e-4, -3e-3, 0.5])])
    np.testing.assert_allclose(mz.inverse_value_transform(mz.value_transform(xs)).numpy(), xs.numpy(), atol=1e-6)
    ys = torch.linspace(-20, 20, 401, dtype=torch.float64)
    np.testing.assert_allclose(mz.value_transform(mz.inverse_value_transform(ys)).numpy(), ys.numpy(), atol=1e-6)


def test_two_hot_support():
    probs = mz.scalar_to_support(torch.tensor([3.0, 0.0, -8.0], dtype=torch.float64), 5)
    expected = np.zeros((3, 11))
    expected[0, 6], expected[0, 7] = 0.997, 0.003  # phi(3) = 1.003 lies between 1 and 2
    expected[1, 5] = 1.0
    expected[2, 2], expected[2, 3] = 0.008, 0.992  # phi(-8) = -2.008 between -3 and -2
    np.testing.assert_allclose(probs.numpy(), expected, atol=1e-12)
    xs = torch.linspace(-30, 30, 121, dtype=torch.float64)  # phi(30) = 4.6, inside a support of 5
    back = mz.support_to_scalar(torch.log(mz.scalar_to_support(xs, 5)), 5)
    np.testing.assert_allclose(back.numpy(), xs.numpy(), atol=1e-6)
    clipped = mz.scalar_to_support(torch.tensor([1e6], dtype=torch.float64), 5)  # beyond the support: its end
    np.testing.assert_allclose(clipped.numpy()[0], np.eye(11)[10])


def test_two_hot_without_the_transform():
    """A board game's values and rewards (in [-1, 1]) on the support -1, 0, 1 as they are: a win's reward of 1 is
    one-hot on +1 (with phi it would be split 0.585 / 0.415 between 0 and +1, mostly on a non-win's target)."""
    probs = mz.scalar_to_support(torch.tensor([1.0, -1.0, 0.0, 0.25], dtype=torch.float64), 1, transform=False)
    np.testing.assert_allclose(probs.numpy(), [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0.75, 0.25]], atol=1e-12)
    np.testing.assert_allclose(mz.scalar_to_support(torch.tensor([1.0], dtype=torch.float64), 1).numpy(),
                               [[0, 2 - math.sqrt(2) - 0.001, math.sqrt(2) - 1 + 0.001]], atol=1e-12)
    xs = torch.linspace(-1, 1, 41, dtype=torch.float64)
    back = mz.support_to_scalar(torch.log(mz.scalar_to_support(xs, 1, transform=False)), 1, transform=False)
    np.testing.assert_allclose(back.numpy(), xs.numpy(), atol=1e-6)
    assert not mz.MuZeroNet(18, 9, 8, (16,), 1, True, 1.0, 10, 1.25, 19652.0).transform
    assert mz.MuZeroNet(4, 2, 8, (16,), 5, False, 0.997, 10, 1.25, 19652.0).transform


def test_n_step_value_targets_single_agent():
    rewards, roots = np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 30.0, 40.0])
    z = mz.n_step_value_targets(rewards, roots, final_value=8.0, discount=0.5, td_steps=2, two_player=False)
    # z0 = 1 + .5*2 + .25*nu_2; z1 = 2 + .5*3 + .25*nu_3; z2 = 3 + .5*4 + .25*final; z3 = 4 + .5*final
    np.testing.assert_allclose(z, [1 + 1 + 7.5, 2 + 1.5 + 10, 3 + 2 + 2, 4 + 4])
    z = mz.n_step_value_targets(rewards, roots, final_value=0.0, discount=1.0, td_steps=100, two_player=False)
    np.testing.assert_allclose(z, [10, 9, 7, 4])


def test_n_step_value_targets_two_player():
    # four moves, players A B A B; B's last move wins (+1 to the mover); targets to the end of the game
    z = mz.n_step_value_targets(np.array([0.0, 0.0, 0.0, 1.0]), np.zeros(4), 0.0, 1.0, 100, two_player=True)
    np.testing.assert_allclose(z, [-1, 1, -1, 1])
    # n = 1: z_t = u_t - nu_{t+1} (the next root value is the opponent's), the last z_t = u_t - final
    z = mz.n_step_value_targets(np.array([0.0, 0.5, 1.0]), np.array([0.1, 0.2, 0.3]), 0.7, 1.0, 1, two_player=True)
    np.testing.assert_allclose(z, [0 - 0.2, 0.5 - 0.3, 1.0 - 0.7])
    # n = 2 with a discount: z_0 = u_0 - g u_1 + g^2 nu_2
    z = mz.n_step_value_targets(np.array([1.0, 2.0, 0.0]), np.array([0.0, 0.0, 4.0]), 0.0, 0.5, 2, two_player=True)
    assert z[0] == pytest.approx(1 - 0.5 * 2 + 0.25 * 4)


def test_replay_unrolled_targets():
    game = mz.finish_game({"obs": [np.full(2, t, np.float32) for t in range(3)], "actions": [1, 0, 1],
                           "rewards": [np.float32(r) for r in (1.0, 2.0, 3.0)], "root_values": [np.float32(0)] * 3,
                           "policies": [np.array([0.25, 0.75], np.float32)] * 3}, 0.0, 1.0, 100, False)
    np.testing.assert_allclose(game["targets"], [6, 5, 3])
    replay = mz.GameReplay(10, seed=0)
    replay.add(game)
    batch, index = replay.sample(32, unroll=2, alpha=1.0, beta=1.0)
    for i, (_, t) in enumerate(index):
        assert batch["obs"][i, 0] == t
        z = [6, 5, 3, 0, 0]  # past the end: absorbing, value 0
        np.testing.assert_allclose(batch["target_values"][i].numpy(), z[t:t + 3])
        u = [1, 2, 3, 0, 0]  # target_rewards[k] is the reward of the k-th unrolled action (k >= 1)
        np.testing.assert_allclose(batch["target_rewards"][i, 1:].numpy(), u[t:t + 2])
        np.testing.assert_allclose(batch["policy_mask"][i].numpy(), [1.0 if t + k < 3 else 0.0 for k in range(3)])
        assert list(batch["actions"][i, :min(2, 3 - t)].numpy()) == [1, 0, 1][t:t + 2]
    # priorities |nu - z| = [6, 5, 3], alpha = beta = 1: w_i = (1 / (M P(i))) / max over the batch, P(i) ~ p_i
    ts = np.array([t for _, t in index])
    inverse = 1.0 / (np.array([6.0, 5.0, 3.0]) + 1e-6)[ts]
    np.testing.assert_allclose(batch["weights"].numpy(), inverse / inverse.max(), rtol=1e-6)
    assert len(set(ts)) == 3 and np.mean(ts == 0) > np.mean(ts == 2)  # drawn in proportion to the priorities


def test_hidden_state_scaling_and_gradient_scaling():
    s = mz.scale_hidden_state(torch.tensor([[2.0, 4.0, 3.0], [1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(s.numpy(), [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]])
    x = torch.tensor([3.0], requires_grad=True)
    y = mz.scale_gradient(x, 0.25)
    (2 * y).sum().backward()
    assert y.item() == 3.0 and x.grad.item() == 0.5


def test_search_with_the_network_is_batched_and_masked():
    net = mz.MuZeroNet(18, 9, 8, (16,), 3, True, 1.0, 10, 1.25, 19652.0)
    board = observation((1, -1, 1, 0, -1, 0, 0, 1, -1))
    obs = np.stack([board, observation((0,) * 9)])
    visits, values = net.search(obs, np.random.default_rng(0))
    assert visits.shape == (2, 9) and (visits.sum(axis=1) == 10).all()
    assert (visits[0][[0, 1, 2, 4, 7, 8]] == 0).all()  # occupied cells are never searched at the root


def test_tictactoe_eval_tool(tmp_path, capsys):
    """tools/tictactoe_eval.py on a briefly trained model: one row whose fractions add up to 1 per side; bad input."""
    out = run_main(mz, ["--env-id", "TicTacToe-v0", "--num-envs", "2", "--total-timesteps", "20", "--learning-starts",
                        "10", "--batch-size", "4", "--num-simulations", "4", "--hidden-sizes", "8", "--hidden-state-size",
                        "4", "--eval-episodes", "1", "--save-model"], tmp_path)
    model = str(tmp_path / out["model_path"])
    (row,) = tictactoe_eval.main([model, "--games", "3", "--minimax-games", "2"])
    for side in ("first", "second"):
        assert sum(row[side]) == pytest.approx(1.0) and all(x * 3 == round(x * 3) for x in row[side])
    assert all(0 <= x <= 1 for x in row["minimax"]) and row["minimax"][2] == pytest.approx(sum(row["minimax"][:2]) / 2)
    assert_one_line_exit_2(lambda: tictactoe_eval.main([str(tmp_path / "missing.pt")]), "no model file", capsys)
    assert_one_line_exit_2(lambda: tictactoe_eval.main([model, "--games", "0"]), "--games", capsys)


# ---- learning (slow) ----


@pytest.mark.slow
def test_learns_tictactoe(tmp_path):
    """Seed 1, 150k moves of self-play with muzero-general's tic-tac-toe settings where the file has them (the whole
    game unrolled, 3,000 games of replay, value loss 0.25, Dirichlet alpha 0.1, T = 1 for every move; values and
    rewards on -1, 0, 1 as for every two-player game); then its search (no noise, the most visited move) wins or
    draws >= 95% of 100 games against a uniformly random player as first and as second player, and draws >= 80% of
    50 games against a perfect minimax player (25 as each side), evaluated at the end of training."""
    out = run_main(mz, ["--env-id", "TicTacToe-v0", "--save-model", "--eval-episodes", "10", "--total-timesteps", "150000",
                        "--num-unroll-steps", "9", "--buffer-size", "3000", "--value-loss-coef", "0.25",
                        "--dirichlet-alpha", "0.1", "--temperature-moves", "9"], tmp_path)
    net, _ = mz.load_model(str(tmp_path / out["model_path"]))
    rng = np.random.default_rng(0)
    for first in (True, False):
        results = [play(mz, net, "random", first, rng) for _ in range(100)]
        assert np.mean([r >= 0 for r in results]) >= 0.95, (first, results)
    draws = [play(mz, net, "minimax", first, rng) for first in (True, False) for _ in range(25)]
    assert np.mean([r == 0 for r in draws]) >= 0.8, draws


@pytest.mark.slow
def test_learns_cartpole(tmp_path):
    """The defaults (30k steps), seed 1; the search plays the 10 evaluation episodes."""
    out = run_main(mz, ["--eval-episodes", "10", "--total-timesteps", "30000"], tmp_path)
    assert out["eval_return_mean"] >= 400, out["eval_returns"]
