"""Data parallelism over several processes on the CPU (gloo), started the way a user starts it:
``torchrun --nproc_per_node 2 -m tunelab.cli train ...``.

Two processes with batch B each must end where one process with batch 2B ends on the same data
(each global batch is cut into one slice per process), and a two-process run killed with SIGKILL
and resumed must end where the uninterrupted one does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cli_args, write_sentiment_csv
from tunelab import cli, runs
from tunelab.launch import free_port


def torchrun(args: list[str], processes: int = 2) -> list[str]:
    """The command line of the README's multi-process route, on a port no other test uses."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "tunelab.cli", "train", *args]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def config(model_dir: Path, data: Path, run_dir: Path, batch_size: int) -> dict:
    return {
        "model": {"name": str(model_dir)},
        "data": {"name": str(data), "max_train_examples": 40},
        "task": {"classifier_dropout": 0.0, "max_length": 32},
        # LoRA, not full: Adam turns the noise of a gradient that is zero in exact arithmetic (a
        # key bias's) into full-size steps, so full fine-tuning's key biases differ by float noise.
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {"epochs": 3, "batch_size": batch_size, "lr": 1e-2, "warmup_ratio": 0.0, "eval_every_steps": 1,
                  "select_metric": "loss"},
        "eval": {"batch_size": 8},
        "output": {"dir": str(run_dir)},
    }


