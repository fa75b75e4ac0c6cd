"""How each file of algorithms/ is smoke-tested and fed bad input.

test_smoke.py discovers every algorithms/*.py; a file with no entry in SMOKE fails the harness.

Kinds:
- "deep": a Gymnasium training run. The harness runs it with `--save-model`, checks exit 0, that the
  TensorBoard event file holds every key in `keys`, and that the saved model loads with
  `weights_only=True` and acts. It also adds the standard bad-input cases automatically
  (unknown --env-id, an action space the file cannot handle, a non-positive budget).
- "classic": a tabular / book-figure file. The harness runs it, checks exit 0 and that every path in
  `files` was written (e.g. the figure passed as --plot).

In `args` and `files`, "{tmp}" is replaced by a fresh temporary directory.
BAD_INPUT lists extra bad-input cases per file: (args, a substring the one-line stderr must contain).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Smoke:
    args: list[str]
    kind: str = "deep"
    keys: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    # deep kind: an environment whose action space this file rejects (for the automatic bad-input case)
    wrong_space_env: str | None = None
    # further argument sets appended to `args`, each run once and checked for exit 0: every option runs
    variants: list[list[str]] = field(default_factory=list)


PPO_KEYS = ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
            "losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac",
            "eval/episodic_return"]
DQN_KEYS = ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/epsilon",
            "losses/td_loss", "losses/q_values", "eval/episodic_return"]

SMOKE: dict[str, Smoke] = {
    "ppo.py": Smoke(
        args=["--total-timesteps", "512", "--num-envs", "2", "--num-steps", "64", "--update-epochs", "2",
              "--num-minibatches", "2", "--eval-episodes", "1"],
        keys=PPO_KEYS,
        wrong_space_env="Pendulum-v1",
        variants=[["--clip-vloss", "--target-kl", "0.001", "--no-norm-adv", "--no-anneal-lr", "--no-anneal-clip",
                   "--ent-coef", "0.01", "--env-id", "Acrobot-v1"]],
    ),
    "dqn.py": Smoke(
        args=["--total-timesteps", "1500", "--learning-starts", "500", "--train-frequency", "100",
              "--gradient-steps", "4", "--log-every", "500", "--eval-episodes", "1"],
        keys=DQN_KEYS,
        wrong_space_env="Pendulum-v1",
        variants=[["--double-q", "--dueling", "--num-envs", "3", "--tau", "0.5", "--loss", "mse",
                   "--hidden-sizes", "32", "--env-id", "Acrobot-v1"]],
    ),
    "c51.py": Smoke(
        args=["--total-timesteps", "1500", "--learning-starts", "500", "--train-frequency", "100",
              "--gradient-steps", "4", "--log-every", "500", "--eval-episodes", "1"],
        keys=["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/epsilon",
              "losses/loss", "losses/q_values", "eval/episodic_return"],
        wrong_space_env="Pendulum-v1",
        variants=[["--num-envs", "3", "--tau", "0.5", "--n-atoms", "11", "--v-min", "-20", "--v-max", "5",
                   "--hidden-sizes", "32", "--adam-eps", "1e-8", "--max-grad-norm", "1", "--gamma", "0.9",
                   "--buffer-size", "700", "--batch-size", "16", "--target-network-frequency", "50",
                   "--start-e", "0.5", "--end-e", "0.1", "--exploration-fraction", "0.5", "--learning-rate", "3e-4",
                   "--env-id", "Acrobot-v1"]],
    ),
    "rainbow.py": Smoke(
        args=["--total-timesteps", "1500", "--learning-starts", "500", "--train-frequency", "100",
              "--gradient-steps", "4", "--log-every", "500", "--eval-episodes", "1"],
        keys=["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/beta",
              "losses/loss", "losses/q_values", "eval/episodic_return"],
        wrong_space_env="Pendulum-v1",
        # every component off; then the mixed cases: epsilon-greedy with C51, noisy heads with the expected loss
        variants=[["--no-double", "--no-dueling", "--no-prioritized", "--n-step", "1", "--no-distributional",
                   "--no-noisy", "--num-envs", "3", "--hidden-sizes", "32", "--env-id", "Acrobot-v1"],
                  ["--no-noisy", "--num-envs", "2", "--n-step", "5", "--n-atoms", "11", "--v-min", "-100",
                   "--v-max", "0", "--buffer-size", "700", "--env-id", "Acrobot-v1"],
                  ["--no-distributional", "--no-dueling", "--hidden-sizes", "32", "32", "--alpha", "0"]],
    ),
    "ddpg.py": Smoke(
        args=["--total-timesteps", "600", "--learning-starts", "200", "--batch-size", "64", "--hidden-sizes", "64", "64",
              "--eval-episodes", "1"],
        keys=["charts/episodic_return", "charts/episodic_length", "charts/SPS", "losses/qf_loss", "losses/actor_loss",
              "losses/q_values", "eval/episodic_return"],
        wrong_space_env="CartPole-v1",
        variants=[["--num-envs", "3", "--train-frequency", "2", "--policy-frequency", "1", "--exploration-noise", "0.2",
                   "--tau", "1", "--save-model", "--save-buffer", "--log-every", "300"],
                  ["--env-id", "InvertedPendulum-v5", "--num-envs", "2", "--hidden-sizes", "32"]],
    ),
    "td3.py": Smoke(
        args=["--total-timesteps", "600", "--learning-starts", "200", "--batch-size", "32", "--hidden-sizes", "32", "32",
              "--log-every", "200", "--eval-episodes", "1"],
        keys=["charts/episodic_return", "charts/episodic_length", "charts/SPS", "losses/qf1_loss", "losses/qf2_loss",
              "losses/qf_loss", "losses/q_values", "losses/actor_loss", "eval/episodic_return"],
        wrong_space_env="CartPole-v1",
        variants=[["--num-envs", "2", "--policy-frequency", "3", "--tau", "0.5", "--policy-noise", "0", "--save-model",
                   "--save-buffer", "--env-id", "MountainCarContinuous-v0"]],
    ),
    "sac.py": Smoke(
        args=["--total-timesteps", "600", "--learning-starts", "200", "--batch-size", "64", "--log-every", "200",
              "--eval-episodes", "1"],
        keys=["charts/episodic_return", "charts/episodic_length", "charts/SPS", "losses/qf1_loss", "losses/qf2_loss",
              "losses/qf_loss", "losses/q_values", "losses/actor_loss", "losses/alpha",
              "losses/alpha_loss", "losses/entropy", "eval/episodic_return"],
        wrong_space_env="CartPole-v1",
        variants=[["--no-autotune", "--alpha", "0.1", "--num-envs", "2", "--train-frequency", "2", "--gradient-steps", "2",
                   "--hidden-sizes", "32", "--env-id", "MountainCarContinuous-v0"]],
    ),
    "a2c.py": Smoke(
        args=["--total-timesteps", "400", "--num-envs", "2", "--losses-every", "10", "--eval-episodes", "1"],
        keys=["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
              "losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/explained_variance",
              "eval/episodic_return"],
        wrong_space_env="Blackjack-v1",
        variants=[["--env-id", "Pendulum-v1", "--optimizer", "adam", "--gae-lambda", "0.9", "--norm-adv",
                   "--no-anneal-lr", "--ent-coef", "0.01", "--num-steps", "8", "--hidden-size", "16"]],
    ),
    "a3c.py": Smoke(
        args=["--total-timesteps", "600", "--losses-every", "20", "--eval-episodes", "1"],
        keys=["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
              "losses/value_loss", "losses/policy_loss", "losses/entropy", "eval/episodic_return"],
        wrong_space_env="Blackjack-v1",
        variants=[["--env-id", "Pendulum-v1", "--optimizer", "adam", "--num-workers", "3", "--no-anneal-lr",
                   "--num-steps", "3", "--hidden-size", "16"]],
    ),
    "trpo.py": Smoke(
        args=["--total-timesteps", "256", "--num-envs", "2", "--num-steps", "64", "--n-critic-updates", "2",
              "--batch-size", "64", "--eval-episodes", "1"],
        keys=["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
              "losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/approx_kl",
              "losses/surrogate_improvement", "losses/line_search_accepted", "losses/step_fraction",
              "losses/explained_variance", "eval/episodic_return"],
        wrong_space_env="Blackjack-v1",
        variants=[["--env-id", "Pendulum-v1", "--no-norm-adv", "--target-kl", "0.05", "--cg-iters", "3",
                   "--cg-damping", "0.01", "--line-search-factor", "0.5", "--line-search-max-iter", "3",
                   "--learning-rate", "3e-4", "--gamma", "0.9", "--gae-lambda", "0.9", "--hidden-size", "16"],
                  # normalisation, through a Pendulum truncation (256 steps per env, episodes of 200)
                  ["--env-id", "Pendulum-v1", "--norm-obs", "--norm-reward", "--clip-obs", "5", "--clip-reward", "5",
                   "--num-steps", "128", "--total-timesteps", "512", "--save-model"]],
    ),
    "ppo_continuous_action.py": Smoke(
        args=["--env-id", "Pendulum-v1", "--total-timesteps", "400", "--num-envs", "2", "--num-steps", "100",
              "--num-minibatches", "2", "--update-epochs", "2", "--eval-episodes", "1"],
        keys=PPO_KEYS + ["losses/explained_variance", "charts/action_std"],
        wrong_space_env="CartPole-v1",
        variants=[["--env-id", "Hopper-v5", "--clip-vloss", "--target-kl", "0.001", "--anneal-clip", "--ent-coef",
                   "0.01", "--clip-obs", "5", "--clip-reward", "5", "--log-every", "100"],
                  ["--env-id", "HalfCheetah-v5", "--no-norm-obs", "--no-norm-reward", "--no-norm-adv", "--no-anneal-lr",
                   "--hidden-size", "16", "--num-envs", "1", "--num-steps", "200", "--save-model"]],
    ),
    "reinforce.py": Smoke(
        args=["--total-timesteps", "600", "--episodes-per-update", "2", "--eval-episodes", "1"],
        keys=["charts/episodic_return", "charts/episodic_length", "charts/SPS", "losses/policy_loss", "losses/entropy",
              "eval/episodic_return"],
        wrong_space_env="Blackjack-v1",
        variants=[["--baseline", "--normalize-returns", "--ent-coef", "0.01", "--value-epochs", "2", "--learning-rate",
                   "3e-3", "--critic-learning-rate", "3e-3", "--gamma", "0.95", "--hidden-size", "32", "--log-every",
                   "200", "--env-id", "Pendulum-v1"]],
    ),
    "actor_critic.py": Smoke(
        args=["--total-timesteps", "300", "--log-every", "100", "--eval-episodes", "1"],
        keys=["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
              "losses/policy_loss", "losses/value_loss", "losses/entropy", "eval/episodic_return"],
        wrong_space_env="Blackjack-v1",
        variants=[["--num-envs", "2", "--ent-coef", "0.01", "--learning-rate", "1e-3", "--critic-learning-rate", "3e-3",
                   "--no-anneal-lr", "--gamma", "0.95", "--hidden-size", "32", "--env-id", "Pendulum-v1"]],
    ),
    "ppo_atari.py": Smoke(
        # 2 envs x 160 agent steps: a random-play Breakout game (5 lives) ends after about 115 steps, so
        # charts/episodic_return is written
        args=["--total-timesteps", "320", "--num-envs", "2", "--num-steps", "160", "--num-minibatches", "4",
              "--update-epochs", "1", "--eval-episodes", "1"],
        keys=PPO_KEYS,
        wrong_space_env="CartPole-v1",
        variants=[["--env-id", "ALE/Breakout-v5", "--total-timesteps", "64", "--num-envs", "1", "--num-steps", "64",
                   "--num-minibatches", "2", "--update-epochs", "2", "--clip-vloss", "--target-kl", "0.001",
                   "--no-norm-adv", "--no-anneal-lr", "--no-anneal-clip", "--log-every", "32"]],
    ),
    "dqn_atari.py": Smoke(
        # 320 agent steps, the first 240 random: a random-play Breakout game ends within them, so
        # charts/episodic_return is written; 10 updates of 16; a 256-frame memory, so the ring wraps
        args=["--total-timesteps", "320", "--learning-starts", "240", "--train-frequency", "8", "--batch-size", "16",
              "--buffer-size", "256", "--target-network-frequency", "40", "--log-every", "80", "--eval-episodes", "1"],
        keys=DQN_KEYS,
        wrong_space_env="CartPole-v1",
        variants=[["--env-id", "ALE/Breakout-v5", "--total-timesteps", "96", "--num-envs", "2", "--learning-starts", "32",
                   "--buffer-size", "64", "--tau", "0.5", "--max-grad-norm", "10", "--eval-epsilon", "0",
                   "--log-every", "32"]],
    ),
    "bandits.py": Smoke(
        args=["--num-runs", "20", "--num-steps", "100", "--plot", "{tmp}/fig.png"],
        kind="classic", files=["{tmp}/fig.png"],
    ),
    "td_prediction.py": Smoke(args=["--num-runs", "5", "--num-episodes", "10", "--plot", "{tmp}/fig.png"],
                              kind="classic", files=["{tmp}/fig.png"]),
    "n_step_td.py": Smoke(args=["--num-runs", "3", "--ns", "1", "4", "--alphas", "0.2", "0.4", "--sarsa-runs", "1",
                                "--sarsa-steps", "300", "--plot", "{tmp}/fig.png"],
                          kind="classic", files=["{tmp}/fig.png"]),
    "td_lambda.py": Smoke(args=["--num-runs", "3", "--lambdas", "0", "0.8", "--alphas", "0.2", "0.4",
                                "--plot", "{tmp}/fig.png"],
                          kind="classic", files=["{tmp}/fig.png"]),
    "policy_evaluation.py": Smoke(args=["--plot", "{tmp}/fig.png"], kind="classic", files=["{tmp}/fig.png"]),
    "policy_iteration.py": Smoke(args=["--env-id", "GridWorld4x4-v0", "--plot", "{tmp}/fig.png"], kind="classic",
                                 files=["{tmp}/fig.png"]),
    "value_iteration.py": Smoke(args=["--plot", "{tmp}/fig.png"], kind="classic", files=["{tmp}/fig.png"]),
    "sarsa_lambda.py": Smoke(args=["--num-runs", "1", "--num-episodes", "20", "--plot", "{tmp}/fig.png"], kind="classic",
                             files=["{tmp}/fig.png"]),
    "dyna_q.py": Smoke(args=["--num-runs", "3", "--num-episodes", "5", "--plot", "{tmp}/fig.png"], kind="classic",
                       files=["{tmp}/fig.png"]),
    "sarsa.py": Smoke(args=["--num-runs", "2", "--num-episodes", "20", "--eval-episodes", "2", "--plot", "{tmp}/fig.png"],
                      kind="classic", files=["{tmp}/fig.png"]),
    "q_learning.py": Smoke(args=["--num-runs", "2", "--num-episodes", "30", "--report-from", "10", "--eval-episodes", "2",
                                 "--plot", "{tmp}/fig.png"], kind="classic", files=["{tmp}/fig.png"]),
    "expected_sarsa.py": Smoke(args=["--num-runs", "2", "--num-episodes", "30", "--report-from", "10", "--sweep-alphas",
                                     "0.5", "1.0", "--sweep-episodes", "5", "--sweep-runs", "1", "--eval-episodes", "2",
                                     "--plot", "{tmp}/fig.png"], kind="classic", files=["{tmp}/fig.png"]),
    "mc_prediction.py": Smoke(args=["--num-episodes", "2000", "--snapshot-episodes", "500", "--plot", "{tmp}/fig.png"],
                              kind="classic", files=["{tmp}/fig.png"]),
    "mc_control.py": Smoke(args=["--num-episodes", "2000", "--eval-episodes", "500", "--plot", "{tmp}/fig.png"],
                           kind="classic", files=["{tmp}/fig.png"]),
    "off_policy_mc.py": Smoke(args=["--num-runs", "3", "--num-episodes", "200", "--control-episodes", "2000",
                                    "--eval-episodes", "500", "--plot", "{tmp}/fig.png", "--control-plot", "{tmp}/ctl.png"],
                              kind="classic", files=["{tmp}/fig.png", "{tmp}/ctl.png"]),
}

BAD_INPUT: dict[str, list[tuple[list[str], str]]] = {
    "ppo.py": [(["--num-minibatches", "3"], "num-minibatches"), (["--gamma", "1.5"], "gamma"),
               (["--hidden-size", "-1"], "hidden-size")],
    "dqn.py": [(["--buffer-size", "0"], "buffer-size"), (["--loss", "l3"], "loss"),
               (["--learning-rate", "-1"], "learning-rate"), (["--hidden-sizes", "-1"], "hidden-sizes")],
    "dqn_atari.py": [(["--buffer-size", "12", "--num-envs", "2"], "buffer-size")],
    "c51.py": [(["--v-min", "10", "--v-max", "-10"], "v-min"), (["--v-min", "5", "--v-max", "5"], "v-max"),
               (["--n-atoms", "1"], "n-atoms"), (["--n-atoms", "0"], "n-atoms"), (["--batch-size", "0"], "batch-size"),
               (["--adam-eps", "-1"], "adam-eps")],
    "rainbow.py": [(["--n-step", "0"], "n-step"), (["--v-min", "10", "--v-max", "0"], "v-min"),
                   (["--alpha", "-1"], "alpha")],
    "ddpg.py": [(["--resume", "{tmp}/missing.pt"], "resume"), (["--tau", "0"], "tau"), (["--hidden-sizes", "0"], "hidden-sizes"),
                (["--env-id", "CarRacing-v3"], "flat Box observation"), (["--num-envs", "0"], "num-envs")],
    "td3.py": [(["--resume", "missing.pt"], "resume"), (["--save-buffer"], "save-buffer"),
               (["--policy-frequency", "0"], "policy-frequency"), (["--noise-clip", "-1"], "noise-clip"),
               (["--learning-rate", "-1"], "learning-rate")],
    "sac.py": [(["--resume", "{tmp}/missing.pt"], "resume"), (["--gamma", "1.5"], "gamma"),
               (["--buffer-size", "0"], "buffer-size")],
    "bandits.py": [(["--num-runs", "0"], "num-runs"), (["--num-steps", "-5"], "num-steps"),
                   (["--figure", "9.9"], "figure"), (["--num-arms", "1"], "num-arms"),
                   (["--summary-window", "0"], "summary-window")],
    "td_prediction.py": [(["--num-runs", "0"], "num-runs"), (["--num-episodes", "-3"], "num-episodes"),
                         (["--td-alphas", "0"], "td-alphas"), (["--mc-alphas", "0.01", "-0.02"], "mc-alphas"),
                         (["--example-alpha", "0.2"], "example-alpha")],
    "n_step_td.py": [(["--num-runs", "0"], "num-runs"), (["--ns", "4", "0"], "--ns"), (["--alphas", "0"], "alphas"),
                     (["--sarsa-epsilon", "1.5"], "sarsa-epsilon"), (["--sarsa-steps", "0"], "sarsa-steps"),
                     (["--num-episodes", "0"], "num-episodes"), (["--sarsa-ns", "-1"], "sarsa-ns"),
                     (["--sarsa-alpha", "-0.5"], "sarsa-alpha")],
    "td_lambda.py": [(["--num-runs", "0"], "num-runs"), (["--lambdas", "0.5", "1.5"], "lambdas"),
                     (["--lambdas", "-0.1"], "lambdas"), (["--alphas", "0"], "alphas"), (["--methods", "dutch"], "methods"),
                     (["--num-episodes", "-1"], "num-episodes"), (["--alphas", "-0.3"], "alphas")],
    "policy_evaluation.py": [(["--env-id", "CartPole-v1"], "transition model"), (["--env-id", "Foo-v0"], "unknown"),
                             (["--gamma", "0"], "gamma"), (["--theta", "0"], "theta"),
                             (["--env-id", "Taxi-v3"], "Taxi-v4"),  # Gymnasium 1.4 registers Taxi-v4 only
                             (["--env-id", "Blackjack-v1"], "transition model"), (["--gamma", "1.5"], "gamma"),
                             (["--theta", "-0.001"], "theta")],
    "policy_iteration.py": [(["--env-id", "CartPole-v1"], "transition model"), (["--env-id", "Foo-v0"], "unknown"),
                            (["--env-id", "JacksCarRental-v0", "--gamma", "1"], "no policy terminates"), (["--gamma", "1.5"], "gamma"),
                            (["--theta", "0"], "theta"), (["--env-id", "Taxi-v3"], "Taxi-v4"),
                            (["--env-id", "Blackjack-v1"], "transition model"), (["--gamma", "0"], "gamma"),
                            (["--gamma", "1.01"], "gamma"), (["--tie-tol", "-1"], "tie-tol")],
    "value_iteration.py": [(["--env-id", "CartPole-v1"], "transition model"), (["--env-id", "Foo-v0"], "unknown"),
                           (["--gamma", "0"], "gamma"), (["--theta", "-1"], "theta"), (["--p-head", "1.5"], "p-head"),
                           (["--env-id", "Taxi-v3"], "Taxi-v4"), (["--env-id", "Blackjack-v1"], "transition model"),
                           (["--gamma", "-0.5"], "gamma"), (["--gamma", "2"], "gamma"), (["--theta", "0"], "theta"),
                           (["--p-head", "0"], "p-head"), (["--tie-tol", "-1"], "tie-tol")],
    "sarsa_lambda.py": [(["--env-id", "NoSuchEnv-v0"], "unknown"), (["--env-id", "FrozenLake-v1"], "Box"),
                        (["--env-id", "CartPole-v1"], "unbounded"), (["--lam", "1.5"], "lam"),
                        (["--num-episodes", "0"], "num-episodes"), (["--lam", "-0.1"], "lam"),
                        (["--num-runs", "-3"], "num-runs")],
    "dyna_q.py": [(["--env-id", "NoSuchEnv-v0"], "unknown"), (["--env-id", "CartPole-v1"], "Box"),
                  (["--num-episodes", "0"], "num-episodes"), (["--num-runs", "0"], "num-runs"),
                  (["--planning-steps", "5", "-1"], "planning-steps"), (["--epsilon", "1.5"], "epsilon")],
    "sarsa.py": [(["--env-id", "Foo-v0"], "Foo-v0 is unknown"), (["--env-id", "CartPole-v1"], "observation space"),
                 (["--epsilon", "1.5"], "--epsilon"), (["--alpha", "0"], "--alpha"), (["--num-episodes", "0"], "--num-episodes"),
                 (["--env-id", "Taxi-v3"], "Taxi-v4"), (["--num-runs", "-1"], "--num-runs")],
    "q_learning.py": [(["--env-id", "Foo-v0"], "Foo-v0 is unknown"), (["--env-id", "CartPole-v1"], "observation space"),
                      (["--epsilon", "-0.1"], "--epsilon"), (["--alpha", "-0.5"], "--alpha"), (["--num-runs", "0"], "--num-runs"),
                      (["--epsilon", "1.5"], "--epsilon"), (["--num-episodes", "0"], "--num-episodes")],
    "expected_sarsa.py": [(["--env-id", "Foo-v0"], "Foo-v0 is unknown"), (["--env-id", "CartPole-v1"], "observation space"),
                          (["--epsilon", "1.5"], "--epsilon"), (["--alpha", "0"], "--alpha"),
                          (["--num-episodes", "0"], "--num-episodes"), (["--sweep-alphas", "0", "0.5"], "--sweep-alphas")],
    "mc_prediction.py": [(["--env-id", "NoSuchEnv-v0"], "unknown"), (["--env-id", "CartPole-v1"], "continuous observation space"),
                         (["--env-id", "FrozenLake-v1"], "not supported"), (["--num-episodes", "0"], "num-episodes"),
                         (["--num-runs", "-3", "--env-id", "RandomWalk-v0"], "num-runs")],
    "mc_control.py": [(["--env-id", "NoSuchEnv-v0"], "unknown"), (["--env-id", "CartPole-v1"], "continuous observation space"),
                      (["--env-id", "FrozenLake-v1"], "not Blackjack"), (["--num-episodes", "0"], "num-episodes"),
                      (["--epsilon", "1.5"], "epsilon")],
    "off_policy_mc.py": [(["--env-id", "NoSuchEnv-v0"], "unknown"), (["--env-id", "CartPole-v1"], "continuous observation space"),
                         (["--env-id", "FrozenLake-v1"], "not Blackjack"), (["--num-episodes", "0"], "num-episodes"),
                         (["--num-runs", "-1"], "num-runs")],
}
