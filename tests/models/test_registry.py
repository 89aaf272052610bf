"""Networks by name: the released and the demo architectures, recorded in checkpoints and chosen
on the training command line."""
from __future__ import annotations

import pytest
import torch

from models.checkpoint import load_model, save_model
from models.registry import ARCHITECTURES, architecture_name, create_model, smnet, smnet_tiny
from models.smnet import SMNet
from training.options import parse_args


@pytest.mark.parametrize("build, name, parameters", [(smnet, "smnet", 1_292_499), (smnet_tiny, "smnet_tiny", 76_143)])
def test_named_networks_and_their_size(build, name, parameters):
    model = build()
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert architecture_name(model.config) == name
    assert architecture_name(SMNet(embed_dim=12, depths=[1], num_heads=[2]).config) is None


def test_options_other_than_the_architecture_stay_free():
    model = create_model("smnet_tiny", is_mask=True, drop_path_rate=0.0, img_size=96)
    assert model.config["is_mask"] and model.config["img_size"] == 96
    assert architecture_name(model.config) == "smnet_tiny"
    with pytest.raises(KeyError):
        create_model("smnet_huge")


def test_checkpoints_record_their_architecture(tmp_path):
    save_model(tmp_path / "tiny.pth", smnet_tiny())
    assert torch.load(tmp_path / "tiny.pth", weights_only=True)["architecture"] == "smnet_tiny"
    assert architecture_name(load_model(tmp_path / "tiny.pth").config) == "smnet_tiny"


@pytest.mark.parametrize("argv, expected", [
    ([], ARCHITECTURES["smnet"]), (["--preset", "tiny"], ARCHITECTURES["smnet_tiny"]),
    (["--model", "smnet_tiny"], ARCHITECTURES["smnet_tiny"]),
    (["--preset", "tiny", "--embed_dim", "12"], {**ARCHITECTURES["smnet_tiny"], "embed_dim": 12}),
])
def test_the_training_command_line_names_the_network(tmp_path, argv, expected):
    args = parse_args(1, ["--dataset_dir", str(tmp_path), "--logdir", str(tmp_path / "run"), *argv])
    assert {key: getattr(args, key) for key in expected} == expected


def test_the_demo_recipe_files_give_the_recipe(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the recipe names its files from the repository root
    base = ["--dataset_dir", str(tmp_path), "--logdir", str(tmp_path / "run")]
    one = parse_args(1, ["@pretrain_model/demo_recipe/phase1.args", *base])
    two = parse_args(2, ["@pretrain_model/demo_recipe/phase2.args", *base])
    for args in (one, two):
        assert (args.model, args.embed_dim, args.train_patch_size, args.batch_size, args.phase1_epochs, args.epochs,
                args.seed, args.num_workers, args.reference_residual) == ("smnet_tiny", 24, 96, 8, 20, 28, 1, 0, True)
    assert (one.repeat, one.linear_lambda) == (6, 0.0) and (two.repeat, two.linear_lambda) == (10, 1.0)
