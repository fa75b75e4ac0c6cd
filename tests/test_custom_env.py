"""A user's own environment: every file that takes --env-id accepts Gymnasium's "module:Env-v0" form (the module
is imported and registers the id, as gym.make does), says in one line what a custom environment lacks (wrong
spaces), and rejects a module that cannot be imported or does not register the id as bad input.

The environments are tests/custom_env_example.py's corridor in three variants (Discrete actions, Box actions,
Discrete observations); `custom_env_example` is importable because tests/ is on sys.path during the tests.
"""

from __future__ import annotations

import re

import pytest
from conftest import ALGORITHMS, assert_one_line_exit_2, load_algo, run_main
from smoke_configs import SMOKE

DISCRETE, BOX, TABULAR = (f"custom_env_example:{name}-v0"
                          for name in ("CustomCorridor", "CustomCorridorBox", "CustomCorridorTabular"))

# the variants whose spaces fit each file; every other variant must be refused in one line for its spaces
FITS = {
    **dict.fromkeys(("ppo.py", "ppo_distributed.py", "dqn.py", "c51.py", "rainbow.py", "sarsa_lambda.py", "muzero.py"),
                     {DISCRETE}),
    **dict.fromkeys(("ddpg.py", "td3.py", "sac.py", "ppo_continuous_action.py", "world_model.py", "mbpo.py",
                     "preference_reward.py"), {BOX}),
    **dict.fromkeys(("a2c.py", "a3c.py", "trpo.py", "reinforce.py", "actor_critic.py", "dreamer.py"),
                     {DISCRETE, BOX}),
    # demonstrations are recorded on the environment itself: with the default CartPole-v1 dataset every custom
    # variant is refused in one line naming it
    "gail.py": set(),
    **dict.fromkeys(("dyna_q.py", "sarsa.py", "q_learning.py", "expected_sarsa.py"), {TABULAR}),
    # Atari files, dynamic programming (needs env.unwrapped.P) and the Blackjack/random-walk Monte Carlo files
    **dict.fromkeys(("ppo_atari.py", "dqn_atari.py", "policy_evaluation.py", "policy_iteration.py",
                     "value_iteration.py", "mc_prediction.py", "mc_control.py", "off_policy_mc.py",
                     "maxent_irl.py", "reward_shaping.py"), set()),
}
# words of the "not registered" messages, which a custom environment that imports and registers must not get
NOT_FOUND = ("not a registered", "is unknown", "cannot be imported", "does not register")


def takes_env_id(name: str) -> bool:
    """Its Args has an env_id field (read from the source: collecting the tests imports no algorithm file)."""
    return re.search(r"^    env_id: ", (ALGORITHMS / name).read_text(), re.MULTILINE) is not None


# multi-agent files take a PettingZoo module as --env-id (their bad ids are in smoke_configs.BAD_INPUT)
ENV_FILES = [name for name in SMOKE if takes_env_id(name) and SMOKE[name].kind != "multiagent"]


def test_every_file_is_listed():
    assert sorted(FITS) == sorted(ENV_FILES), "list each file that takes --env-id in FITS (the variants that fit it)"


@pytest.mark.parametrize("name", ENV_FILES)
def test_custom_env_id(name: str, capsys):
    module = load_algo(name)

    def check(env_id):
        return lambda: module.check_args(module.Args(env_id=env_id))

    for env_id in (DISCRETE, BOX, TABULAR):
        if env_id in FITS.get(name, ()):
            check(env_id)()  # accepted: returns without exiting
        else:
            assert_one_line_exit_2(check(env_id), env_id, capsys)  # one line naming the environment ...
            with pytest.raises(SystemExit):
                check(env_id)()
            err = capsys.readouterr().err
            assert not any(words in err for words in NOT_FOUND), f"not about the spaces: {err}"  # ... its spaces
    assert_one_line_exit_2(check("no_such_module:Foo-v0"), "cannot be imported", capsys)
    assert_one_line_exit_2(check("custom_env_example:NoSuchCorridor-v0"), "does not register NoSuchCorridor-v0", capsys)


def test_ppo_trains_on_a_custom_env(tmp_path):
    """The README's promise: ppo.py runs on a user's environment named with the module syntax."""
    out = run_main(load_algo("ppo.py"), ["--env-id", DISCRETE, "--total-timesteps", "128", "--num-envs", "1",
                                         "--num-steps", "64", "--update-epochs", "1", "--num-minibatches", "1",
                                         "--eval-episodes", "1"], tmp_path)
    assert out["global_step"] == 128


def test_the_readme_example_trains_with_ppo(tmp_path, monkeypatch):
    """README.md's my_envs.py, as written there, with `my_envs:Corridor-v0` (its directory on sys.path, as
    PYTHONPATH=. puts it)."""
    readme = (ALGORITHMS.parent / "README.md").read_text()
    section = readme[readme.index("**Your own environment.**"):]
    (tmp_path / "my_envs.py").write_text(re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = run_main(load_algo("ppo.py"), ["--env-id", "my_envs:Corridor-v0", "--total-timesteps", "128",
                                         "--num-envs", "1", "--num-steps", "64", "--eval-episodes", "1"],
                   tmp_path / "run")
    assert out["global_step"] == 128
