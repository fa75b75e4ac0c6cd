"""mappo.py: who sees what (the actors their own observation, the centralised critic the global state, IPPO's critic
the agent's own observation), the one-hot agent ids, the value normalisation, GAE and the value targets cut at
truncation as ppo.py's compute_gae on the same arrays, the batched environment loop against one copy stepped by
hand, the team-return evaluation, and a learning regression on simple_spread_v3 (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_greedy_team_returns, load_algo, run_main, spread

mappo = load_algo("mappo")
ppo = load_algo("ppo")


def test_actors_see_their_own_observation_and_the_critic_the_state():
    torch.manual_seed(0)
    agent = mappo.Agent(obs_dim=18, state_dim=54, n_agents=3, n_actions=5)
    obs, state = torch.randn(4, 3, 18), torch.randn(4, 54)
    logits, values = agent.logits(obs), agent.value(obs, state)
    other = obs.clone()
    other[:, 1] += 1.0  # agent 1's observation changes
    changed = agent.logits(other)
    torch.testing.assert_close(changed[:, [0, 2]], logits[:, [0, 2]], rtol=0, atol=0)  # the others' logits do not
    assert (changed[:, 1] - logits[:, 1]).abs().max() > 1e-4
    torch.testing.assert_close(agent.value(other, state), values, rtol=0, atol=0)  # the critic reads the state only
    moved = agent.value(obs, state + 1.0)
    assert ((moved - values).abs() > 1e-5).all()  # every agent's value follows the state

    ippo = mappo.Agent(obs_dim=18, state_dim=54, n_agents=3, n_actions=5, independent_critic=True)
    values = ippo.value(obs, state)
    torch.testing.assert_close(ippo.value(obs, state + 1.0), values, rtol=0, atol=0)  # IPPO: no state
    changed = ippo.value(other, state)
    torch.testing.assert_close(changed[:, [0, 2]], values[:, [0, 2]], rtol=0, atol=0)
    assert ((changed[:, 1] - values[:, 1]).abs() > 1e-5).all()


def test_agent_ids_are_one_hot_and_tell_agents_apart():
    x = torch.arange(24.0).view(2, 3, 4)
    y = mappo.with_agent_ids(x)
    assert y.shape == (2, 3, 7)
    torch.testing.assert_close(y[..., :4], x)
    torch.testing.assert_close(y[..., 4:], torch.eye(3).expand(2, 3, 3))
    torch.manual_seed(0)
    agent = mappo.Agent(obs_dim=4, state_dim=6, n_agents=3, n_actions=5)
    same = torch.randn(1, 4).expand(3, 4)  # three agents with one observation act differently: the ids
    logits = agent.logits(same)
    assert (logits[0] - logits[1]).abs().max() > 1e-5 and (logits[1] - logits[2]).abs().max() > 1e-5


def test_value_norm_is_the_running_mean_and_variance_of_every_target():
    norm = mappo.ValueNorm()
    x = torch.tensor([3.0, -2.0])
    torch.testing.assert_close(norm.normalize(x), x)  # the identity until updated (--no-value-norm)
    rng = np.random.default_rng(0)
    batches = [rng.normal(5.0, 3.0, size=n) for n in (7, 1, 30)]
    for b in batches:
        norm.update(torch.tensor(b, dtype=torch.float32))
    seen = np.concatenate(batches).astype(np.float32)
    assert norm.mean.item() == pytest.approx(seen.mean(), rel=1e-6)
    assert norm.var.item() == pytest.approx(seen.var(), rel=1e-5)
    y = torch.tensor(seen)
    torch.testing.assert_close(norm.normalize(y), (y - seen.mean()) / seen.std(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.denormalize(norm.normalize(y)), y)


def test_batched_loop_matches_one_copy_stepped_by_hand():
    """Two copies (seeds 5 and 6), episodes of 5 steps, 12 steps: copy 1 gives the observations, states and rewards
    of one environment reset with seed 6 and stepped by hand with the same actions, through two automatic resets (the
    last observation in final_obs, the returns summed per agent)."""
    envs = mappo.BatchedParallelEnv([lambda: spread(5), lambda: spread(5)])
    obs, state = envs.reset(seed=5)
    hand = spread(5)
    h_obs, _ = hand.reset(seed=6)
    agents = hand.possible_agents
    np.testing.assert_array_equal(obs[1], np.stack([h_obs[a] for a in agents]))
    np.testing.assert_array_equal(state[1], hand.state())
    rng = np.random.default_rng(0)
    ep_return, ends = np.zeros(3), 0
    for t in range(12):
        actions = rng.integers(0, 5, size=(2, 3))
        obs, state, rewards, terminated, truncated, info = envs.step(actions)
        h_obs, h_rew, h_term, h_trunc, _ = hand.step({a: int(actions[1, j]) for j, a in enumerate(agents)})
        np.testing.assert_array_equal(rewards[1], np.array([h_rew[a] for a in agents], dtype=np.float32))
        assert not terminated.any() and truncated[1].tolist() == [h_trunc[a] for a in agents]
        ep_return += [h_rew[a] for a in agents]
        if not hand.agents:  # the episode ended: the batched copy was reset, its last observation kept aside
            ends += 1
            assert info["_final"].tolist() == [True, True] and t % 5 == 4
            np.testing.assert_array_equal(info["final_obs"][1], np.stack([h_obs[a] for a in agents]))
            np.testing.assert_array_equal(info["final_state"][1], hand.state())
            np.testing.assert_allclose(info["episode"]["r"][1], ep_return, rtol=1e-6)
            assert info["episode"]["l"][1] == 5
            h_obs, _ = hand.reset()
            ep_return[:] = 0
        else:
            assert not info["_final"].any()
        np.testing.assert_array_equal(obs[1], np.stack([h_obs[a] for a in agents]))
        np.testing.assert_array_equal(state[1], hand.state())
    assert ends == 2 and envs.alive.all()
    envs.close()


def test_rollout_gae_cuts_at_truncation_and_bootstraps_from_the_last_state(tmp_path, monkeypatch):
    """One rollout of 30 steps x 2 copies on simple_spread (25-step episodes): GAE gets each (copy, agent) pair as a
    column, every column truncated (never terminated) at step 24, and V of the last observation and state there (the
    values of info["final_obs"] / ["final_state"], not of the reset ones); its advantages and value targets are
    ppo.py's compute_gae on the same arrays."""
    monkeypatch.chdir(tmp_path)
    gae_calls, value_calls, finals = [], [], []
    real_gae, real_value, real_step = mappo.compute_gae, mappo.Agent.value, mappo.BatchedParallelEnv.step

    def recording_gae(*args):
        out = real_gae(*args)
        gae_calls.append((args, out))
        return out

    def recording_value(self, obs, state):
        out = real_value(self, obs, state)
        value_calls.append((obs.clone(), state.clone(), out.clone()))
        return out

    def recording_step(self, actions):
        out = real_step(self, actions)
        if out[-1]["_final"].any():
            finals.append((out[-1]["final_obs"].copy(), out[-1]["final_state"].copy(), out[0].copy()))
        return out

    monkeypatch.setattr(mappo, "compute_gae", recording_gae)
    monkeypatch.setattr(mappo.Agent, "value", recording_value)
    monkeypatch.setattr(mappo.BatchedParallelEnv, "step", recording_step)
    out = mappo.main(mappo.Args(total_timesteps=60, num_envs=2, num_steps=30, update_epochs=1, eval_episodes=1))
    assert out["global_step"] == 60 and len(gae_calls) == 1 and len(finals) == 2  # the rollout's, the evaluation's
    (rewards, values, next_values, terminations, truncations, gamma, lam), (adv, ret) = gae_calls[0]
    assert rewards.shape == (30, 6) and not terminations.any()
    assert truncations.sum(0).tolist() == [1.0] * 6 and truncations[24].tolist() == [1.0] * 6
    succ_obs, succ_states, v_next = value_calls[0]  # V(c'_t) of the rollout, before the update
    final_obs, final_state, reset_obs = finals[0]
    torch.testing.assert_close(succ_obs[24], torch.as_tensor(final_obs))
    torch.testing.assert_close(succ_states[24], torch.as_tensor(final_state))
    assert not torch.equal(succ_obs[24], torch.as_tensor(reset_obs))
    torch.testing.assert_close(next_values, v_next.reshape(30, 6))
    ref_adv, ref_ret = ppo.compute_gae(rewards, values, next_values, terminations, truncations, gamma, lam)
    torch.testing.assert_close(adv, ref_adv, rtol=0, atol=0)
    torch.testing.assert_close(ret, ref_ret, rtol=0, atol=0)
    # by hand at the cut: A_24 = r_24 + gamma * V(last state) - V(s_24), nothing from the next episode
    torch.testing.assert_close(adv[24], rewards[24] + gamma * next_values[24] - values[24])


