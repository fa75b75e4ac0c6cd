"""tools/make_dataset.py: tiny datasets in the test process's temporary MINARI_DATASETS_PATH (conftest): the same
seed gives the same data, a checkpoint policy's actions are its greedy actions, policies share the steps in order,
--merge concatenates, D4RL's reference returns are recorded for the MuJoCo tasks and the normalised score reads on
their scale, and bad input is one line with exit status 2 and nothing written.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_one_line_exit_2, load_algo, run_main

spec = importlib.util.spec_from_file_location("tools_make_dataset", ROOT / "tools" / "make_dataset.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def make_dataset(argv: list[str]) -> dict:
    return tool.main(argv)


def episodes(dataset_id: str) -> list:
    import minari

    return list(minari.load_dataset(dataset_id).iterate_episodes())


@pytest.fixture(scope="module")
def ppo_checkpoint(tmp_path_factory, offline_datasets) -> str:
    """A (barely trained) ppo.py CartPole-v1 checkpoint: a fixed network whose greedy actions the data must hold."""
    from smoke_configs import SMOKE

    cwd = tmp_path_factory.mktemp("ppo")
    out = run_main(load_algo("ppo"), [*SMOKE["ppo.py"].args, "--save-model"], cwd)
    return str(cwd / out["model_path"])


def test_same_seed_same_data(offline_datasets):
    base = ["--env-id", "CartPole-v1", "--steps", "150", "--ref-min-score", "0", "--ref-max-score", "500"]
    make_dataset(["--dataset-id", "test/seed-a-v0", "--seed", "3", *base])
    make_dataset(["--dataset-id", "test/seed-b-v0", "--seed", "3", *base])
    make_dataset(["--dataset-id", "test/seed-c-v0", "--seed", "4", *base])
    a, b, c = episodes("test/seed-a-v0"), episodes("test/seed-b-v0"), episodes("test/seed-c-v0")
    assert sum(len(ep.rewards) for ep in a) == 150
    assert len(a) == len(b) and all(np.array_equal(x.observations, y.observations) and np.array_equal(x.actions, y.actions)
                                    for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].observations, c[0].observations)
    # episodes are reset with seeds 3, 4, ...; only the last is cut by the budget (truncated, not terminated)
    assert [int(ep.id) for ep in a] == list(range(len(a)))
    assert all(ep.terminations[-1] for ep in a[:-1]) and a[-1].truncations[-1] and not a[-1].terminations[-1]


def test_checkpoint_policy_plays_its_greedy_actions_and_policies_share_the_steps(offline_datasets, ppo_checkpoint):
    result = make_dataset(["--env-id", "CartPole-v1", "--dataset-id", "test/mixed-v0", "--steps", "101",
                           "--policy", "random", f"ppo:{ppo_checkpoint}", "--ref-min-score", "0", "--ref-max-score", "1"])
    assert result["total_steps"] == 101
    eps = episodes("test/mixed-v0")
    lengths = np.cumsum([len(ep.rewards) for ep in eps])
    # the random share (50 steps) ends with an episode cut at step 50; the checkpoint plays the remaining 51
    cut = int(np.flatnonzero(lengths == 50)[0])
    assert eps[cut].truncations[-1] and not eps[cut].terminations[-1]
    net, _ = load_algo("ppo").load_model(ppo_checkpoint)
    for ep in eps[cut + 1:]:
        greedy = net.greedy_action(torch.as_tensor(ep.observations[:-1], dtype=torch.float32))
        np.testing.assert_array_equal(ep.actions, greedy.numpy())


def test_noise_changes_some_actions(offline_datasets, ppo_checkpoint):
    make_dataset(["--env-id", "CartPole-v1", "--dataset-id", "test/noisy-v0", "--steps", "300", "--noise", "0.5",
                  "--policy", f"ppo:{ppo_checkpoint}", "--ref-min-score", "0", "--ref-max-score", "1"])
    net, _ = load_algo("ppo").load_model(ppo_checkpoint)
    eps = episodes("test/noisy-v0")
    obs = np.concatenate([ep.observations[:-1] for ep in eps])
    actions = np.concatenate([ep.actions for ep in eps])
    differ = (net.greedy_action(torch.as_tensor(obs, dtype=torch.float32)).numpy() != actions).mean()
    assert 0.1 < differ < 0.4, differ  # a random action half the time, which is the greedy one half of those: ~25%


def test_measured_reference_scores(offline_datasets, ppo_checkpoint):
    """Without built-in scores: the random policy's and the last policy's (noise-free) mean returns."""
    result = make_dataset(["--env-id", "CartPole-v1", "--dataset-id", "test/measured-v0", "--steps", "50",
                           "--policy", f"ppo:{ppo_checkpoint}", "--ref-episodes", "3", "--ref-min-score", "0"])
    random_min = make_dataset(["--env-id", "CartPole-v1", "--dataset-id", "test/measured-min-v0", "--steps", "50",
                               "--ref-max-score", "500"])["ref_min_score"]
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    net, _ = load_algo("ppo").load_model(ppo_checkpoint)
    expert = []
    for i in range(3):  # the tool measures with reset seeds --seed + 10**6 + i
        obs, _ = env.reset(seed=1 + 10**6 + i)
        done, total = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(net.greedy_action(torch.as_tensor(obs).unsqueeze(0))[0].numpy())
            total, done = total + r, term or trunc
        expert.append(total)
    assert result["ref_max_score"] == pytest.approx(np.mean(expert))
    assert result["ref_min_score"] == 0 and 10 < random_min < 40  # a random CartPole policy lasts about 22 steps


def test_d4rl_reference_scores_and_merge(offline_datasets):
    import minari

    make_dataset(["--env-id", "Hopper-v5", "--dataset-id", "test/hopper/random-v0", "--steps", "60"])
    make_dataset(["--env-id", "Hopper-v5", "--dataset-id", "test/hopper/random2-v0", "--steps", "40", "--seed", "7"])
    dataset = minari.load_dataset("test/hopper/random-v0")
    assert dataset.storage.metadata["ref_min_score"] == pytest.approx(-20.272305)
    assert dataset.storage.metadata["ref_max_score"] == pytest.approx(3234.3)
    # the score reads on D4RL's scale: 0 at the random policy's return, 100 at the expert's
    assert minari.get_normalized_score(dataset, np.array([3234.3, -20.272305])) == pytest.approx([1.0, 0.0])
    assert dataset.recover_environment().spec.id == "Hopper-v5"
    make_dataset(["--dataset-id", "test/hopper/merged-v0", "--merge", "test/hopper/random-v0", "test/hopper/random2-v0"])
    merged, parts = episodes("test/hopper/merged-v0"), episodes("test/hopper/random-v0") + episodes("test/hopper/random2-v0")
    assert len(merged) == len(parts) and all(np.array_equal(m.observations, p.observations) for m, p in zip(merged, parts,
                                                                                                              strict=True))
    assert minari.load_dataset("test/hopper/merged-v0").storage.metadata["ref_max_score"] == pytest.approx(3234.3)


def test_bad_input(offline_datasets, ppo_checkpoint, capsys):
    import minari

    root = minari.storage.get_dataset_path()
    make_dataset(["--env-id", "CartPole-v1", "--dataset-id", "test/exists-v0", "--steps", "10", "--ref-max-score", "500"])
    before = sorted(os.listdir(root)), sorted(os.listdir(root / "test"))
    ok = ["--env-id", "CartPole-v1", "--steps", "10", "--ref-max-score", "500"]
    for argv, expected in [
        (["--dataset-id", "test/no-version", *ok], "-vN"),
        (["--dataset-id", "test/exists-v0", *ok], "--overwrite"),
        (["--dataset-id", "test/x-v0", "--env-id", "NoSuchEnv-v0", "--steps", "10"], "NoSuchEnv-v0"),
        (["--dataset-id", "test/x-v0", *ok, "--steps", "0"], "--steps"),
        (["--dataset-id", "test/x-v0", *ok, "--noise", "nan"], "--noise"),
        (["--dataset-id", "test/x-v0", *ok, "--ref-min-score", "600"], "--ref-max-score > --ref-min-score"),
        (["--dataset-id", "test/x-v0", "--env-id", "CartPole-v1", "--steps", "10"], "--ref-max-score"),
        (["--dataset-id", "test/x-v0", *ok, "--policy", "ppo:/no/such.pt"], "no checkpoint"),
        (["--dataset-id", "test/x-v0", *ok, "--policy", "nosuchalgo:x.pt"], "ALGO:CHECKPOINT"),
        (["--dataset-id", "test/x-v0", "--env-id", "Acrobot-v1", "--steps", "10", "--ref-max-score", "0",
          "--policy", f"ppo:{ppo_checkpoint}"], "trained on CartPole-v1"),
        (["--dataset-id", "test/x-v0", "--merge", "test/missing-v0"], "no local dataset"),
        (["--dataset-id", "test/x-v0", "--merge", "test/exists-v0", "--env-id", "CartPole-v1"], "--env-id"),
    ]:
        assert_one_line_exit_2(lambda argv=argv: make_dataset(argv), expected, capsys)
    assert (sorted(os.listdir(root)), sorted(os.listdir(root / "test"))) == before, "bad input left files behind"

    # --overwrite replaces the dataset
    make_dataset(["--dataset-id", "test/exists-v0", *ok, "--steps", "20", "--overwrite"])
    assert minari.load_dataset("test/exists-v0").total_steps == 20
    with pytest.raises(SystemExit) as exit_info:
        make_dataset(["--help"])
    assert exit_info.value.code == 0 and "medium-replay" in capsys.readouterr().out
