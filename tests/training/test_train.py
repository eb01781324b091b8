"""End to end on the tiny Qwen2 model: train a few steps, save, serve the adapter from disk and S3."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.training import SMALL_SET, seed_like_rows, write_jsonl
from training.train import DEFAULT_DATA, main

# peft calls a transformers method that transformers 5 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

ROOT = Path(__file__).resolve().parents[2]
CAPTION = "a dog sitting on a couch"
REPORT_FIELDS = {
    "base_model",
    "dataset",
    "dataset_sha256",
    "duplicates_dropped",
    "examples",
    "hyperparameters",
    "steps",
    "seconds",
    "initial_loss",
    "final_loss",
    "eval_loss",
    "device",
    "dtype",
    "peak_memory_mb",
}


def train_args(data, out, base, *extra) -> list[str]:
    # 6 train + 2 eval examples, one batch per step: 30 steps at a high LoRA learning rate.
    return [
        "--data",
        str(data),
        "--out",
        str(out),
        "--base",
        str(base),
        "--device",
        "cpu",
        "--max-steps",
        "30",
        "--lr",
        "1e-2",
        "--batch-size",
        "8",
        "--eval-fraction",
        "0.25",
        "--seed",
        "0",
        *extra,
    ]


def run_main(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def run_cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "training.train", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def greedy_ids(stage, caption=CAPTION):
    return stage.forward(stage.preprocess([caption]), do_sample=False, max_new_tokens=16)[0].tolist()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_story):
    tmp = tmp_path_factory.mktemp("train")
    data = write_jsonl(tmp / "small.jsonl", SMALL_SET)
    code, stdout, stderr = run_main(train_args(data, tmp / "adapter", tiny_story))
    assert code == 0, stderr
    report = json.loads((tmp / "adapter" / "training_report.json").read_text())
    return {"out": tmp / "adapter", "data": data, "report": report, "stdout": stdout, "stderr": stderr}


@pytest.fixture(scope="module")
def base_stage(tiny_story):
    from worker.engine.story import StoryStage

    return StoryStage(model=str(tiny_story)).load()


def test_training_lowers_the_loss_and_writes_adapter_and_report(trained):
    from training.dataset import dataset_sha256

    out, report = trained["out"], trained["report"]
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert REPORT_FIELDS <= report.keys()
    print(
        f"\ntiny model, 30 steps: loss {report['initial_loss']:.3f} -> {report['final_loss']:.3f}, "
        f"eval {report['initial_eval_loss']:.3f} -> {report['eval_loss']:.3f}, {report['seconds']:.2f}s, "
        f"peak RSS {report['peak_memory_mb']} MB"
    )
    assert report["final_loss"] < report["initial_loss"] - 0.5
    assert report["steps"] == 30 and report["examples"]["train"] == 6 and report["examples"]["eval"] == 2
    assert report["eval_loss"] is not None and report["seconds"] > 0
    assert report["dataset_sha256"] == dataset_sha256(trained["data"])
    assert report["dataset"] == str(trained["data"].resolve()) and report["duplicates_dropped"] == 0
    assert report["hyperparameters"]["rank"] == 8 and report["hyperparameters"]["target_modules"] == "q_proj,v_proj"
    assert (report["device"], report["dtype"]) == ("cpu", "float32")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 32 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    # The sanity warning (6 examples < a batch of 8) and the progress bar both reach stderr.
    assert "fewer than one batch" in trained["stderr"] and "30/30" in trained["stderr"]
    assert "done: 30 steps" in trained["stdout"]


def test_adapter_is_served_by_the_story_stage_and_changes_greedy_output(trained, tiny_story, base_stage):
    import torch

    from training.collate import Collator, encode_example, pad_id
    from training.dataset import load_examples, split_eval
    from training.loop import mean_loss
    from training.run import prompt_words
    from worker.engine.story import StoryStage

    tuned = StoryStage(model=str(tiny_story), adapter=str(trained["out"])).load()
    assert greedy_ids(tuned) != greedy_ids(base_stage)
    assert isinstance(tuned([CAPTION], do_sample=False, max_new_tokens=16)[0], str)
    # The merged serving model scores the training split as the trainer measured it (final_loss):
    # the same prompt format and the same weights reach the engine.
    rows, _ = split_eval(load_examples(trained["data"]), 0.25, seed=0)
    features = [encode_example(tuned.tokenizer, e.prompt, e.story, prompt_words(e.story)) for e in rows]
    loader = torch.utils.data.DataLoader(features, batch_size=8, collate_fn=Collator(pad_id(tuned.tokenizer)))
    assert mean_loss(tuned.model, loader, torch.device("cpu")) == pytest.approx(
        trained["report"]["final_loss"], abs=1e-3
    )


def test_same_seed_same_adapter_and_push_to_s3_is_served(trained, tiny_story, base_stage, s3_env, tmp_path):
    from safetensors.torch import load_file

    from shared.storage import open_storage
    from worker.engine.story import StoryStage

    code, stdout, stderr = run_main(train_args(trained["data"], tmp_path / "again", tiny_story, "--push", s3_env))
    assert code == 0, stderr
    assert f"STORY_ADAPTER={s3_env}" in stdout
    first, second = (load_file(p / "adapter_model.safetensors") for p in (trained["out"], tmp_path / "again"))
    assert first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)

    keys = open_storage(s3_env).list()
    assert {"adapter_config.json", "adapter_model.safetensors", "training_report.json"} <= set(keys)
    served = StoryStage(model=str(tiny_story), adapter=s3_env, cache_dir=str(tmp_path / "cache")).load()
    local = StoryStage(model=str(tiny_story), adapter=str(trained["out"])).load()
    assert greedy_ids(served) == greedy_ids(local) != greedy_ids(base_stage)


def test_empty_eval_split_warns_and_reports_null(tmp_path, tiny_story, small_set):
    code, _, stderr = run_main(
        train_args(small_set, tmp_path / "out", tiny_story)[:-4] + ["--eval-fraction", "0.05", "--max-steps", "2"]
    )
    assert code == 0
    assert "eval split is empty" in stderr
    assert "only 2 optimizer step(s): the adapter will barely differ" in stderr  # said, not silently useless
    report = json.loads((tmp_path / "out" / "training_report.json").read_text())
    assert report["eval_loss"] is None and report["examples"]["eval"] == 0 and report["steps"] == 2


@pytest.mark.parametrize("name", ["bedtime.jsonl", "adventure.jsonl", "seed-like.json"])
def test_style_files_and_a_file_with_duplicates_train(tmp_path, tiny_story, name):
    """The documented style commands, on the tiny model for 2 steps; the seed-like array (200 rows,
    39 distinct) trains on its distinct rows with one warning instead of being refused."""
    if name == "seed-like.json":
        data, distinct, dropped = tmp_path / name, 39, 161
        data.write_text(json.dumps(seed_like_rows(), indent=2))
    else:
        data, distinct, dropped = DEFAULT_DATA.parent / name, None, 0
    code, stdout, stderr = run_main(
        [
            "--data",
            str(data),
            "--out",
            str(tmp_path / "out"),
            "--base",
            str(tiny_story),
            "--device",
            "cpu",
            "--max-steps",
            "2",
        ]
    )
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "training_report.json").read_text())
    assert report["dataset"] == str(data.resolve()) and report["duplicates_dropped"] == dropped
    assert report["steps"] == 2 and (tmp_path / "out" / "adapter_model.safetensors").is_file()
    total = report["examples"]["train"] + report["examples"]["eval"]
    warnings = [line for line in stderr.splitlines() if "exact duplicate" in line]
    if dropped:
        assert total == distinct
        assert warnings == [
            f"warning: {data}: dropped 161 exact duplicates (same prompt and story): "
            "item 40 (line 158) duplicates item 1 (line 2); item 41 (line 162) duplicates item 2 "
            "(line 6); item 42 (line 166) duplicates item 3 (line 10); 158 more"
        ]
    else:
        assert total >= 100 and warnings == []


def test_unknown_target_module_exits_2(tmp_path, tiny_story, small_set):
    code, _, stderr = run_main(train_args(small_set, tmp_path / "out", tiny_story, "--target-modules", "nope_proj"))
    assert code == 2 and "nope_proj" in stderr and not (tmp_path / "out").exists()


@pytest.mark.process
def test_quantize_on_cpu_is_a_clear_error_before_loading(tmp_path, small_set):
    result = run_cli(
        "--data",
        str(small_set),
        "--out",
        str(tmp_path / "out"),
        "--base",
        str(tmp_path / "no-model"),
        "--device",
        "cpu",
        "--quantize",
        "4bit",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "--quantize" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()  # the (missing) base model was never opened


@pytest.mark.process
def test_bad_dataset_exits_2_naming_the_row(tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", SMALL_SET[:2] + ['{"prompt": "a boat on a lake", "story": ""}'])
    result = run_cli("--data", str(data), "--out", str(tmp_path / "out"), "--base", str(tmp_path / "no-model"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {data}: line 3: field 'story' is empty"]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--push", "http://example.com/x"], "--push takes s3://"),
        (["--rank", "0"], "--rank must be at least 1"),
    ],
)
def test_bad_options_exit_2(tmp_path, small_set, extra, message):
    code, _, stderr = run_main(["--data", str(small_set), "--out", str(tmp_path / "out"), *extra])
    assert code == 2 and message in stderr


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--data",
        "--out",
        "--base",
        "--epochs",
        "--max-steps",
        "--lr",
        "--rank",
        "--alpha",
        "--dropout",
        "--target-modules",
        "--quantize",
        "--eval-fraction",
        "--seed",
        "--push",
        "--batch-size",
        "--words",
    ):
        assert option in text


def test_missing_base_model_exits_2(tmp_path, small_set):
    code, _, stderr = run_main(
        [
            "--data",
            str(small_set),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--batch-size",
            "4",
            "--base",
            str(tmp_path / "no-model"),
        ]
    )
    assert code == 2 and stderr.strip().splitlines() == [f"error: --base {tmp_path / 'no-model'}: no such model folder"]
