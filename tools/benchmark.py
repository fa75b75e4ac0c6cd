"""Benchmark one algorithm file on one environment over seeds, optionally against Stable-Baselines3.

    python tools/benchmark.py --algo ppo --env-id CartPole-v1 --seeds 1 2 3 4 5 --total-timesteps 100000 \
        --compare-sb3 --sb3-config zoo --tag ppo_CartPole-v1

Every run is a separate subprocess (a fresh interpreter, like a user's run), handed its configuration as one
JSON object (see `child_config`) and answering with one JSON line. With --compare-sb3 the
runs alternate, ours then SB3's, seed by seed, so that a disturbance of the machine hits both sides.
Both sides are timed the same way: the wall time of training alone (environment and network creation,
imports and the final evaluation excluded), and both are evaluated the same way: `--eval-episodes`
deterministic episodes on a fresh environment seeded seed+100000+episode.

Writes into --out (benchmark_results/ by default), named by --tag:
    {tag}.csv            one row per run: side, seed, steps, train wall time, SPS, final eval mean/std
    {tag}_curves.csv     training episode returns: side, seed, step, seconds since training start, return
    {tag}.png            mean and min-max band over seeds of return vs steps and vs wall-clock time
    {tag}.md             the summary table (mean +- std over seeds, ratios), with the exact command; with >= 5
                         seeds on every side also the IQM [95% CI] of the final evaluation and the probability
                         that ours improves on each other side (tools/aggregate.py, Agarwal et al., 2021)

--compare-args '...' adds a third side: our file with those arguments added, run right after the plain run of
each seed (--compare-args=--no-nan-check, with '=' since the value starts with '--', measures what the numerical checks cost).

    python tools/benchmark.py --table-only ppo_CartPole-v1 [--out DIR]

rebuilds {tag}.md and {tag}.png from the {tag}.csv and {tag}_curves.csv in --out without running anything: the
command and the Machine/Date line are read back from the {tag}.md there (the original command line is parsed
again), and the page gains a line saying when it was rebuilt. Where no {tag}.md records them, the original
arguments follow --table-only TAG, and the page says that the runs' machine and date were not recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Stable-Baselines3 hyperparameters as rl-zoo3 2.9.2 ships them (rl_zoo3/hyperparams/{ppo,dqn}.yml).
# "lin_x" means a linear schedule from x to 0. rl-zoo3 leaves torch's thread count at its default.
SB3_ZOO = {
    ("ppo", "CartPole-v1"): dict(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                                 ent_coef=0.0, learning_rate="lin_0.001", clip_range="lin_0.2"),
    ("ppo", "Acrobot-v1"): dict(normalize=True, n_envs=16, n_steps=256, gae_lambda=0.94, gamma=0.99, n_epochs=4,
                                ent_coef=0.0),
    ("dqn", "CartPole-v1"): dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000,
                                 gamma=0.99, target_update_interval=10, train_freq=256, gradient_steps=128,
                                 exploration_fraction=0.16, exploration_final_eps=0.04,
                                 policy_kwargs=dict(net_arch=[256, 256])),
    ("dqn", "LunarLander-v3"): dict(learning_rate=6.3e-4, batch_size=128, buffer_size=50_000, learning_starts=0,
                                    gamma=0.99, target_update_interval=250, train_freq=4, gradient_steps=-1,
                                    exploration_fraction=0.12, exploration_final_eps=0.1,
                                    policy_kwargs=dict(net_arch=[256, 256])),
    ("sac", "Pendulum-v1"): dict(learning_rate=1e-3),
    ("td3", "Pendulum-v1"): dict(gamma=0.98, buffer_size=200_000, learning_starts=10_000, noise_type="normal",
                                 noise_std=0.1, gradient_steps=1, train_freq=1, learning_rate=1e-3,
                                 policy_kwargs=dict(net_arch=[400, 300])),
    ("ddpg", "Pendulum-v1"): dict(gamma=0.98, buffer_size=200_000, learning_starts=10_000, noise_type="normal",
                                  noise_std=0.1, gradient_steps=1, train_freq=1, learning_rate=1e-3,
                                  policy_kwargs=dict(net_arch=[400, 300])),
}
SB3_ZOO.update({
    ("a2c", "CartPole-v1"): dict(n_envs=8, ent_coef=0.0),
    ("trpo", "CartPole-v1"): dict(n_envs=2, n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98, gamma=0.99,
                                  learning_rate=1e-3, n_critic_updates=20),
    ("trpo", "Pendulum-v1"): dict(n_envs=2, n_steps=1024, gamma=0.9, n_critic_updates=15, use_sde=True,
                                  sde_sample_freq=4),
    ("ppo_continuous_action", "Pendulum-v1"): dict(n_envs=4, n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10,
                                                   ent_coef=0.0, learning_rate=1e-3, clip_range=0.2, use_sde=True,
                                                   sde_sample_freq=4),
    # rl-zoo3's "atari" entry (AtariWrapper, 4 stacked frames, CnnPolicy) serves every Atari game
    ("ppo_atari", "atari"): dict(n_envs=8, n_steps=128, n_epochs=4, batch_size=256, learning_rate="lin_2.5e-4",
                                 clip_range="lin_0.1", vf_coef=0.5, ent_coef=0.01),
    ("dqn_atari", "atari"): dict(buffer_size=100_000, learning_rate=1e-4, batch_size=32, learning_starts=100_000,
                                 target_update_interval=1000, train_freq=4, gradient_steps=1, exploration_fraction=0.1,
                                 exploration_final_eps=0.01, optimize_memory_usage=False),
})
for _env in ("HalfCheetah", "Hopper"):
    SB3_ZOO[("trpo", f"{_env}-v5")] = dict(normalize=True, n_envs=2, batch_size=128, n_steps=1024, gamma=0.99,
                                           gae_lambda=0.95, sub_sampling_factor=1, cg_max_steps=25, cg_damping=0.1,
                                           n_critic_updates=20, learning_rate=1e-3,
                                           **({"target_kl": 0.04} if _env == "HalfCheetah" else {}))
# The Stable-Baselines3 (or sb3-contrib) class that matches each of our files.
SB3_CLASS = {"ppo": "PPO", "ppo_continuous_action": "PPO", "ppo_atari": "PPO", "a2c": "A2C", "trpo": "TRPO",
             "dqn": "DQN", "dqn_atari": "DQN", "sac": "SAC", "td3": "TD3", "ddpg": "DDPG",
             "c51": "DQN", "rainbow": "DQN"}
ATARI = {"ppo_atari", "dqn_atari"}  # files trained on pixels: SB3 gets make_atari_env + 4 stacked frames
# SB3 has no C51 or Rainbow: their anchor is SB3's DQN with rl-zoo3's DQN settings for the same environment.
ZOO_SAME_AS = {"c51": "dqn", "rainbow": "dqn"}


def zoo_key(algo: str, env_id: str) -> tuple[str, str]:
    algo = ZOO_SAME_AS.get(algo, algo)
    return (algo, "atari") if algo in ATARI else (algo, env_id)


# rl-zoo3 2.9.2 lists its MuJoCo settings under the v4 ids; the v5 environments have the same dynamics.
for _algo in ("sac", "td3", "ddpg"):
    for _env in ("HalfCheetah", "Hopper"):
        SB3_ZOO[(_algo, f"{_env}-v5")] = (
            dict(learning_starts=10_000) if _algo == "sac" else
            dict(learning_starts=10_000, noise_type="normal", noise_std=0.1, train_freq=1, gradient_steps=1,
                 learning_rate=1e-3, batch_size=256, policy_kwargs=dict(net_arch=[400, 300])))


# --------------------------------------------------------------------------------------------------
# Child processes: one training run each, printing one JSON line with the result.
# --------------------------------------------------------------------------------------------------


def run_ours_child(algo: str, env_id: str, seed: int, total_timesteps: int, algo_args: list[str], eval_episodes: int):
    """One run of algorithms/<algo>.py in this process, read through the deep kind's interface only: main's
    returned DEEP_MAIN_KEYS, and the event file's charts/SPS and charts/episodic_return in main's run_dir."""
    import tyro
    from algo_loader import DEEP_MAIN_KEYS, load_algo

    module = load_algo(algo)
    args = tyro.cli(module.Args, args=["--env-id", env_id, "--seed", str(seed), "--total-timesteps",
                                       str(total_timesteps), "--eval-episodes", str(eval_episodes), *algo_args])
    out = module.main(args)
    missing = [key for key in DEEP_MAIN_KEYS if key not in out]
    if missing:
        raise RuntimeError(f"{algo}.py's main returned no {missing}: not a deep-kind file")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(out["run_dir"], size_guidance={"scalars": 0})
    acc.Reload()
    sps_events = acc.Scalars("charts/SPS")
    t0 = sps_events[-1].wall_time - out["train_time"]  # the last SPS event is written when training ends
    curve = [(e.step, e.wall_time - t0, e.value) for e in acc.Scalars("charts/episodic_return")]
    return {"train_time": out["train_time"], "steps": out["global_step"], "eval_returns": out["eval_returns"],
            "curve": curve}


def run_sb3_child(algo: str, env_id: str, seed: int, total_timesteps: int, sb3_config: str, sb3_args: dict,
                  eval_episodes: int, sb3_threads: int):
    import gymnasium as gym
    import stable_baselines3
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env, make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack, VecNormalize

    if sb3_threads > 0:
        torch.set_num_threads(sb3_threads)
    if SB3_CLASS[algo] == "TRPO":
        import sb3_contrib

        model_class = sb3_contrib.TRPO
    else:
        model_class = getattr(stable_baselines3, SB3_CLASS[algo])
    atari = algo in ATARI
    hp = dict(SB3_ZOO[zoo_key(algo, env_id)]) if sb3_config == "zoo" else {}
    hp.update(sb3_args)
    n_envs = hp.pop("n_envs", 1)
    normalize = hp.pop("normalize", False)
    for key, val in list(hp.items()):
        if isinstance(val, str) and val.startswith("lin_"):
            start = float(val[4:])
            hp[key] = lambda progress, start=start: progress * start  # SB3 passes remaining progress 1 -> 0

    noise_type, noise_std = hp.pop("noise_type", None), hp.pop("noise_std", 0.1)
    if atari:
        import ale_py

        gym.register_envs(ale_py)
        # Monitor sits under AtariWrapper, so info["episode"] is the raw game score of a whole game
        env = VecFrameStack(make_atari_env(env_id, n_envs=n_envs, seed=seed), n_stack=4)
    else:
        env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    if noise_type == "normal":  # rl-zoo3's noise_type/noise_std become SB3's action_noise
        from stable_baselines3.common.noise import NormalActionNoise

        n_act = env.action_space.shape[0]
        hp["action_noise"] = NormalActionNoise(mean=np.zeros(n_act), sigma=noise_std * np.ones(n_act))
    if normalize:
        env = VecNormalize(env, gamma=hp.get("gamma", 0.99))
    model = model_class("CnnPolicy" if atari else "MlpPolicy", env, seed=seed, device="cpu", verbose=0, **hp)

    class Curve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.points, self.t0 = [], time.time()

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.points.append((self.num_timesteps, time.time() - self.t0, float(info["episode"]["r"])))
            return True

    callback = Curve()
    start = time.time()
    callback.t0 = start
    model.learn(total_timesteps, callback=callback)
    train_time = time.time() - start

    if atari:
        return {"train_time": train_time, "steps": int(model.num_timesteps),
                "eval_returns": evaluate_sb3_atari(model, env_id, seed, eval_episodes), "curve": callback.points}
    eval_env = gym.make(env_id)
    returns = []
    for ep in range(eval_episodes):
        obs, _ = eval_env.reset(seed=seed + 100_000 + ep)
        done, total = False, 0.0
        while not done:
            if normalize:
                obs_in = env.normalize_obs(obs)
            else:
                obs_in = obs
            action, _ = model.predict(obs_in, deterministic=True)
            discrete = isinstance(eval_env.action_space, gym.spaces.Discrete)
            obs, reward, terminated, truncated, _ = eval_env.step(int(action) if discrete else action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return {"train_time": train_time, "steps": int(model.num_timesteps), "eval_returns": returns,
            "curve": callback.points}


def evaluate_sb3_atari(model, env_id: str, seed: int, eval_episodes: int, max_frames: int = 108_000) -> list[float]:
    """Raw game score over whole games (no end of episode at a life loss, unclipped rewards).

    Sampled actions, not the greedy ones: as rl-zoo3 evaluates Atari agents, since a greedy policy can
    stall (e.g. never press FIRE after a lost life). A game is cut at 108k frames (27k agent steps).
    """
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    returns = []
    for ep in range(eval_episodes):
        env = VecFrameStack(make_atari_env(env_id, n_envs=1, seed=seed + 100_000 + ep,
                                           wrapper_kwargs=dict(terminal_on_life_loss=False)), n_stack=4)
        obs, total = env.reset(), 0.0
        for _ in range(max_frames // 4):
            action, _ = model.predict(obs, deterministic=False)
            obs, _, dones, infos = env.step(action)
            if "episode" in infos[0]:
                total = float(infos[0]["episode"]["r"])
                break
            if dones[0]:  # game over without Monitor's record cannot happen; kept as a guard
                break
        returns.append(total)
        env.close()
    return returns


# --------------------------------------------------------------------------------------------------
# The parent: runs the matrix, writes CSV, PNG and markdown.
# --------------------------------------------------------------------------------------------------


def child_config(side: str, algo: str, env_id: str, seed: int, total_timesteps: int, eval_episodes: int,
                 algo_args: str = "", sb3_config: str = "zoo", sb3_args: str = "", sb3_threads: int = -1) -> dict:
    """The JSON object a child run is handed: side "ours" (algorithms/<algo>.py, with algo_args, a shell-quoted
    string, split here) or "sb3" (the Stable-Baselines3 counterpart of <algo>, with sb3_config "zoo" or
    "default", sb3_args a JSON object of extra keyword arguments, sb3_threads torch threads, -1: torch's default)."""
    config = {"side": side, "algo": algo, "env_id": env_id, "seed": int(seed), "total_timesteps": int(total_timesteps),
              "eval_episodes": int(eval_episodes)}
    if side == "ours":
        config["algo_args"] = shlex.split(algo_args)
    else:
        extra = json.loads(sb3_args) if sb3_args else {}
        if not isinstance(extra, dict):
            raise ValueError(f"not a JSON object: {sb3_args}")
        config.update(sb3_config=sb3_config, sb3_args=extra, sb3_threads=int(sb3_threads))
    return config


def run_child(config: dict) -> dict:
    """Run the training a child_config describes (in this process) and return its result."""
    config = dict(config)
    side = config.pop("side")
    return run_ours_child(**config) if side == "ours" else run_sb3_child(**config)


def launch(config: dict, log, core: int | None = None) -> dict:
    """Run one child process (one training run, described by a child_config) and return its JSON result;
    `core`: pin it to that CPU."""
    pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
    with tempfile.TemporaryDirectory() as tmp:  # each run writes its runs/ into a scratch directory
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(config)],
                              cwd=tmp, capture_output=True, text=True, preexec_fn=pin)
    log.write(proc.stdout + proc.stderr)
    log.flush()
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({json.dumps(config)}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def band_plot(ax, curves: list[np.ndarray], x_index: int, label: str, grid: np.ndarray):
    """Mean and min-max band over seeds of the smoothed return, interpolated onto a common grid.

    Each seed's curve stops at its last episode: nothing is extrapolated past the end of a run.
    """
    ys = []
    for c in curves:
        if len(c) == 0:
            continue
        r = c[:, 2]
        k = max(1, min(20, len(r) // 5))
        smooth = np.convolve(r, np.ones(k) / k, mode="valid")  # moving average over k episodes
        xs = c[k - 1 :, x_index]
        ys.append(np.interp(grid, xs, smooth, left=np.nan, right=np.nan))
    if not ys:
        return
    ys = np.array(ys)
    keep = ~np.all(np.isnan(ys), axis=0)  # grid points that at least one seed reached
    grid, ys = grid[keep], ys[:, keep]
    mean = np.nanmean(ys, axis=0)
    line = ax.plot(grid, mean, label=label)[0]
    ax.fill_between(grid, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), color=line.get_color(), alpha=0.2)


def plot_curves(path: Path, curves: list[tuple], sides: list[str], labels: dict, seeds: list[int],
                total_timesteps: int, title: str) -> None:
    """Return against environment steps (left) and against wall-clock seconds of training (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    max_time = max((c[3] for c in curves), default=1.0)
    for side in sides:
        per_seed = [np.array([c[2:] for c in curves if c[0] == side and c[1] == s]).reshape(-1, 3) for s in seeds]
        band_plot(axes[0], per_seed, 0, labels[side], np.linspace(0, total_timesteps, 400))
        band_plot(axes[1], per_seed, 1, labels[side], np.linspace(0, max_time, 400))
    axes[0].set_xlabel("environment steps")
    axes[1].set_xlabel("wall-clock seconds of training")
    for ax in axes:
        ax.set_ylabel("training episode return (moving average)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(rows: list[dict]) -> dict:
    evals = np.array([r["eval_mean"] for r in rows])
    times = np.array([r["train_time"] for r in rows])
    sps = np.array([r["sps"] for r in rows])
    return {"eval_mean": evals.mean(), "eval_std": evals.std(), "time_mean": times.mean(), "time_std": times.std(),
            "sps_mean": sps.mean(), "n": len(rows), "steps": rows[0]["steps"]}


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used to read back the command recorded in a {tag}.md, see --table-only)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", required=True, help="file stem in algorithms/, e.g. ppo")
    parser.add_argument("--env-id", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--total-timesteps", type=int, required=True)
    parser.add_argument("--algo-args", default="", help="extra arguments for our file, one shell-quoted string")
    parser.add_argument("--compare-sb3", action="store_true", help="also run the matching SB3 algorithm")
    parser.add_argument("--compare-args", default=None,
                        help="also run our file with these arguments added (e.g. --compare-args=--no-nan-check), alternating with the plain runs")
    parser.add_argument("--sb3-config", choices=["zoo", "default"], default="zoo",
                        help="SB3 hyperparameters: rl-zoo3's tuned ones for the environment, or SB3's defaults")
    parser.add_argument("--sb3-args", default="", help="JSON dict of extra SB3 keyword arguments")
    parser.add_argument("--sb3-threads", type=int, default=-1, help="torch threads for SB3 (-1: torch's default, as rl-zoo3)")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--tag", default=None, help="output file prefix (default: {algo}_{env_id})")
    parser.add_argument("--out", default=str(ROOT / "benchmark_results"))
    parser.add_argument("--table-only", metavar="TAG", default=None, help=TABLE_ONLY_HELP)
    return parser


TABLE_ONLY_HELP = ("rebuild {out}/TAG.md and TAG.png from TAG.csv and TAG_curves.csv there, running "
                   "nothing; the command and the Machine/Date line are read back from the existing TAG.md "
                   "(without one, give the original arguments too: the page then says that the runs' machine "
                   "and date were not recorded)")


def table_only_request(argv: list[str], parser: argparse.ArgumentParser, script: str):
    """For `--table-only TAG [--out DIR] [original arguments]`: (args, rows, curves, command, machine line),
    with args the original command line parsed again (read back from {out}/TAG.md, or given) and rows and
    curves read from TAG.csv and TAG_curves.csv. `script` is how the recorded command starts
    ("python tools/benchmark.py")."""
    import pandas as pd

    pre = argparse.ArgumentParser(prog=parser.prog, add_help=False)
    pre.add_argument("--table-only", required=True, metavar="TAG")
    pre.add_argument("--out", default=str(ROOT / "benchmark_results"))
    known, rest = pre.parse_known_args(argv)
    out, tag = Path(known.out), known.table_only
    paths = [out / f"{tag}.csv", out / f"{tag}_curves.csv"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"--table-only {tag}: no {' or '.join(missing)}")
    recorded = recorded_run(out / f"{tag}.md", script)
    if recorded is not None and rest:
        parser.error(f"--table-only {tag}: the command is read back from {out / f'{tag}.md'}; give only "
                     "--table-only TAG and --out")
    if recorded is None and not rest:
        parser.error(f"--table-only {tag}: no '{script}' command recorded in {out / f'{tag}.md'}; give the "
                     "original arguments after --table-only TAG")
    if recorded is not None:
        command, machine = recorded
        a = parser.parse_args(shlex.split(command)[2:])
    else:
        a = parser.parse_args(rest)
        command = f"{script} " + " ".join(shlex.quote(x) for x in rest)
        machine = "Machine and date of the runs: not recorded (their page was missing)."
    a.out, a.tag = str(out), tag
    rows = pd.read_csv(paths[0], dtype={"side": str, "label": str}).to_dict("records")
    curves = list(pd.read_csv(paths[1], dtype={"side": str, "label": str}).itertuples(index=False, name=None))
    machine += (f"\nTable rebuilt from {tag}.csv on {time.strftime('%Y-%m-%d %H:%M')}, nothing rerun "
                "(--table-only).")
    return a, rows, curves, command, machine


def recorded_run(md_path: Path, script: str) -> tuple[str, str] | None:
    """(command, Machine/Date line) as a {tag}.md of this tool or tools/compare.py records them, or None."""
    try:
        text = md_path.read_text()
    except OSError:
        return None
    lines = text.splitlines()
    commands = [line[len("Command: `"):-1] for line in lines
                if line.startswith("Command: `") and line.endswith("`")]
    machines = [line for line in lines if line.startswith(("Machine: ", "Machine and date of the runs: "))]
    if len(commands) != 1 or not commands[0].startswith(f"{script} ") or len(machines) != 1:
        return None
    return commands[0], machines[0]


def machine_line(a: argparse.Namespace) -> str:
    threads = "torch threads: ours from the file's --torch-threads" + (
        f", SB3 {a.sb3_threads if a.sb3_threads > 0 else 'default'}" if a.compare_sb3 else "")
    return f"Machine: {os.cpu_count()} cores; {threads}. Date: {time.strftime('%Y-%m-%d %H:%M')}."


def run_sides(a: argparse.Namespace) -> list[str]:
    return ["ours"] + (["variant"] if a.compare_args is not None else []) + (["sb3"] if a.compare_sb3 else [])


def run_labels(a: argparse.Namespace) -> dict[str, str]:
    return {"ours": f"onefile-rl {a.algo}.py", "variant": f"onefile-rl {a.algo}.py {a.compare_args}",
            "sb3": f"SB3 {SB3_CLASS.get(a.algo, a.algo.upper())} ({a.sb3_config})"}


def table_lines(a: argparse.Namespace, rows: list[dict], command: str, machine: str) -> list[str]:
    """The markdown page: mean ± std over seeds, and with >= 5 seeds on every side the IQM [95% CI] column and
    the probability that ours improves on each other side (tools/aggregate.py)."""
    from aggregate import seed_statistics

    sides, labels = run_sides(a), run_labels(a)
    extra = seed_statistics({side: np.array([r["eval_mean"] for r in rows if r["side"] == side])
                             for side in sides})
    iqm_head, iqm_rule = (" final eval return IQM [95% CI] |", "---|") if extra else ("", "")
    lines = [f"### {a.algo}.py on {a.env_id}", "", f"Command: `{command}`", "", machine,
             f"Our arguments: `{a.algo_args or '(file defaults)'}`. "
             + (f"SB3: {a.sb3_config} hyperparameters" + (" (rl-zoo3 2.9.2)" if a.sb3_config == "zoo" else "")
                + (f", plus `{a.sb3_args}`" if a.sb3_args else "") + "." if a.compare_sb3 else ""), "",
             "| implementation | seeds | steps | final eval return (mean ± std over seeds) |" + iqm_head
             + " train wall time (s) | SPS |",
             "|---|---|---|---|" + iqm_rule + "---|---|"]
    summary = {}
    for side in sides:
        s = summarise([r for r in rows if r["side"] == side])
        summary[side] = s
        lines.append(f"| {labels[side]} | {s['n']} | {s['steps']:,} | {s['eval_mean']:.1f} ± {s['eval_std']:.1f} | "
                     + (f"{extra['iqm'][side]} | " if extra else "")
                     + f"{s['time_mean']:.1f} ± {s['time_std']:.1f} | {s['sps_mean']:.0f} |")
    if a.compare_args is not None:
        o, v = summary["ours"], summary["variant"]
        lines += ["", f"Ratios (with `{a.compare_args}` / without): wall time {v['time_mean'] / o['time_mean']:.3f}, "
                      f"SPS {v['sps_mean'] / o['sps_mean']:.3f}."]
    if a.compare_sb3:
        o, b = summary["ours"], summary["sb3"]
        lines += ["", f"Ratios (ours / SB3): wall time {o['time_mean'] / b['time_mean']:.2f}, "
                      f"SPS {o['sps_mean'] / b['sps_mean']:.2f}, eval return difference "
                      f"{o['eval_mean'] - b['eval_mean']:+.1f}."]
    if extra:
        short = {"variant": f"`{a.compare_args}`", "sb3": "SB3"}
        lines += ["", "Probability of improvement of the final eval return [95% CI]: "
                  + "; ".join(f"P(ours > {short[side]}) = {text}"
                              for side, text in extra["improvement"].items())
                  + ". " + extra["note"]]
    tag = a.tag or f"{a.algo}_{a.env_id}"
    lines += ["", f"Per-run numbers: [{tag}.csv]({tag}.csv); curves: [{tag}.png]({tag}.png).", ""]
    return lines


def write_report(a: argparse.Namespace, rows: list[dict], curves: list[tuple], command: str,
                 machine: str) -> None:
    """{tag}.png and {tag}.md into --out, and the table on stdout."""
    out, tag = Path(a.out), a.tag or f"{a.algo}_{a.env_id}"
    plot_curves(out / f"{tag}.png", curves, run_sides(a), run_labels(a), a.seeds, a.total_timesteps,
                f"{a.env_id}: mean and min-max over seeds {a.seeds}")
    lines = table_lines(a, rows, command, machine)
    (out / f"{tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:  # a child process started by launch(): one training, its JSON result last
        print(json.dumps(run_child(json.loads(sys.argv[2]))))
        return
    parser = build_parser()
    if "--table-only" in sys.argv[1:] or any(x.startswith("--table-only=") for x in sys.argv[1:]):
        write_report(*table_only_request(sys.argv[1:], parser, "python tools/benchmark.py"))
        return
    a = parser.parse_args()
    if not (ROOT / "algorithms" / f"{a.algo}.py").is_file():
        parser.error(f"no file algorithms/{a.algo}.py")
    try:
        child_config("ours", a.algo, a.env_id, 0, a.total_timesteps, a.eval_episodes, a.algo_args)
        child_config("sb3", a.algo, a.env_id, 0, a.total_timesteps, a.eval_episodes, sb3_args=a.sb3_args)
    except ValueError as e:  # shlex's "No closing quotation" and json's decoding errors are ValueErrors
        parser.error(f"--algo-args must be a shell-quoted string and --sb3-args a JSON object ({e})")
    if a.compare_sb3 and a.algo not in SB3_CLASS:
        parser.error(f"no Stable-Baselines3 counterpart recorded for {a.algo}")
    if a.compare_sb3 and a.sb3_config == "zoo" and zoo_key(a.algo, a.env_id) not in SB3_ZOO:
        parser.error(f"no rl-zoo3 configuration recorded for {a.algo} on {a.env_id}; use --sb3-config default")
    tag = a.tag or f"{a.algo}_{a.env_id}"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python tools/benchmark.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])

    rows, curves = [], []
    log = open(out / f"{tag}.log", "w")
    sides = run_sides(a)
    for seed in a.seeds:
        for side in sides:
            algo_args = f"{a.algo_args} {a.compare_args}" if side == "variant" else a.algo_args
            res = launch(child_config("ours" if side == "variant" else side, a.algo, a.env_id, seed, a.total_timesteps,
                                      a.eval_episodes, algo_args, a.sb3_config, a.sb3_args, a.sb3_threads), log)
            row = {"side": side, "seed": seed, "steps": res["steps"], "train_time": res["train_time"],
                   "sps": res["steps"] / res["train_time"], "eval_mean": float(np.mean(res["eval_returns"])),
                   "eval_std": float(np.std(res["eval_returns"]))}
            rows.append(row)
            curves += [(side, seed, *p) for p in res["curve"]]
            print(f"{tag} {side:>7} seed {seed}: eval {row['eval_mean']:7.1f}  train {row['train_time']:6.1f}s  "
                  f"SPS {row['sps']:7.0f}", flush=True)
    log.close()

    import pandas as pd

    pd.DataFrame(rows).to_csv(out / f"{tag}.csv", index=False)
    pd.DataFrame(curves, columns=["side", "seed", "step", "seconds", "return"]).to_csv(out / f"{tag}_curves.csv", index=False)
    write_report(a, rows, curves, command, machine_line(a))


if __name__ == "__main__":
    main()
