"""The released workflow, flag for flag: every option of the released scripts parses with its
released meaning and default, a checkpoint written by the released training script resumes
phase 2 with its Adam state on the right tensors, and the released README's command lines run
unchanged on tiny generated data."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import SceneLayout, load_scene
from datasets.synthetic import make_dataset
from evaluation import cli as test_cli
from models.smnet import SMNet
from segmask import segment
from segmask.segment import build_tiny_sam, segment_split, superpixel_masks
from training.curriculum import segment_psnr_mu, update_tables, SegmentTables
from training.options import INERT_OPTIONS, parse_args
from training.resume import parameter_order
from training.trainer import RELEASED_FREEZE, Trainer, freeze_all_but_shallow_extractor
from utils.image_io import read_ldr, write_ldr

ROOT = Path(__file__).resolve().parents[2]
RELEASED_KEYS = [line.split("\t") for line in (ROOT / "tests" / "fixtures" / "smnet_state_dict.tsv").read_text()
                 .splitlines() if line and not line.startswith("#")]

TRAINING_FLAGS = {  # released option → (value given, attribute, parsed value)
    "--dataset_dir": ("D", "dataset_dir", Path("D")),
    "--train_path": ("Tr", "train_path", "Tr"),
    "--test_path": ("Te", "test_path", "Te"),
    "--exposure_file_name": ("e.txt", "exposure_file", "e.txt"),
    "--ldr_folder_name": ("ldr", "ldr_subdir", "ldr"),
    "--label_file_name": ("gt.hdr", "label_file", "gt.hdr"),
    "--mask_npy_name": ("m.npy", "masks_file", "m.npy"),
    "--train_patch_size": ("64", "train_patch_size", 64),
    "--patch_size": ("256", "patch_size", 256),
    "--repeat": ("3", "repeat", 3),
    "--logdir": ("L", "logdir", Path("L")),
    "--num_workers": ("1", "num_workers", 1),
    "--test_num_workers": ("1", "test_num_workers", 1),
    "--start_epoch": ("301", "start_epoch", 301),
    "--epochs": ("400", "epochs", 400),
    "--phase1_epochs": ("300", "phase1_epochs", 300),
    "--batch_size": ("4", "batch_size", 4),
    "--test_batch_size": ("1", "test_batch_size", 1),
    "--log_interval": ("100", "log_interval", 100),
    "--resume": ("c.pth", "resume", Path("c.pth")),
    "--seed": ("7", "seed", 7),
    "--cache_choice": ("2", "cache", "memory"),
    "--momentum": ("0.5", "momentum", 0.5),
    "--lr": ("0.001", "lr", 0.001),
    "--le_lambda": ("0", "le_lambda", 0.0),
    "--mask_choice": ("0", "mask_choice", 0),
    "--adl_drop_rate": ("0.5", "adl_drop_rate", 0.5),
    "--metric_guided": ("psnr_l", "metric_guided", "psnr_l"),
    "--is_guided_mask": ("0", "is_guided_mask", False),
    "--is_guided_loss": ("1", "is_guided_loss", True),
    "--mask_temperature": ("0.1", "mask_temperature", 0.1),
    "--loss_temperature": ("-0.2", "loss_temperature", -0.2),
    "--metric_guided_interval": ("3", "metric_guided_interval", 3),
}
SWITCHES = {"--lr_decay": ("lr_decay", True), "--is_mask": ("is_mask", True), "--is_curriculum": ("is_curriculum", True),
            "--init_weights": ("init_weights", True), "--is_freeze": ("is_freeze", True), "--no_cuda": ("device", "cpu")}
RELEASED_DEFAULTS = {"train_patch_size": 128, "patch_size": 256, "repeat": 100, "num_workers": 8, "epochs": 400,
                     "phase1_epochs": 300, "batch_size": 8, "seed": 1234, "cache": "npy", "lr": 5e-4,
                     "le_lambda": 0.005, "is_mask": True, "is_curriculum": True, "mask_choice": 1, "adl_drop_rate": 0.75,
                     "metric_guided": "psnr_mu", "is_guided_mask": True, "is_guided_loss": True,
                     "mask_temperature": 0.05, "loss_temperature": -0.1, "metric_guided_interval": 5,
                     "init_weights": False, "is_freeze": False, "device": "auto"}


# --- every released flag, with its released meaning and default ----------------------------------

@pytest.mark.parametrize("phase", [1, 2])
def test_training_accepts_every_released_flag_with_its_meaning(phase):
    argv = [part for flag, (value, _, _) in TRAINING_FLAGS.items() for part in (flag, value)] + list(SWITCHES)
    args = parse_args(phase, argv)
    for flag, (_, attribute, expected) in TRAINING_FLAGS.items():
        assert getattr(args, attribute) == expected, flag
    for flag, (attribute, expected) in SWITCHES.items():
        assert getattr(args, attribute) == expected, flag


def test_training_defaults_are_the_released_ones():
    args = parse_args(2, ["--dataset_dir", "D"])
    for attribute, expected in RELEASED_DEFAULTS.items():
        assert getattr(args, attribute) == expected, attribute


def test_options_without_effect_say_so(capsys):
    help_text = " ".join(subprocess.run([sys.executable, "train_phase1.py", "--help"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.split())
    for name in INERT_OPTIONS:
        assert f"--{name}" in help_text
    assert help_text.count("no effect here") >= len(INERT_OPTIONS)


def test_test_script_accepts_the_released_flags(tmp_path, capsys):
    args = test_cli.parse_args([
        "--dataset_dir", "D", "--train_patch_size", "64", "--train_path", "Tr", "--test_path", "Te",
        "--exposure_file_name", "e.txt", "--ldr_folder_name", "ldr", "--label_file_name", "gt.hdr",
        "--mask_npy_name", "m.npy", "--log_dir", "logs", "--no_cuda", "--test_batch_size", "1",
        "--test_num_workers", "1", "--patch_size", "256", "--pretrained_model", "P", "--save_results",
        "--save_dir", "S"])
    assert (args.pad_multiple, args.test_path, args.device, args.save_dir) == (64, "Te", "cpu", Path("S"))
    assert (args.exposure_file, args.ldr_subdir, args.label_file, args.masks_file) == ("e.txt", "ldr", "gt.hdr", "m.npy")
    assert test_cli.parse_args(["--dataset_dir", "D", "--pretrained_model", "P", "--logdir", "L"]).log_dir == Path("L")
    assert test_cli.parse_args(["--dataset_dir", "D", "--pretrained_model", "P"]).pad_multiple == 128


def test_segment_accepts_the_released_flags():
    args = segment.parse_args(["--dataset_dir", "D", "--train_path", "Test", "--test_path", "Test",
                               "--exposure_file_name", "e.txt", "--ldr_folder_name", "ldr", "--label_file_name", "g.hdr",
                               "--mask_npy_name", "m.npy", "--dataset_mode", "test", "--mask_mode", "random",
                               "--sam_checkpoint", "s.pth", "--model_type", "default"])
    assert (args.mode, args.model_type, args.masks_file, args.ldr_subdir) == ("random", "vit_h", "m.npy", "ldr")
    assert segment.parse_args(["--dataset_dir", "D"]).model_type == "vit_h"


# --- meanings ---------------------------------------------------------------------------------------

def test_loss_temperature_is_the_released_exp_of_t_times_psnr():
    psnr = torch.tensor([10.0, 20.0, 30.0])
    for temperature in (-0.1, 0.1):
        tables = SegmentTables(3)
        update_tables(tables, torch.arange(3), psnr, R=0.5, loss_temperature=temperature)
        tables.commit()
        expected = 3 * torch.exp(temperature * psnr) / torch.exp(temperature * psnr).sum()
        assert torch.allclose(tables.weight, expected)
    # the released default weighs the hard (low-PSNR) segments more
    tables = SegmentTables(3)
    update_tables(tables, torch.arange(3), psnr, R=0.5)
    tables.commit()
    assert tables.weight[0] > tables.weight[1] > tables.weight[2]


def test_metric_guided_psnr_l_is_the_linear_psnr_of_each_segment():
    label = torch.full((3, 4, 4), 0.5)
    pred = label.clone()
    pred[:, :, 2:] += 0.1  # segment 1 (right half) is off by 0.1 in linear values
    segments = torch.zeros(4, 4, dtype=torch.long)
    segments[:, 2:] = 1
    ids, psnr = segment_psnr_mu(pred, label, segments, metric="psnr_l")
    assert ids.tolist() == [0, 1]
    assert psnr[1].item() == pytest.approx(20.0, abs=1e-4)  # 20·log10(1 / 0.1)
    _, psnr_mu = segment_psnr_mu(pred, label, segments)
    assert psnr_mu[1].item() != pytest.approx(20.0, abs=0.5)


def test_is_freeze_trains_conv_first_0_and_finetune_all_of_conv_first():
    assert freeze_all_but_shallow_extractor(SMNet(), RELEASED_FREEZE) == pytest.approx(3_300 / 1_292_499)
    assert round(100 * 3_300 / 1_292_499, 2) == 0.26
    assert round(100 * freeze_all_but_shallow_extractor(SMNet()), 2) == 5.28


def test_released_8bit_scaling_divides_8bit_files_by_2_to_the_16(tmp_path):
    root = make_dataset(tmp_path / "d", num_train=0, num_test=1, size=(16, 24), seed=3)
    scene_dir = next((root / "Test").iterdir())
    for tif in sorted(scene_dir.glob("*.tif")):  # rewrite the LDRs as 8-bit PNGs
        write_ldr(scene_dir / (tif.stem + ".png"), read_ldr(tif), bit_depth=8)
        tif.unlink()
    ours = load_scene(scene_dir, SceneLayout(ldr_pattern="*.png"))
    released = load_scene(scene_dir, SceneLayout(ldr_pattern="*.png", released_8bit_scaling=True))
    np.testing.assert_allclose(released.ldrs, ours.ldrs * np.float32(255.0 / 2**16), rtol=1e-6)


# --- a checkpoint written by the released training script -------------------------------------------

def released_phase1_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Write a phase-1 checkpoint as the released script does: DataParallel keys (buffers
    included) in the released network's order, its Adam state in that parameter order, MyLR's
    state. Returns the saved exp_avg per parameter name."""
    torch.manual_seed(0)
    model = SMNet(is_mask=True)
    ours = dict(model.named_parameters())
    state = model.state_dict()
    released_state: dict[str, torch.Tensor] = {}
    for key, shape, kind in RELEASED_KEYS:
        released_state[f"module.{key}"] = state[key] if key in state else torch.zeros(eval(shape))
    order = parameter_order(released_state, set(ours))
    assert order != list(ours)  # the released order really differs from ours
    optimizer = torch.optim.Adam([ours[name] for name in order], lr=5e-4)
    for parameter in ours.values():
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    scheduler = {"T_max": 400, "eta_min": 5e-5, "phase1_epoch": 300, "decay": 0.5, "base_lrs": [5e-4],
                 "last_epoch": 300, "verbose": False, "_step_count": 301, "_get_lr_called_within_step": False,
                 "_last_lr": [5e-5]}
    torch.save({"epoch": 300, "state_dict": released_state, "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler}, path)
    return {name: optimizer.state[ours[name]]["exp_avg"].clone() for name in order}


def test_phase2_resumes_from_a_released_phase1_checkpoint(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", num_train=2, num_test=1, size=(32, 48), seed=4)
    segment_split(root, "Training", lambda image: superpixel_masks(image, n_segments=6), min_area=10, progress=False)
    exp_avg = released_phase1_checkpoint(tmp_path / "released.pth")
    args = parse_args(2, ["--dataset_dir", str(root), "--logdir", str(tmp_path / "p2"), "--start_epoch", "301",
                          "--resume", str(tmp_path / "released.pth"), "--epochs", "301", "--train_patch_size", "32",
                          "--batch_size", "1", "--repeat", "1", "--num_workers", "0", "--le_lambda", "0",
                          "--max_steps", "1", "--test_interval", "1000", "--no_progress"])
    trainer = Trainer(args)
    names = {parameter: name for name, parameter in trainer.model.named_parameters()}
    restored = {names[p]: trainer.optimizer.state[p]["exp_avg"] for p in trainer.optimizer.param_groups[0]["params"]}
    assert set(restored) == set(exp_avg)
    for name, value in exp_avg.items():
        assert torch.equal(restored[name], value), name
    assert trainer.start_epoch == 301
    trainer.run()  # the first optimiser step pairs every state with its own tensor
    assert trainer.state.epoch == 301
    assert trainer.optimizer.param_groups[0]["lr"] < 5e-4


# --- the released README's command lines ----------------------------------------------------------

def run(command: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def test_the_released_readme_commands_run_unchanged(tmp_path):
    """segment (from segmask/), phase 1, phase 2 from phase 1's checkpoint, test: the released
    README's lines, with only tiny settings added (a tiny SAM, steps, crop, sizes)."""
    data = make_dataset(tmp_path / "data", num_train=2, num_test=1, size=(32, 48), seed=6)
    sam = tmp_path / "tiny_sam.pth"
    torch.manual_seed(0)
    torch.save(build_tiny_sam().state_dict(), sam)
    tiny_sam = ["--model_type", "tiny", "--points_per_side", "4", "--min_area", "10", "--no_progress"]
    run(["segment.py", "--dataset_dir", str(data), "--sam_checkpoint", str(sam), "--train_path", "Training",
         *tiny_sam], cwd=ROOT / "segmask")
    run(["segment.py", "--dataset_dir", str(data), "--sam_checkpoint", str(sam), "--train_path", "Test",
         *tiny_sam], cwd=ROOT / "segmask")
    assert all((scene / "masks.npy").is_file() for split in ("Training", "Test") for scene in (data / split).iterdir())

    tiny = ["--preset", "tiny", "--train_patch_size", "32", "--batch_size", "1", "--repeat", "1", "--num_workers", "0",
            "--max_steps", "1", "--epochs", "301", "--phase1_epochs", "300", "--no_progress"]
    logs1, logs2 = tmp_path / "logs1", tmp_path / "logs2"
    run(["train_phase1.py", "--dataset_dir", str(data), "--logdir", str(logs1), *tiny, "--start_epoch", "300"])
    run(["train_phase2.py", "--dataset_dir", str(data), "--logdir", str(logs2), "--start_epoch", "301",
         "--resume", str(logs1), *tiny])
    result = run(["test.py", "--dataset_dir", str(data), "--logdir", str(tmp_path / "testlogs"),
                  "--pretrained_model", str(logs2 / "last.pth"), "--save_dir", str(tmp_path / "out"), "--no_progress"])
    assert "psnr_mu" in result.stdout
    scene = next((data / "Test").iterdir()).name
    assert (tmp_path / "out" / f"{scene}.hdr").is_file()
    assert (tmp_path / "testlogs" / "test.log").is_file()
    shutil.rmtree(tmp_path / "out")


def test_one_scene_layout_for_segment_training_and_test(tmp_path):
    """LDRs in a sub-folder, other file names: the same released flags find the same files in
    segment.py, training and test.py; masks written under --mask_npy_name are found by training."""
    data = make_dataset(tmp_path / "data", num_train=2, num_test=1, size=(32, 48), seed=8)
    for scene in [*(data / "Training").iterdir(), *(data / "Test").iterdir()]:
        (scene / "ldr").mkdir()
        for tif in scene.glob("*.tif"):
            tif.rename(scene / "ldr" / tif.name)
        (scene / "exposure.txt").rename(scene / "stops.txt")
        (scene / "HDRImg.hdr").rename(scene / "gt.hdr")
    layout = ["--ldr_folder_name", "ldr", "--exposure_file_name", "stops.txt", "--label_file_name", "gt.hdr",
              "--mask_npy_name", "sam.npy"]
    assert segment.main(["--dataset_dir", str(data), "--mask_mode", "superpixel", "--n_segments", "6",
                         "--min_area", "10", "--no_progress", *layout]) == 0
    assert all((scene / "sam.npy").is_file() for scene in (data / "Training").iterdir())
    args = parse_args(2, ["--dataset_dir", str(data), "--logdir", str(tmp_path / "run"), "--preset", "tiny",
                          "--train_patch_size", "32", "--batch_size", "1", "--repeat", "1", "--num_workers", "0",
                          "--phase1_epochs", "0", "--epochs", "1", "--max_steps", "1", "--no_progress", *layout])
    trainer = Trainer(args)
    assert trainer.tables.num_ids > 1  # the segment maps were read
    trainer.run()
    assert test_cli.main(["--dataset_dir", str(data), "--pretrained_model", str(tmp_path / "run" / "last.pth"),
                          "--save_dir", str(tmp_path / "out"), "--no_progress", *layout]) == 0
    assert (tmp_path / "out" / "metrics.csv").read_text().count("\n") == 2  # header + the labelled test scene
