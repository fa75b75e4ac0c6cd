"""ppo_atari.py: the Nature CNN's shapes, the preprocessing (frame stack, max-pooling, greyscale), the raw
game score across lives, the episodic-life reset under the vector environment's same-step autoreset,
evaluation on whole games, bad input, and a learning check. compute_gae and ppo_loss are ppo.py's (the
drift test keeps them identical) and so is the rollout loop: tests/test_ppo.py checks them."""

from __future__ import annotations

import cv2
import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo

pa = load_algo("ppo_atari")


def record_base(env: gym.Env) -> list[dict]:
    """Log every emulator frame of `env` (action, raw reward, raw frame, lives, game over) by wrapping the
    step method of the innermost ALE environment, below every preprocessing wrapper."""
    base = env.unwrapped
    step = base.step
    log: list[dict] = []

    def recording_step(action):
        obs, reward, terminated, truncated, info = step(action)
        log.append({"action": int(action), "reward": float(reward), "frame": obs, "lives": base.ale.lives(),
                    "game_over": terminated or truncated})
        return obs, reward, terminated, truncated, info

    base.step = recording_step
    return log


# ------------------------------------------------------------------------------------------------ network


def test_nature_cnn_shapes_parameter_count_and_heads():
    torch.manual_seed(0)
    agent = pa.Agent(frame_stack=4, n_actions=6)
    x = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    conv_out = agent.network[:6](x.float() / 255)
    assert conv_out.shape == (5, 64, 7, 7)  # 84 -> 20 -> 9 -> 7
    hidden = agent.network(x / 255.0)
    assert hidden.shape == (5, 512)
    # conv 4->32 8x8, 32->64 4x4, 64->64 3x3, linear 3136->512, heads 512->6 and 512->1 (weights + biases)
    expected = (4 * 32 * 64 + 32) + (32 * 64 * 16 + 64) + (64 * 64 * 9 + 64) + (3136 * 512 + 512) + (512 * 6 + 6) + 513
    assert sum(p.numel() for p in agent.parameters()) == expected
    dist = torch.distributions.Categorical(logits=agent.actor(hidden))
    action = agent.sample_action(x)
    assert action.shape == (5,) and action.dtype == torch.long
    logp, ent, value = agent.evaluate_actions(x, action)
    torch.testing.assert_close(logp, dist.log_prob(action))
    torch.testing.assert_close(ent, dist.entropy())
    torch.testing.assert_close(value, agent.critic(hidden).squeeze(-1))
    # the pixels are scaled by 1/255 inside: uint8 input equals float input (evaluate passes float32 frames)
    torch.testing.assert_close(agent.get_value(x.float()), value)
    assert agent.greedy_action(x).tolist() == dist.probs.argmax(-1).tolist()
    # a near-uniform initial policy (last layer std 0.01)
    assert (dist.probs - 1 / 6).abs().max() < 0.02
    assert pa.Agent(4, 6, hidden_size=32).critic.in_features == 32


# ---------------------------------------------------------------------------------------- preprocessing