def test_evaluate_returns_the_team_return_of_greedy_play(tmp_path):
    """evaluate() plays each agent's argmax action and returns per episode the sum over agents of their summed
    rewards; from a checkpoint (which brings its env_kwargs) it gives what the live network gives."""
    out = run_main(mappo, ["--total-timesteps", "60", "--num-envs", "2", "--num-steps", "10", "--update-epochs", "1",
                           "--eval-episodes", "2", "--env-kwargs", "max_cycles=10", "--save-model"], tmp_path)
    assert mappo.load_model(str(tmp_path / out["model_path"]))[1]["algo"] == "mappo"
    assert_greedy_team_returns(mappo, str(tmp_path / out["model_path"]), out["eval_returns"], max_cycles=10)


THRESHOLD = -65.0  # team return (sum over the 3 agents of their 25-step returns)


@pytest.mark.slow
@pytest.mark.parametrize("independent_critic", [False, True])
def test_learns_simple_spread(independent_critic: bool, tmp_path):
    """Seed 1, 300k environment steps, defaults: the deterministic team return over 100 episodes is well above a
    uniformly random policy's. Measured (benchmark_results/mappo.md, the same run): -56.4 (MAPPO) and -55.6 (IPPO);
    random -82.0 (mean of 3 x 100 episodes). The threshold sits 17 above random and 9 below both runs."""
    flags = ["--independent-critic"] if independent_critic else []
    out = run_main(mappo, ["--total-timesteps", "300000", "--eval-episodes", "100", "--log-every", "50000", *flags],
                   tmp_path)
    assert out["eval_return_mean"] > THRESHOLD, out["eval_return_mean"]

