"""``stm-rl evaluate``: play games with a saved agent and report its raw Pong scores.

Given a run directory, the checkpoint is ``--checkpoint latest|best|final`` (default: best if present, else
final, else latest); a ``.pt`` path is used as is. The environment is the one the agent was trained with
(frame skip, preprocessing, sticky actions), unclipped, unless ``--frame-skip`` overrides the skip to test
transfer. Scores go to the terminal and to a JSON file; ``--video DIR`` records the games as MP4 files.
Every flag and both output paths are checked before a game is played (exit 2 with a one-line error).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

import gymnasium as gym
import torch
from tqdm import tqdm

from envs import EnvConfig, make_env
from stm_rl.a3c.checkpoint import checkpoint_paths, load_agent_from_checkpoint
from stm_rl.a3c.limits import MAX_FRAME_SKIP, MAX_SEED
from stm_rl.a3c.play import GameResult, play_game
from stm_rl.config_cli import parse_count
from stm_rl.run_dir import Checkpoint, RunDir, StmRlError, check_can_write, describe_os_error, read_json, write_json_atomic
from stm_rl import fastpath

CHECKPOINT_PREFERENCE = (Checkpoint.BEST, Checkpoint.FINAL, Checkpoint.LATEST)


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate a saved agent."""

    target: Path
    """A run directory or a checkpoint file."""
    checkpoint: Optional[str] = None
    """latest, best or final (run directories only); None picks the first of best, final, latest."""
    episodes: int = 10
    sample: bool = False
    """Sample actions from the policy instead of taking the most likely one."""
    frame_skip: Optional[int] = None
    """Override the trained frame skip (transfer test)."""
    seed: int = 0
    max_frames: Optional[int] = None
    """Truncate each game after this many emulator frames."""
    output: Optional[Path] = None
    video: Optional[Path] = None
    """Folder for one MP4 per recorded game."""
    video_episodes: Optional[int] = None
    """Record only the first N games (None: all)."""
    progress: bool = True


