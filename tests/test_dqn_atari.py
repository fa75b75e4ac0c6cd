"""dqn_atari.py: the compact frame replay memory against the stacks the environment really produced (a fake
environment of numbered frames and a real Atari game, with episode and life ends, 1-step episodes and
ring wrap-around), the TD target with terminated vs truncated ends by hand, the Nature CNN, an overfitting
check of the update (as main() writes it) on a fixed batch, the memory's state_dict round trip (--save-buffer)
and bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo

da = load_algo("dqn_atari")


class NumberedFrames(gym.Env):
    """84x84 uint8 frames that carry their own serial number (pixels [0, 0] and [0, 1], base 256), counted
    over every observation the environment emits (reset and step), offset by `first_id`. Episodes last
    `lengths[k]` steps (cycling) and end as `ends[k]`: "terminated" or "truncated"; reward = the step's
    number in its episode."""

    def __init__(self, lengths, ends, first_id=0):
        self.observation_space = gym.spaces.Box(0, 255, (84, 84), np.uint8)
        self.action_space = gym.spaces.Discrete(3)
        self.lengths, self.ends, self.next_id, self.episode = lengths, ends, first_id, -1

    def frame(self):
        f = np.full((84, 84), self.next_id % 251, dtype=np.uint8)
        f[0, 0], f[0, 1] = self.next_id % 256, self.next_id // 256
        self.next_id += 1
        return f

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return self.frame(), {}

    def step(self, action):
        self.t += 1
        k = self.episode % len(self.lengths)
        end = self.t == self.lengths[k]
        return self.frame(), float(self.t), end and self.ends[k] == "terminated", end and self.ends[k] == "truncated", {}


def frame_id(stack: np.ndarray) -> int:
    return int(stack[-1, 0, 0]) + 256 * int(stack[-1, 0, 1])


def numbered_envs(schedules):
    """A vector environment as main() builds it (same-step autoreset, FrameStackObservation with the
    file's stack size and default padding) over NumberedFrames; schedules = [(lengths, ends), ...]."""
    return gym.vector.SyncVectorEnv(
        [lambda s=s, i=i: gym.wrappers.FrameStackObservation(NumberedFrames(*s, first_id=10_000 * i), da.FRAME_STACK)
         for i, s in enumerate(schedules)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def fill_and_check(envs, rb, steps: int, seed: int, check_every: int = 1) -> dict:
    """Drive `envs` with random actions and feed `rb` exactly as main() does. Every `check_every` steps, every
    transition that rb may sample must rebuild to the stacks the environment returned for it (its observation,
    its real next observation: info["final_obs"] at an episode end) with its action, reward and terminated
    flag; rb.sample() batches must consist of recorded transitions. Returns counts of what was covered."""
    truth: dict[tuple[int, int], tuple] = {}  # (row, env) -> (obs, real next obs, action, reward, terminated, age)
    recorded: dict[bytes, set] = {}  # (obs, next obs) -> every (action, reward, terminated) seen with them
    covered = {"after_reset": set(), "terminated": 0, "truncated": 0, "checked": 0, "stale_stack_differs": 0}
    envs.action_space.seed(seed)
    obs, _ = envs.reset(seed=seed)
    age = np.zeros(envs.num_envs, dtype=int)  # steps since the episode's start
    for step in range(steps):
        actions = envs.action_space.sample()
        next_obs, rewards, term, trunc, infos = envs.step(actions)
        real_next_obs = np.array([infos["final_obs"][i] if term[i] or trunc[i] else next_obs[i]
                                  for i in range(envs.num_envs)])
        rb.add(obs, actions, rewards, real_next_obs, term, trunc)
        rows = (rb.pos - 2) % rb.rows  # where rb keeps the transition: the row before its next observation's
        for i in range(envs.num_envs):
            real_next = real_next_obs[i]
            item = (obs[i], real_next, int(actions[i]), float(rewards[i]), bool(term[i]), int(age[i]), bool(trunc[i]))
            truth[(int(rows[i]), i)] = item
            recorded.setdefault(obs[i].tobytes() + real_next.tobytes(), set()).add(item[2:5])
        age = np.where(term | trunc, 0, age + 1)
        obs = next_obs
        if step % check_every and step != steps - 1:
            continue
        all_rows, all_envs = np.meshgrid(np.arange(rb.rows), np.arange(envs.num_envs), indexing="ij")
        all_rows, all_envs = all_rows.ravel(), all_envs.ravel()
        ok = rb.sampleable(all_rows, all_envs)
        for r, e in zip(all_rows[ok], all_envs[ok], strict=True):
            o, nxt, a, rew, done, k, cut = truth[(int(r), int(e))]
            np.testing.assert_array_equal(rb.stacks(np.array([r]), np.array([e]))[0], o)
            np.testing.assert_array_equal(rb.stacks(np.array([(r + 1) % rb.rows]), np.array([e]))[0], nxt)
            assert (rb.actions[r, e], rb.rewards[r, e], rb.terminated[r, e]) == (a, rew, done)
            covered["checked"] += 1
            covered["after_reset"].add(min(k, 3))
            covered["terminated"] += done
            covered["truncated"] += cut
        # the rows the rule excludes, the ring's oldest, really cannot be rebuilt: their history is overwritten
        for r, e in zip(all_rows[~ok & rb.valid[all_rows, all_envs]], all_envs[~ok & rb.valid[all_rows, all_envs]],
                        strict=True):
            if (int(r), int(e)) in truth and truth[(int(r), int(e))][5] >= 1:
                covered["stale_stack_differs"] += not np.array_equal(
                    rb.stacks(np.array([r]), np.array([e]))[0], truth[(int(r), int(e))][0])
        b_obs, b_act, b_rew, b_next, b_term = rb.sample(16)
        for j in range(16):
            seen = recorded[b_obs[j].numpy().tobytes() + b_next[j].numpy().tobytes()]  # a static screen repeats
            assert (int(b_act[j]), float(b_rew[j]), bool(b_term[j])) in seen
    covered["wrapped"] = bool((rb.filled == rb.rows).all())
    return covered


def test_frame_buffer_rebuilds_the_stacks_the_environment_produced():
    """Two environments of numbered frames: episodes of 1 to 7 steps (shorter than the stack, too), ending
    terminated or truncated; 14 rows per environment, so the ring wraps about 30 times in 400 steps."""
    envs = numbered_envs([([3, 1, 7, 2, 5], ["truncated", "terminated", "terminated", "truncated", "terminated"]),
                          ([4, 6, 1, 2], ["terminated", "truncated", "truncated", "terminated"])])
    rb = da.FrameReplayBuffer(capacity=28, num_envs=2, seed=0)
    assert rb.rows == 14
    covered = fill_and_check(envs, rb, steps=400, seed=0)
    assert covered["wrapped"] and covered["checked"] > 400 * 5
    assert covered["after_reset"] == {0, 1, 2, 3}  # stacks padded with the first frame, 0 to 3 times
    assert covered["terminated"] > 100 and covered["truncated"] > 100
    assert covered["stale_stack_differs"] > 0  # excluding the ring's oldest rows is necessary, not decorative
    # one stored frame per step, plus one per episode end (its last frame): far from 2 x 4 frames
    assert rb.frames.nbytes == 28 * 84 * 84


def test_frame_buffer_on_breakout_with_lost_lives():
    """The real preprocessing: a lost life resets the frame stack (episodic life), a game over restarts the
    game; 300 random steps of two Breakout environments, 64 rows each."""
    envs = gym.vector.SyncVectorEnv([da.make_env("BreakoutNoFrameskip-v4", i, False, "") for i in range(2)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    rb = da.FrameReplayBuffer(capacity=128, num_envs=2, seed=1)
    covered = fill_and_check(envs, rb, steps=300, seed=1, check_every=25)
    envs.close()
    assert covered["wrapped"] and covered["terminated"] >= 4  # several lives lost in the checked windows
    assert covered["after_reset"] == {0, 1, 2, 3}


def test_frame_buffer_state_dict_round_trip(tmp_path):
    """--save-buffer: the memory goes through torch.save / torch.load(weights_only=True) whole (frames, flags,
    each column's position), samples the same afterwards, and, as the environments start new games on resume,
    its next row starts an episode; the stacks it rebuilds then are the environment's."""
    envs = numbered_envs([([3, 5], ["terminated", "truncated"]), ([4], ["terminated"])])
    rb = da.FrameReplayBuffer(capacity=40, num_envs=2, seed=0)
    envs.action_space.seed(0)
    obs, _ = envs.reset(seed=0)
    for _ in range(30):  # the ring wraps
        actions = envs.action_space.sample()
        next_obs, rewards, term, trunc, infos = envs.step(actions)
        real_next = np.array([infos["final_obs"][i] if term[i] or trunc[i] else next_obs[i] for i in range(2)])
        rb.add(obs, actions, rewards, real_next, term, trunc)
        obs = next_obs
    torch.save(rb.state_dict(), tmp_path / "buffer.pt")
    state = torch.load(tmp_path / "buffer.pt", weights_only=True)
    copy = da.FrameReplayBuffer(capacity=40, num_envs=2, seed=1)
    copy.load_state_dict(state)
    for k in ("frames", "actions", "rewards", "terminated", "first", "valid", "pos", "filled"):
        np.testing.assert_array_equal(getattr(copy, k), getattr(rb, k), err_msg=k)
    copy.rng.bit_generator.state = rb.rng.bit_generator.state
    for a, b in zip(rb.sample(16), copy.sample(16), strict=True):
        torch.testing.assert_close(a, b)
    assert copy.episode_start.all()
    # a resumed run: new episodes (frames numbered from 50,000), whose first transition stacks its reset frame
    envs = numbered_envs([([3], ["terminated"]), ([3], ["terminated"])])
    for e in envs.envs:
        e.unwrapped.next_id = 50_000
    obs, _ = envs.reset(seed=1)
    next_obs, rewards, term, trunc, _ = envs.step(np.array([1, 2]))
    copy.add(obs, np.array([1, 2]), rewards, next_obs, term, trunc)
    rows, cols = (copy.pos - 2) % copy.rows, np.arange(2)
    assert copy.first[rows, cols].all() and copy.sampleable(rows, cols).all()
    np.testing.assert_array_equal(copy.stacks(rows, cols), obs)
    np.testing.assert_array_equal(copy.stacks((rows + 1) % copy.rows, cols), next_obs)


def test_td_target_by_hand_terminated_vs_truncated():
    gamma = 0.5
    next_q = torch.tensor([[2.0, 5.0], [2.0, 5.0], [-1.0, -3.0]])
    y = da.dqn_target(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]), next_q, None, gamma)
    # terminated: r alone; truncated (stored as terminated=0): r + 0.5 * max(2, 5); 0 + 0.5 * max(-1, -3)
    torch.testing.assert_close(y, torch.tensor([1.0, 3.5, -0.5]))


def test_td_targets_from_the_buffer_by_hand():
    """Episodes of 2 steps, the first truncated, the second terminated. Frames are numbered in order
    0 (reset), 1, 2 (final, truncated), 3 (reset), 4, 5 (final, terminated); reward = step number. With
    Q_target(s) = (id of s's newest frame, 0) and gamma 0.5, the four targets are
        0 -> 1: 1 + 0.5 * 1 = 1.5     1 -> 2 (truncated): 2 + 0.5 * 2 = 3     (bootstraps from the final frame)
        3 -> 4: 1 + 0.5 * 4 = 3       4 -> 5 (terminated): 2                   (no bootstrap)."""
    envs = numbered_envs([([2, 2], ["truncated", "terminated"])])
    rb = da.FrameReplayBuffer(capacity=64, num_envs=1, seed=0)
    obs, _ = envs.reset(seed=0)
    for _ in range(4):
        next_obs, r, term, trunc, infos = envs.step(np.array([0]))
        rb.add(obs, np.array([0]), r, infos["final_obs"] if term[0] or trunc[0] else next_obs, term, trunc)
        obs = next_obs
    rows = np.flatnonzero(rb.valid[:, 0])
    envs_idx = np.zeros_like(rows)
    ids = [frame_id(s) for s in rb.stacks(rows, envs_idx)]
    next_ids = [frame_id(s) for s in rb.stacks(rows + 1, envs_idx)]
    assert (ids, next_ids) == ([0, 1, 3, 4], [1, 2, 4, 5])
    next_q = torch.tensor([[float(i), 0.0] for i in next_ids])
    y = da.dqn_target(torch.from_numpy(rb.rewards[rows, 0]), torch.from_numpy(rb.terminated[rows, 0].astype(np.float32)),
                      next_q, None, gamma=0.5)
    torch.testing.assert_close(y, torch.tensor([1.5, 3.0, 3.0, 2.0]))


def test_nature_cnn_shapes_and_pixel_scaling():
    torch.manual_seed(0)
    q = da.QNetwork(n_actions=6)
    x = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    assert q.network[:6](x.float() / 255).shape == (3, 64, 7, 7)  # 84 -> 20 -> 9 -> 7
    assert q(x).shape == (3, 6)
    assert q.greedy_action(x).tolist() == q(x).argmax(1).tolist()
    torch.testing.assert_close(q(x), q.network(x.float() / 255.0))
    n_params = sum(p.numel() for p in q.parameters())
    assert n_params == (4 * 32 * 64 + 32) + (32 * 64 * 16 + 64) + (64 * 64 * 9 + 64) + (3136 * 512 + 512) + (512 * 6 + 6)


def test_update_fits_a_fixed_batch():
    """Overfitting check (a learning regression on Atari does not fit in CI): with the target network frozen
    the targets of a fixed batch are fixed, so repeated gradient steps, written as main() writes them (fused
    Adam, foreach clipping), are a regression the Nature CNN must fit: the Huber loss falls to a tenth."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as main() does: a CNN step on a shared 2-core machine is far slower with more
    torch.manual_seed(0)
    q, target = da.QNetwork(4), da.QNetwork(4)
    obs, actions, rewards, next_obs, terminations = (
        torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8), torch.randint(0, 4, (8,)),
        torch.randint(-1, 2, (8,)).float(), torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8),
        torch.tensor([0.0, 1.0] * 4))
    optimizer = torch.optim.Adam(q.parameters(), lr=5e-4, fused=True)
    with torch.no_grad():
        y = da.dqn_target(rewards, terminations, target(next_obs), q(next_obs), 0.99)  # double-Q form
    losses = []
    for _ in range(20):
        q_taken = q(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
        loss = torch.nn.functional.smooth_l1_loss(q_taken, y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(q.parameters(), float("inf"), foreach=True)  # the default: no clipping
        optimizer.step()
        losses.append(loss.item())
    torch.set_num_threads(threads)
    assert losses[-1] < 0.1 * losses[0], losses


@pytest.mark.parametrize("overrides,expected", [
    (dict(env_id="Pendulum-v1"), "Pendulum-v1 is not one"),  # Box actions
    (dict(env_id="ALE/NoSuchGame-v5"), "not a registered"),
    (dict(buffer_size=15, num_envs=2), "buffer-size"),
    (dict(learning_starts=-1), "learning-starts"),
    (dict(end_e=1.5), "end-e"),
    (dict(batch_size=0), "batch-size"),
    (dict(eval_epsilon=2.0), "eval-epsilon"),
    (dict(max_grad_norm=float("nan")), "max-grad-norm"),
    (dict(learning_rate=float("inf")), "learning-rate"),
    (dict(keep_checkpoints=0), "keep-checkpoints"),
    (dict(resume="no/such/checkpoint.pt"), "no checkpoint"),
])
def test_check_args_rejects_with_one_line(overrides, expected, capfd):
    assert_one_line_exit_2(lambda: da.check_args(da.Args(**overrides)), expected, capfd)
