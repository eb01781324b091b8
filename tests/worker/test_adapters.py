"""LoRA adapters: local folders and s3:// prefixes (moto's S3 server), merged into the tiny Qwen2."""

from __future__ import annotations

import hashlib

import pytest
import torch

from worker.engine.adapters import AdapterError, resolve_adapter
from worker.engine.story import StoryStage
from worker.tiny_models import story as tiny_story

CAPTIONS = ["a dog running on a beach", "two cats sitting on a window sill"]
GREEDY = {"do_sample": False, "max_new_tokens": 24}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny_story.build(tmp_path_factory.mktemp("base") / "story", seed=0)


@pytest.fixture(scope="module")
def adapter_dir(base_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    # init_lora_weights=False gives B a random value: a fresh default adapter would be a no-op.
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    out = tmp_path_factory.mktemp("adapter") / "lora"
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def base_stories(base_dir):
    return StoryStage(str(base_dir))(CAPTIONS, **GREEDY)


def _has_peft_layers(model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def test_local_adapter_is_merged_and_changes_output(base_dir, adapter_dir, base_stories, tmp_path):
    stage = StoryStage(str(base_dir), adapter=str(adapter_dir), cache_dir=str(tmp_path)).load()
    assert type(stage.model).__name__ == "Qwen2ForCausalLM"  # not a PeftModel wrapper
    assert not _has_peft_layers(stage.model)
    stories = stage(CAPTIONS, **GREEDY)
    assert all(stories) and stories != base_stories


def test_merged_model_matches_unmerged_adapter(base_dir, adapter_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    stage = StoryStage(str(base_dir), adapter=str(adapter_dir), cache_dir=str(tmp_path)).load()
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()
    batch = stage.preprocess(CAPTIONS)
    with torch.inference_mode():
        merged_logits = stage.model(**batch).logits
        peft_logits = unmerged(**batch).logits
    torch.testing.assert_close(merged_logits, peft_logits, rtol=1e-3, atol=1e-3)  # fp32 rounding only


def test_local_folder_without_config_is_a_clear_error(tmp_path, base_dir):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        resolve_adapter(str(tmp_path), str(tmp_path / "cache"))
    with pytest.raises(AdapterError, match="no such folder"):
        resolve_adapter(str(tmp_path / "nowhere"), str(tmp_path / "cache"))
    with pytest.raises(AdapterError, match="adapter_config.json"):
        StoryStage(str(base_dir), adapter=str(tmp_path), cache_dir=str(tmp_path / "cache")).load()


def test_local_folder_is_used_in_place(adapter_dir, tmp_path):
    assert resolve_adapter(str(adapter_dir), str(tmp_path / "cache")) == adapter_dir.resolve()
    assert not (tmp_path / "cache").exists()


# --- S3 ---------------------------------------------------------------------------------------------
def _split(url):
    bucket, _, prefix = url[len("s3://") :].partition("/")
    return bucket, prefix


def _upload(client, folder, bucket, prefix):
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


@pytest.fixture
def s3(s3_env):
    import boto3

    client = boto3.client("s3")
    bucket, prefix = _split(s3_env)
    client.create_bucket(Bucket=bucket)
    return client, bucket, prefix


def _empty_bucket(client, bucket):
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=item["Key"])


def test_s3_adapter_downloaded_once_and_served(s3, adapter_dir, base_dir, base_stories, tmp_path):
    client, bucket, prefix = s3
    _upload(client, adapter_dir, bucket, f"{prefix}/run1")
    # A neighbour whose name starts the same must not be mixed in.
    client.put_object(Bucket=bucket, Key=f"{prefix}/run10/stray.txt", Body=b"x")
    spec, cache = f"s3://{bucket}/{prefix}/run1", tmp_path / "cache"

    local = resolve_adapter(spec, str(cache))
    assert local.parent == cache
    names = sorted(p.name for p in local.iterdir())
    assert names == sorted(p.name for p in adapter_dir.iterdir())
    for name in names:
        assert (
            hashlib.sha256((local / name).read_bytes()).digest()
            == hashlib.sha256((adapter_dir / name).read_bytes()).digest()
        )
    assert [p.name for p in cache.iterdir()] == [local.name]  # no temporary folders left

    _empty_bucket(client, bucket)  # a second download would now find nothing and fail
    assert resolve_adapter(spec + "/", str(cache)) == local

    stage = StoryStage(str(base_dir), adapter=spec, cache_dir=str(cache))
    stories = stage(CAPTIONS, **GREEDY)
    assert not _has_peft_layers(stage.model)
    local_stage = StoryStage(str(base_dir), adapter=str(adapter_dir), cache_dir=str(tmp_path))
    assert stories == local_stage(CAPTIONS, **GREEDY) != base_stories


def test_s3_prefix_without_adapter_is_a_clear_error(s3, tmp_path):
    client, bucket, prefix = s3
    client.put_object(Bucket=bucket, Key=f"{prefix}/notes.txt", Body=b"not an adapter")
    cache = tmp_path / "cache"
    with pytest.raises(AdapterError, match="1 object.*no adapter_config.json"):
        resolve_adapter(f"s3://{bucket}/{prefix}", str(cache))
    with pytest.raises(AdapterError, match="nothing"):
        resolve_adapter(f"s3://{bucket}/{prefix}/missing", str(cache))
    assert list(cache.iterdir()) == []  # failed downloads leave no half folder to be reused


def test_s3_missing_bucket_is_a_clear_error(s3_env, tmp_path):
    with pytest.raises(AdapterError, match="could not download"):
        resolve_adapter("s3://no-such-bucket-here/adapter", str(tmp_path))


def test_s3_keys_escaping_the_cache_are_skipped(s3, adapter_dir, tmp_path):
    client, bucket, prefix = s3
    _upload(client, adapter_dir, bucket, f"{prefix}/run1")
    # "run1//<absolute path>" splits into ("/", ...): joined naively it lands outside the cache.
    outside = tmp_path / "outside" / "evil.txt"
    client.put_object(Bucket=bucket, Key=f"{prefix}/run1/{outside}", Body=b"pwned")
    client.put_object(Bucket=bucket, Key=f"{prefix}/run1/../escape.txt", Body=b"pwned")
    cache = tmp_path / "cache"

    local = resolve_adapter(f"s3://{bucket}/{prefix}/run1", str(cache))
    assert not outside.exists() and not (tmp_path / "outside").exists()
    assert not (cache / "escape.txt").exists()
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in adapter_dir.iterdir())
    for path in tmp_path.rglob("*"):
        assert path == cache or path.is_relative_to(cache), path