# ---------------------------------------------------------------- command line
def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="play games with a saved agent and report its scores",
        description="Load a saved agent from a run directory or a checkpoint file and play Pong with it.")
    parser.add_argument("target", type=Path, metavar="RUN_DIR_OR_CHECKPOINT")
    parser.add_argument("--checkpoint", choices=CHECKPOINT_PREFERENCE,
                        help="which checkpoint of a run directory (default: best, else final, else latest)")
    parser.add_argument("--episodes", type=int, default=10, help="games to play (default: 10)")
    parser.add_argument("--sample", action="store_true", help="sample actions from the policy (default: greedy)")
    parser.add_argument("--frame-skip", type=int, help="play at this frame skip instead of the trained one")
    parser.add_argument("--seed", type=parse_count, default=0,
                        help="seed of the environment and of sampling (default: 0)")
    parser.add_argument("--max-frames", type=parse_count, metavar="FRAMES",
                        help="truncate each game after this many emulator frames (default: the ALE cap)")
    parser.add_argument("--output", type=Path,
                        help="JSON file of the scores (default: <run_dir>/eval-<checkpoint>-skip<N>.json)")
    parser.add_argument("--video", type=Path, metavar="DIR", help="record the games as MP4 files in DIR")
    parser.add_argument("--video-episodes", type=int, metavar="N",
                        help="with --video: record only the first N games (default: all)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar over the games (default: on)")
    parser.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    if args.episodes < 1:
        raise StmRlError(f"--episodes must be >= 1, got {args.episodes}")
    if not 0 <= args.seed <= MAX_SEED:
        raise StmRlError(f"--seed must be in 0..{MAX_SEED:,}, got {args.seed}")
    if args.frame_skip is not None and not 0 <= args.frame_skip <= MAX_FRAME_SKIP:
        raise StmRlError(f"--frame-skip must be in 0..{MAX_FRAME_SKIP} (the paper uses 0, 4, 16, 32), "
                         f"got {args.frame_skip}")
    if args.max_frames is not None and args.max_frames < 1:
        raise StmRlError(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.video_episodes is not None:
        if args.video is None:
            raise StmRlError("--video-episodes needs --video DIR")
        if args.video_episodes < 1:
            raise StmRlError(f"--video-episodes must be >= 1 (leave it out to record every game), "
                             f"got {args.video_episodes}")
    if args.output is not None:
        check_can_write(args.output, "--output")
    if args.video is not None:
        check_can_write(args.video, "--video", directory=True)
    return EvalOptions(target=args.target, checkpoint=args.checkpoint, episodes=args.episodes, sample=args.sample,
                       frame_skip=args.frame_skip, seed=args.seed, max_frames=args.max_frames, output=args.output,
                       video=args.video, video_episodes=args.video_episodes, progress=args.progress)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    report = evaluate(options)
    scores = report["scores"]
    for index, game in enumerate(report["games"], start=1):
        print(f"game {index}: score {game['score']:+.0f} ({game['length']} steps, {game['frames']} frames"
              + (", truncated)" if game["truncated"] else ")"))
    print(f"{report['agent']} agent, {report['checkpoint_name']} checkpoint, frame skip {report['frame_skip']} "
          f"(trained at {report['trained_frame_skip']}), {'sampled' if options.sample else 'greedy'}: "
          f"mean score {report['mean']:+.2f} +- {report['std']:.2f} (std) over {len(scores)} games")
    print(f"scores written to {report['output']}" + (f"; videos in {options.video}" if options.video else ""))
    return 0


# ---------------------------------------------------------------- evaluation
def resolve_checkpoint(target: Path, name: Optional[str]) -> Path:
    """The checkpoint file that ``target`` (run directory or file) and ``--checkpoint`` designate."""
    target = Path(target)
    if target.is_file():
        if name is not None:
            raise StmRlError("--checkpoint applies to a run directory; a checkpoint file was given")
        return target
    if not target.is_dir():
        raise StmRlError(f"no run directory or checkpoint file at {target}")
    paths = checkpoint_paths(target)
    if name is not None:
        if not paths[name].is_file():
            raise StmRlError(f"{target} has no {name} checkpoint ({paths[name]})")
        return paths[name]
    for candidate in CHECKPOINT_PREFERENCE:
        if paths[candidate].is_file():
            return paths[candidate]
    raise StmRlError(f"{target} has no checkpoints (looked for {', '.join(CHECKPOINT_PREFERENCE)} "
                     f"in {RunDir(target).checkpoints}); is it a training run directory?")


def evaluation_env_config(trained: EnvConfig, options: EvalOptions) -> EnvConfig:
    """The trained environment, with raw rewards and the evaluation's seed, skip and frame cap."""
    changes: dict[str, Any] = {"seed": options.seed, "clip_reward": False}
    if options.frame_skip is not None:
        changes["frame_skip"] = options.frame_skip
    if options.max_frames is not None:
        changes["max_episode_frames"] = min(options.max_frames, trained.max_episode_frames)
    return dataclasses.replace(trained, **changes)


def default_output(checkpoint: Path, frame_skip: int) -> Path:
    """``<run_dir>/eval-<checkpoint>-skip<N>.json`` (the run directory holds ``checkpoints/``)."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == RunDir.CHECKPOINTS else checkpoint.parent
    return RunDir(run_dir).evaluation_report(checkpoint.stem, frame_skip)


def evaluate(options: EvalOptions) -> dict[str, Any]:
    """Play the games and write the JSON report; returns the report."""
    fastpath.enable(num_threads=1)
    checkpoint = resolve_checkpoint(options.target, options.checkpoint)
    model, config, record = load_agent_from_checkpoint(checkpoint)
    model.eval()
    env_config = evaluation_env_config(config.env, options)
    output = check_can_write(options.output or default_output(checkpoint, env_config.frame_skip), "--output")
    env = make_recording_env(env_config, options) if options.video else make_env(env_config)
    try:
        model.check_action_count(env.action_space.n)
    except ValueError as error:
        env.close()
        raise StmRlError(f"{checkpoint}: {error} ({env_config.game!r})") from None
    generator = torch.Generator().manual_seed(options.seed)
    games: list[GameResult] = []
    try:
        bar = tqdm(range(options.episodes), unit="game", desc=f"evaluate {checkpoint.stem}",
                   disable=not options.progress)
        for index in bar:
            games.append(play_game(model, env, options.sample, generator,
                                   seed=options.seed if index == 0 else None))
            bar.set_postfix_str(f"last {games[-1].score:+.0f} | mean {_mean(games):+.2f}")
        bar.close()
    finally:
        env.close()
    scores = [game.score for game in games]
    report = {"checkpoint": str(checkpoint), "checkpoint_name": checkpoint.stem, "agent": config.agent.agent,
              "encoder": config.agent.encoder, "precision": config.agent.precision, "trained_frame_skip": config.env.frame_skip,
              "frame_skip": env_config.frame_skip, "greedy": not options.sample, "seed": options.seed,
              "max_frames": options.max_frames, "trained_frames": record["counters"]["frames"],
              "trained_games": record["counters"]["games"], "scores": scores, "mean": _mean(games),
              "std": statistics.pstdev(scores) if scores else math.nan,
              "games": [dataclasses.asdict(game) for game in games], "output": str(output)}
    try:
        write_json_atomic(output, report)
    except OSError as error:
        raise StmRlError(f"could not write --output {output} ({describe_os_error(error)}); "
                         f"the scores were {scores}") from None
    return report


def final_evaluation_path(run_dir: Path, frame_skip: int) -> Path:
    """Where :func:`evaluate_final_agent` (and ``stm-rl evaluate RUN --checkpoint final``) write the report."""
    return default_output(RunDir(run_dir).checkpoint(Checkpoint.FINAL), frame_skip)


class FinalEvaluation(NamedTuple):
    """What a run's final greedy report says: its scores and the frames its weights had trained (None in reports
    written before that was recorded)."""
    scores: tuple[float, ...]
    trained_frames: Optional[int]


def final_evaluation_report(run_dir: Path, frame_skip: int) -> Optional[FinalEvaluation]:
    """The run's greedy final evaluation (``eval-final-skip<N>.json``), None if it has none; a file that is not
    such a report is a one-line StmRlError."""
    path = final_evaluation_path(run_dir, frame_skip)
    if not path.is_file():
        return None
    report = read_json(path)
    try:
        if not report["greedy"]:
            return None
        return FinalEvaluation(tuple(float(score) for score in report["scores"]), report.get("trained_frames"))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise StmRlError(f"{path} is not an evaluation report (stm-rl evaluate writes them)") from None


def final_greedy_scores(run_dir: Path, frame_skip: int) -> Optional[tuple[float, ...]]:
    """The scores of the run's greedy final evaluation (``eval-final-skip<N>.json``), None if it has none; a file
    that is not such a report is a one-line StmRlError."""
    report = final_evaluation_report(run_dir, frame_skip)
    return None if report is None else report.scores


def has_final_evaluation(run_dir: Path, frame_skip: int, games: int) -> bool:
    """The run has a greedy report of its final weights with at least ``games`` games: of the weights it has now,
    so a run extended past its budget (a larger ``--agent-steps``) is evaluated again."""
    try:
        report = final_evaluation_report(run_dir, frame_skip)
    except StmRlError:
        return False
    if report is None or len(report.scores) < games:
        return False
    trained = RunDir(run_dir).trained_frames()
    return trained is None or report.trained_frames is None or report.trained_frames == trained


def evaluate_final_agent(run_dir: Path, frame_skip: int, games: int) -> Optional[dict[str, Any]]:
    """The evaluation a completed run owes (``RunConfig.final_eval_games``): ``games`` greedy games with its final
    weights on its own environment, seed 0; None when there is nothing to do (0 games, or done already)."""
    if games <= 0 or has_final_evaluation(run_dir, frame_skip, games):
        return None
    print(f"final evaluation: {games} greedy games with {RunDir(run_dir).checkpoint(Checkpoint.FINAL)}", flush=True)
    report = evaluate(EvalOptions(target=Path(run_dir), checkpoint=Checkpoint.FINAL, episodes=games, progress=False))
    print(f"final evaluation: mean score {report['mean']:+.2f} +- {report['std']:.2f} over {games} games "
          f"({report['output']})", flush=True)
    return report


def make_recording_env(env_config: EnvConfig, options: EvalOptions) -> gym.Env:
    """The environment wrapped in gymnasium's RecordVideo: ``<video>/eval-episode-<i>.mp4`` per game."""
    env = make_env(env_config, render_mode="rgb_array")
    limit = options.video_episodes
    return gym.wrappers.RecordVideo(env, video_folder=str(options.video), name_prefix="eval",
                                    episode_trigger=lambda episode: limit is None or episode < limit,
                                    disable_logger=True)


def _mean(games: list[GameResult]) -> float:
    return sum(game.score for game in games) / len(games) if games else math.nan