def snapshot_step(progress: Path) -> int:
    """The step of the latest snapshot, 0 before the first (it is swapped in whole, by rename)."""
    try:
        return json.loads(progress.read_text()).get("step", 0)
    except (OSError, ValueError):
        return 0


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return runs.load_tensors(run_dir / runs.CHECKPOINT / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module")
def two_process_run(tiny_bert_no_dropout_dir, tmp_path_factory):
    """One uninterrupted two-process run, batch 4 on each process."""
    folder = tmp_path_factory.mktemp("multiprocess")
    data = write_sentiment_csv(folder / "reviews.csv")
    run_dir = folder / "two"
    cfg = config(tiny_bert_no_dropout_dir, data, run_dir, batch_size=4)
    done = subprocess.run(torchrun(cli_args(cfg)), env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return cfg, run_dir


def test_two_processes_end_where_one_process_with_the_doubled_batch_ends(two_process_run, tmp_path):
    cfg, two = two_process_run
    summary = json.loads((two / "summary.json").read_text())
    assert summary["num_processes"] == 2, "torchrun started two ranks, but the run trained alone"
    one_cfg = dict(cfg, train={**cfg["train"], "batch_size": 8}, output={"dir": str(tmp_path / "one")})
    assert cli.main(["train", *cli_args(one_cfg)]) == 0
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert one["num_processes"] == 1
    assert summary["steps"] == one["steps"] == 15  # 40 examples, 8 a step, 3 epochs
    assert summary["best_step"] == one["best_step"]
    assert_same_weights(weights(two), weights(tmp_path / "one"), atol=1e-5)
    assert all(t.abs().max() > 0 for n, t in weights(two).items() if "lora_B" in n), "training left LoRA at zero"
    # Only the main process writes: one validation record per step, not one per process.
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "validation"] == list(range(1, 16))
    assert summary["test"]["accuracy"] == pytest.approx(one["test"]["accuracy"])
    # The epoch's train loss counts both processes' halves of every batch.
    epochs = [[r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
               if r["split"] == "train_epoch"] for d in (two, tmp_path / "one")]
    assert epochs[0] == pytest.approx(epochs[1], abs=1e-5) and len(epochs[0]) == 3


def test_a_killed_two_process_run_resumes_to_the_same_weights(two_process_run, tmp_path):
    cfg, straight = two_process_run
    run_dir = tmp_path / "killed"
    killed_cfg = dict(cfg, output={"dir": str(run_dir)})
    proc = subprocess.Popen(torchrun(cli_args(killed_cfg)), env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    progress = run_dir / runs.STATE / "progress.json"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if snapshot_step(progress) >= 3:
            # torchrun without warning; its ranks (each in a session of its own) die with it.
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    time.sleep(1)  # a rank that outlived torchrun would write on
    assert not (run_dir / "summary.json").exists(), "the run finished before it was killed, or a rank outlived torchrun"
    stopped_at = json.loads(progress.read_text())["step"]
    assert 3 <= stopped_at < 15

    done = subprocess.run(torchrun(["--resume", str(run_dir)]), env=environment(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed, uninterrupted = (json.loads((d / "summary.json").read_text()) for d in (run_dir, straight))
    assert resumed["num_processes"] == 2 and resumed["steps"] == uninterrupted["steps"]
    assert resumed["best_step"] == uninterrupted["best_step"]
    assert_same_weights(weights(run_dir), weights(straight), atol=1e-6)


def test_compare_hands_each_run_to_the_launcher(tiny_bert_no_dropout_dir, tmp_path):
    data = write_sentiment_csv(tmp_path / "reviews.csv")
    cfg = config(tiny_bert_no_dropout_dir, data, tmp_path / "unused", batch_size=4)
    cfg["train"] = {**cfg["train"], "epochs": 1, "eval_every_steps": None}
    cfg.pop("output"), cfg.pop("method")
    cfg["methods"] = {"lora": {"method": {"name": "lora", "r": 4, "alpha": 8}}}
    (tmp_path / "compare.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    launcher = f"{sys.executable} -m torch.distributed.run --nproc_per_node 2 --master_port {free_port()}"
    code = cli.main(["compare", "--config", str(tmp_path / "compare.yaml"), "--output", str(tmp_path / "cmp"),
                     "--launcher", launcher, "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "cmp" / "lora" / "summary.json").read_text())
    assert summary["num_processes"] == 2


def test_a_launcher_is_the_words_before_dash_m_and_does_not_change_what_a_sweep_is():
    from tunelab.launch import tunelab_command
    from tunelab.sweeps import config_text
    from tunelab.sweeps.space import SweepSettings, build_space

    given = "torchrun --nproc_per_node 2 --master_port 29511"
    assert tunelab_command(given) == [*given.split(), "-m", "tunelab.cli"]
    # No port named: two runs at once (a sweep's workers) must not meet on the default one.
    a = tunelab_command("torchrun --nproc_per_node 2")
    assert (a[:3] == ["torchrun", "--nproc_per_node", "2"] and a[3] == "--master_port"
            and a[-2:] == ["-m", "tunelab.cli"])
    accelerate = tunelab_command("accelerate launch --num_processes 2")
    assert (accelerate[:3] == ["accelerate", "launch", "--main_process_port"]
            and accelerate[4:6] == ["--num_processes", "2"])
    assert tunelab_command(None) == [sys.executable, "-m", "tunelab.cli"]
    base = {"method": {"name": "lora"}}
    alone, launched = (build_space(dict(base), SweepSettings(search={"train.lr": [1e-3, 1e-2]}, launcher=launcher))
                       for launcher in (None, "torchrun --nproc_per_node 2"))
    # How trials run is not what the sweep is: the study accepts the same sweep with another launcher.
    assert config_text(alone) == config_text(launched)


def test_two_processes_train_dpo_like_one_with_the_doubled_batch(tiny_causal_dir, tmp_path):
    """A causal LM under DDP: its forward must go through the wrapper, or no gradient is averaged."""
    from conftest import write_jsonl

    rows = [{"prompt": "the film was", "chosen": "good fun", "rejected": "dull and boring"},
            {"prompt": "a story", "chosen": "superb", "rejected": "awful"},
            {"prompt": "the actor is", "chosen": "great", "rejected": "weak"},
            {"prompt": "the plot", "chosen": "was fine", "rejected": "was poor and dull"}]
    data = tmp_path / "pairs"
    data.mkdir()
    for split, n in (("train", 6), ("validation", 2), ("test", 2)):
        write_jsonl(data / f"{split}.jsonl", rows * n)  # 24 training pairs: 3 full steps of 8
    cfg = {"model": {"name": str(tiny_causal_dir)}, "data": {"name": str(data)},
           "task": {"name": "preference", "max_length": 16, "max_prompt_length": 6},
           "method": {"name": "lora", "r": 2, "alpha": 4},
           "train": {"epochs": 2, "batch_size": 4, "lr": 5e-2, "warmup_ratio": 0.0},
           "eval": {"batch_size": 4}, "output": {"dir": str(tmp_path / "two")}}
    done = subprocess.run(torchrun(cli_args(cfg)), env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one_cfg = dict(cfg, train={**cfg["train"], "batch_size": 8}, output={"dir": str(tmp_path / "one")})
    assert cli.main(["train", *cli_args(one_cfg)]) == 0
    two, one = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("two", "one"))
    assert two["num_processes"] == 2 and two["steps"] == one["steps"] == 6
    assert_same_weights(weights(tmp_path / "two"), weights(tmp_path / "one"), atol=1e-5)
    assert two["test"]["reward_margin"] == pytest.approx(one["test"]["reward_margin"], abs=1e-5)


def test_a_token_mean_loss_over_two_processes_is_the_global_batch_token_mean(tiny_causal_dir, tmp_path):
    """Instruct with the loss on whole sequences: the two slices of a batch hold different numbers
    of tokens, so a mean of the two processes' token means would not be one process's mean."""
    import random

    from conftest import write_jsonl

    rng = random.Random(0)
    data = tmp_path / "reviews"
    data.mkdir()
    for split, n in (("train", 24), ("validation", 8), ("test", 8)):
        write_jsonl(data / f"{split}.jsonl", [
            {"text": " ".join(rng.sample(["the", "movie", "plot", "was", "very", "film", "story"], rng.randint(1, 6))
                              + [rng.choice(["good", "bad"])]), "label": rng.choice(["positive", "negative"])}
            for _ in range(n)])
    cfg = {"model": {"name": str(tiny_causal_dir)}, "data": {"name": str(data)},
           "task": {"name": "instruct", "template": "Review : {text} Sentiment :", "max_length": 64,
                    "loss_on": "sequence"},
           "method": {"name": "lora", "r": 2, "alpha": 4, "dropout": 0.0},
           "train": {"epochs": 2, "batch_size": 4, "lr": 5e-2, "warmup_ratio": 0.0, "select_metric": "loss"},
           "eval": {"batch_size": 4}, "output": {"dir": str(tmp_path / "two")}}
    done = subprocess.run(torchrun(cli_args(cfg)), env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one_cfg = dict(cfg, train={**cfg["train"], "batch_size": 8}, output={"dir": str(tmp_path / "one")})
    assert cli.main(["train", *cli_args(one_cfg)]) == 0
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["num_processes"] == 2
    assert_same_weights(weights(tmp_path / "two"), weights(tmp_path / "one"), atol=1e-5)
    # Generated answers come from both processes, each once, in the test split's order.
    lines = [[json.loads(x) for x in (tmp_path / d / "predictions.jsonl").read_text().splitlines()]
             for d in ("two", "one")]
    assert [r["id"] for r in lines[0]] == list(range(8))
    assert [r["output"] for r in lines[0]] == [r["output"] for r in lines[1]]