def test_preprocessing_gives_uint8_frame_stacks_of_max_pooled_grey_frames():
    env = pa.make_env("BreakoutNoFrameskip-v4", 0, False, "")()
    log = record_base(env)
    assert env.observation_space.shape == (4, 84, 84) and env.observation_space.dtype == np.uint8
    obs, _ = env.reset(seed=3)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert all((obs[k] == obs[3]).all() for k in range(3))  # a fresh stack repeats the first frame
    assert log[-8:] and [e["action"] for e in log[-8:]] == [1] * 4 + [2] * 4  # FireReset: FIRE, then RIGHT, 4 frames each
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(40):
        before = len(log)
        new_obs, reward, terminated, truncated, _ = env.step(int(rng.integers(4)))
        frames = [e["frame"] for e in log[before:]]
        assert len(frames) == 4 and [e["action"] for e in log[before:]] == [log[before]["action"]] * 4  # skip 4
        pooled = np.maximum(frames[-2], frames[-1])  # max over the last two of the four frames
        grey = cv2.resize(cv2.cvtColor(pooled, cv2.COLOR_RGB2GRAY), (84, 84), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(new_obs[3], grey)  # newest frame last
        np.testing.assert_array_equal(new_obs[:3], obs[1:])  # the stack shifts by one
        changed += int((new_obs[3] != obs[3]).any())
        assert reward in (-1.0, 0.0, 1.0)
        if terminated or truncated:
            break
        obs = new_obs
    assert changed > 10  # the screen moves: the comparison above is not between blank frames
    env.close()


def test_raw_game_score_is_logged_once_per_game_across_lives():
    """Asterix (3 lives, 50 points per item, no FIRE) with random actions: the learner sees a terminal
    step at every lost life and clipped rewards; info["episode"] appears once, at game over, with the sum
    of the unclipped rewards of the whole game."""
    env = pa.make_env("AsterixNoFrameskip-v4", 0, False, "")()
    log = record_base(env)
    env.action_space.seed(1)
    env.reset(seed=1)
    start_lives = env.unwrapped.ale.lives()
    log.clear()  # the no-op start is not part of the game's score
    clipped, agent_steps, life_losses = [], 0, 0
    while True:
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        agent_steps += 1
        clipped.append(reward)
        if terminated or truncated:
            if "episode" in info:
                break
            life_losses += 1
            assert not log[-1]["game_over"] and log[-1]["lives"] == start_lives - life_losses
            env.reset()  # a lost life: the same game goes on
    assert log[-1]["game_over"] and life_losses == start_lives - 1 >= 2
    raw = sum(e["reward"] for e in log)
    assert float(info["episode"]["r"]) == raw
    assert set(clipped) <= {-1.0, 0.0, 1.0}
    assert raw > sum(clipped) > 0  # this game scores more than 1 per reward: clipping before the record would show
    # length in agent steps: the test's steps, plus the one no-op step each reset after a lost life takes
    assert int(info["episode"]["l"]) == agent_steps + life_losses == len(log) // 4
    env.close()


def test_vector_autoreset_continues_the_game_after_a_lost_life():
    """Breakout (5 lives, needs FIRE) in two environments with same-step autoreset, as in main(): a lost
    life is terminated=True with no "episode" info, and the autoreset neither restarts the game (lives go
    down by one, the game's frame counter keeps running) nor forgets FIRE; at game over "episode" holds
    the raw score of the whole game and the next game starts with full lives."""
    envs = gym.vector.SyncVectorEnv([pa.make_env("BreakoutNoFrameskip-v4", i, False, "") for i in range(2)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    logs = [record_base(e) for e in envs.envs]
    envs.reset(seed=7)
    envs.action_space.seed(7)
    game_start = [len(log) for log in logs]
    games_done = [0, 0]
    life_losses = [0, 0]
    for _ in range(3000):
        if min(games_done) >= 1:
            break
        frames_before = [e.unwrapped.ale.getEpisodeFrameNumber() for e in envs.envs]
        lives_before = [e.unwrapped.ale.lives() for e in envs.envs]
        _, _, terminated, truncated, infos = envs.step(envs.action_space.sample())
        assert not truncated.any()
        for i in np.flatnonzero(terminated):
            env, log = envs.envs[i], logs[i]
            final_info = infos["final_info"]
            game_over = "episode" in final_info and final_info["_episode"][i]
            if not game_over:  # a lost life
                life_losses[i] += 1
                assert env.unwrapped.ale.lives() == lives_before[i] - 1
                assert env.unwrapped.ale.getEpisodeFrameNumber() > frames_before[i]  # not restarted
                # the reset after it: a no-op step, then FireReset's FIRE and RIGHT steps, 4 frames each
                assert [e["action"] for e in log[-12:]] == [0] * 4 + [1] * 4 + [2] * 4
            else:
                games_done[i] += 1
                game = log[game_start[i] :]
                over = max(k for k, e in enumerate(game) if e["game_over"])
                raw = sum(e["reward"] for e in game[: over + 1])
                assert float(final_info["episode"]["r"][i]) == raw
                assert life_losses[i] == 4  # 5 lives: four lost lives, then the game over
                assert env.unwrapped.ale.lives() == 5 and env.unwrapped.ale.getEpisodeFrameNumber() < 200
                life_losses[i] = 0
                game_start[i] = len(log)
    assert min(games_done) >= 1
    envs.close()


@pytest.mark.timeout(180)  # a stalled game runs to the 108,000-frame cap: minutes, so fail at the timeout instead
def test_evaluate_scores_whole_games_even_for_a_policy_that_never_fires(monkeypatch):
    """A policy that always plays NOOP in Breakout: without FIRE after each lost life the game would
    wait until the 108,000-frame cap. evaluate() must return one raw score per game, not per life."""

    class Noop:
        def greedy_action(self, x):
            return torch.zeros(x.shape[0], dtype=torch.long)

    logs = []
    original = pa.make_env

    def recording_make_env(*args):
        thunk = original(*args)

        def make():
            env = thunk()
            logs.append(record_base(env))
            return env

        return make

    monkeypatch.setattr(pa, "make_env", recording_make_env)
    returns = pa.evaluate(Noop(), "BreakoutNoFrameskip-v4", eval_episodes=2, seed=0)
    log = logs[0]
    ends = [k for k, e in enumerate(log) if e["game_over"]]
    assert len(returns) == 2 and len(ends) == 2  # two real game overs, no more, no fewer
    assert len(log) < 20_000  # far from the cap: lives were restarted with FIRE
    assert all(log[k]["lives"] == 0 for k in ends)
    assert returns[0] == sum(e["reward"] for e in log[: ends[0] + 1])


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides,expected", [
    (dict(env_id="Pendulum-v1"), "Pendulum-v1 is not one"),  # Box actions
    (dict(env_id="ALE/NoSuchGame-v5"), "not a registered"),
    (dict(num_minibatches=3), "num-minibatches"),  # 8 x 128 = 1024 is not divisible by 3
    (dict(gae_lambda=1.5), "gae-lambda"),
    (dict(num_envs=0), "num-envs"),
])
def test_check_args_rejects_with_one_line(overrides, expected, capfd):
    """In-process and cheap. The command-line cases (exit status, nothing written, no stray emulator banner on
    stderr: it is printed once per process) are the harness's, for CartPole-v1 and unknown ids."""
    assert_one_line_exit_2(lambda: pa.check_args(pa.Args(**overrides)), expected, capfd)


def test_check_args_looks_inside_an_id_registered_with_a_function(capfd):
    """An id whose entry point is a function (a wrapper around a game, as tests/toy_envs.py's NaN injector) is
    made once: an ale-py game inside passes, anything else is refused as before."""
    for env_id, base in (("WrappedBreakoutTest-v0", "BreakoutNoFrameskip-v4"), ("WrappedCartPoleTest-v0", "CartPole-v1")):
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=lambda base=base, **kwargs: gym.wrappers.ClipReward(gym.make(base, **kwargs), -1, 1))
    pa.check_args(pa.Args(env_id="WrappedBreakoutTest-v0"))
    assert_one_line_exit_2(lambda: pa.check_args(pa.Args(env_id="WrappedCartPoleTest-v0")), "is not one", capfd)


# ----------------------------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_learns_breakout(tmp_path, monkeypatch):
    """Seed 1, 100k agent steps (400k frames) with the default settings, on Breakout: the deterministic
    evaluation is above random play."""
    monkeypatch.chdir(tmp_path)
    out = pa.main(pa.Args(seed=1, total_timesteps=100_000, eval_episodes=5))
    assert out["eval_return_mean"] >= 5, out["eval_returns"]
