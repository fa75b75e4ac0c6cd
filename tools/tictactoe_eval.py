"""Play a muzero.py tic-tac-toe model against a uniformly random player and a perfect (minimax) player.

    python tools/tictactoe_eval.py runs/TicTacToe-v0__muzero__1__1700000000/muzero.pt [more .pt files] \
        --games 100 --minimax-games 25 --seed 0

For each model (a --save-model file or a periodic checkpoint), its search plays with no noise and takes the most
visited move: `--games` games against the random player as first player and as many as second player, then
`--minimax-games` games as each side against a perfect player that picks uniformly among its best moves (solved
exactly here by minimax over the whole game, independent of muzero.py). One markdown row per model: the wins /
draws / losses against the random player as first and as second player, and the draws against the perfect player
as first / second (both sides together). tests/test_muzero.py's tic-tac-toe test plays through `play` below.
A missing or unreadable model, or one that is not a tic-tac-toe model, gets one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from functools import cache
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from algo_loader import load_algo  # noqa: E402

LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]


def won(board: tuple, player: int) -> bool:
    return any(all(board[i] == player for i in line) for line in LINES)


@cache
def minimax(board: tuple) -> int:
    """The game's value for the player to move (+1 marks), who plays on the cells that are 0; the opponent is -1."""
    empty = [i for i in range(9) if board[i] == 0]
    if not empty:
        return 0
    best = -2
    for a in empty:
        after = list(board)
        after[a] = 1
        if won(tuple(after), 1):
            return 1
        best = max(best, -minimax(tuple(-x for x in after)))  # the opponent's view: its marks become +1
    return best


def move_values(board: tuple) -> dict[int, int]:
    """The exact value of each legal move for the player to move."""
    values = {}
    for a in (i for i in range(9) if board[i] == 0):
        after = list(board)
        after[a] = 1
        values[a] = 1 if won(tuple(after), 1) else -minimax(tuple(-x for x in after))
    return values


def play(mz, net, opponent: str, agent_first: bool, rng: np.random.Generator) -> int:
    """One game of the trained agent (its search, no noise) against a "random" or a "minimax" player, in muzero.py's
    own TicTacToe environment (module mz): +1 / 0 / -1 for the agent."""
    env = mz.TicTacToe()
    obs, _ = env.reset()
    agent_turn = agent_first
    while True:
        if agent_turn:
            action = int(net.greedy_action(torch.as_tensor(obs[None]))[0])
        else:
            board = tuple(int(x) for x in env.board * env.to_play)
            if opponent == "random":
                action = int(rng.choice([i for i in range(9) if board[i] == 0]))
            else:
                values = move_values(board)
                best = max(values.values())
                action = int(rng.choice([a for a, v in values.items() if v == best]))
        obs, reward, terminated, _, _ = env.step(action)
        if terminated:
            return int(reward) * (1 if agent_turn else -1)
        agent_turn = not agent_turn


def evaluate(mz, net, games: int, minimax_games: int, seed: int) -> dict:
    """The fractions of one row; the random generator is seeded once per model."""
    rng = np.random.default_rng(seed)
    out = {}
    for first, side in ((True, "first"), (False, "second")):
        results = np.array([play(mz, net, "random", first, rng) for _ in range(games)])
        out[side] = tuple(float(np.mean(results == r)) for r in (1, 0, -1))
    draws = {side: np.mean([play(mz, net, "minimax", first, rng) == 0 for _ in range(minimax_games)])
             for first, side in ((True, "first"), (False, "second"))}
    out["minimax"] = (float(draws["first"]), float(draws["second"]), float((draws["first"] + draws["second"]) / 2))
    return out


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="muzero.py tic-tac-toe models (.pt)")
    parser.add_argument("--games", type=int, default=100, help="games against the random player as each side")
    parser.add_argument("--minimax-games", type=int, default=25, help="games against the perfect player as each side")
    parser.add_argument("--seed", type=int, default=0, help="seed of the opponents' random choices")
    parser.add_argument("--title", default=None, help="a heading printed above the table (a benchmark page's)")
    a = parser.parse_args(argv)
    if a.games <= 0 or a.minimax_games <= 0:
        fail("--games and --minimax-games must be positive")
    mz = load_algo("muzero")
    rows = []
    if a.title:
        print(f"# {a.title}\n")
    print("| model | vs random, first: win / draw / loss | vs random, second: win / draw / loss "
          "| vs minimax: draws as first / second (both) |")
    print("|---|---|---|---|")
    for path in a.models:
        if not Path(path).is_file():
            fail(f"no model file {path}")
        net, ckpt = mz.load_model(path)  # muzero.py's own check: an unreadable file is one line and exit 2
        if ckpt.get("env_id") != "TicTacToe-v0":
            fail(f"{path} is not a tic-tac-toe model")
        r = evaluate(mz, net, a.games, a.minimax_games, a.seed)
        rows.append({"model": path, **r})
        f, s, m = r["first"], r["second"], r["minimax"]
        print(f"| {path} | {f[0]:.2f} / {f[1]:.2f} / {f[2]:.2f} | {s[0]:.2f} / {s[1]:.2f} / {s[2]:.2f} "
              f"| {m[0]:.2f} / {m[1]:.2f} ({m[2]:.2f}) |", flush=True)
    print(f"\nGames: {a.games} against the random player as each side, {a.minimax_games} against the perfect player as "
          f"each side; opponents' seed {a.seed}. Command: `python tools/tictactoe_eval.py "
          f"{shlex.join(argv if argv is not None else sys.argv[1:])}`")
    return rows


if __name__ == "__main__":
    main()
