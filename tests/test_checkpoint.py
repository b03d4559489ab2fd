"""Checkpoint folders: names, digests, the settings a resume must match, clear errors."""

from __future__ import annotations

import pytest

from tasks.store.checkpoint import CheckpointNotFoundError, digest, load_config
from tasks.store.workspace import Workspace
from tasks.train.trainer import TrainConfig, settings_digest


@pytest.mark.parametrize(
    "name",
    [
        "../clip-tiny",
        "a/b",
        "/etc",
        ".hidden",
        "",
        "..",
        "x\x00y",
        "clip tiny",
        "a\\b",
        "é",
        "x" * 129,
    ],
)
def test_checkpoint_names_that_are_not_plain_folder_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="is not a plain folder name"):
        Workspace(tmp_path).checkpoint("clip", name)


def test_checkpoint_paths_and_kinds(tmp_path):
    workspace = Workspace(tmp_path)
    assert workspace.checkpoint("diffusion", "clip-tiny_unet-xs_kl-f4") == (
        tmp_path / "checkpoints" / "diffusion" / "clip-tiny_unet-xs_kl-f4"
    )
    with pytest.raises(ValueError, match="unknown checkpoint kind 'vae'"):
        workspace.checkpoint("vae", "kl-f4")


def test_digest_is_sha1_of_the_weights_file(tmp_path):
    # FIPS 180-2's test vector: sha1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d
    (tmp_path / "ema.safetensors").write_bytes(b"abc")
    assert digest(tmp_path) == "a9993e364706816a"
    (tmp_path / "model.safetensors").write_bytes(b"")  # sha1("") = da39a3ee5e6b4b0d...
    assert digest(tmp_path, "model") == "da39a3ee5e6b4b0d"


def test_digest_of_a_weightless_checkpoint_is_its_config(tmp_path):
    (tmp_path / "config.json").write_bytes(b"abc")
    assert digest(tmp_path) == "a9993e364706816a"


def test_missing_checkpoint_names_what_is_there(tmp_path):
    workspace = Workspace(tmp_path)
    (workspace.checkpoint("clip", "clip-small") / "config.json").parent.mkdir(parents=True)
    (workspace.checkpoint("clip", "clip-small") / "config.json").write_text("{}")
    with pytest.raises(
        CheckpointNotFoundError, match=r"no clip checkpoint 'clip-tiny'.*found: clip-small"
    ):
        load_config(workspace.checkpoint("clip", "clip-tiny"))
    with pytest.raises(CheckpointNotFoundError, match="no clip checkpoint 'clip-base'"):
        digest(workspace.checkpoint("clip", "clip-base"))


def test_settings_digest_changes_with_every_setting():
    config, base = {"kind": "x", "preset": "a"}, TrainConfig(steps=7)
    assert settings_digest(config, base) == settings_digest(dict(config), TrainConfig(steps=7))
    assert settings_digest(config, TrainConfig(steps=7, betas=[0.9, 0.999])) == (
        settings_digest(config, base)
    )  # betas from JSON lists are the same setting
    changed = [
        TrainConfig(steps=8),
        TrainConfig(steps=7, lr=2e-3),
        TrainConfig(steps=7, betas=(0.9, 0.99)),
        TrainConfig(steps=7, ema_halflife_images=50),
        TrainConfig(steps=7, warmup_images=640),
        TrainConfig(steps=7, weight_decay=0.1),
        TrainConfig(steps=7, seed=1),
    ]
    digests = {settings_digest(config, cfg) for cfg in changed}
    assert len(digests) == len(changed) and settings_digest(config, base) not in digests
    assert settings_digest({"kind": "x", "preset": "b"}, base) != settings_digest(config, base)
