# Two entry points:  `make demo` (set up, then the whole pipeline on generated data)
#                    `make test` (set up, then the test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_output
# Give a SAM checkpoint to segment the demo scenes with Segment Anything instead of superpixels:
#   make demo SAM_CHECKPOINT=pretrain_model/sam_vit_h_4b8939.pth
SAM_CHECKPOINT ?=
SEGMENT_ARGS = $(if $(SAM_CHECKPOINT),--mode sam --sam_checkpoint $(SAM_CHECKPOINT),--mode superpixel)
DEMO_TRAIN_ARGS = --dataset_dir $(DEMO_DIR)/data --preset tiny --reference_residual --train_patch_size 96 --batch_size 8 --repeat 8 \
	--phase1_epochs 12 --epochs 16 --metric_guided_interval 4 --test_interval 4 --num_workers 0 --seed 0

# The shipped demo checkpoint (pretrain_model/demo_smnet.pth): the project's recipe, tiny
# reference-residual network, on scenes made from the real radiance maps of datasets/radiance
# (seed 1, training colours varied), phase 2 with the linear-radiance loss term and without the
# per-segment loss weights, then phase 2 continued twice (to epochs 36 and 44) on 72 more scenes
# (seed 2) with 2-, 3- and 4-stop spacings: about two and a quarter hours on one CPU thread
# (pretrain_model/README.md has the learning curve). The training options are the recipe files
# pretrain_model/demo_recipe/phase{1,2}.args.
CKPT_DIR ?= demo_checkpoint_run
RECIPE = pretrain_model/demo_recipe

.PHONY: setup test demo demo-checkpoint demo-checkpoint-check bench clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: setup
	$(PY) -m pytest -q

# The CPU benchmarks (a few minutes each; figures and their meaning in BENCHMARKS.md).
bench: setup
	$(PY) -m benchmarks.bench_masking
	$(PY) -m benchmarks.bench_model
	$(PY) -m benchmarks.bench_attention
	$(PY) -m benchmarks.bench_train --steps 3
	$(PY) -m benchmarks.bench_tiling --tile 128 256

demo: setup
	rm -rf $(DEMO_DIR)
	$(PY) -m datasets.real_scenes --out $(DEMO_DIR)/data --train 12 --test 3 --size 256 320 --seed 7
	$(PY) -m segmask.segment --dataset_dir $(DEMO_DIR)/data $(SEGMENT_ARGS) --no_progress
	$(PY) train_phase1.py $(DEMO_TRAIN_ARGS) --logdir $(DEMO_DIR)/runs/phase1
	$(PY) train_phase2.py $(DEMO_TRAIN_ARGS) --logdir $(DEMO_DIR)/runs/phase2 \
		--resume $(DEMO_DIR)/runs/phase1/last.pth
	$(PY) test.py --dataset_dir $(DEMO_DIR)/data --pretrained_model $(DEMO_DIR)/runs/phase2/last.pth \
		--save_dir $(DEMO_DIR)/results/just_trained --baselines --region_metrics --side_by_side --no_progress
	$(PY) test.py --dataset_dir $(DEMO_DIR)/data --pretrained_model pretrain_model/demo_smnet.pth \
		--save_dir $(DEMO_DIR)/results/demo_checkpoint --baselines --region_metrics --side_by_side --no_progress
	@echo
	@echo "Done. Where things are:"
	@echo "  scenes from real radiance:  $(DEMO_DIR)/data/{Training,Test}/scene_*/ (masks.png previews the segments)"
	@echo "  training logs:              $(DEMO_DIR)/runs/phase{1,2}/train.log, checkpoints last.pth / best.pth"
	@echo "  TensorBoard:                $(VENV)/bin/tensorboard --logdir $(DEMO_DIR)/runs"
	@echo "  HDR results (.hdr, .png):   $(DEMO_DIR)/results/{just_trained,demo_checkpoint}/"
	@echo "  metrics:                    $(DEMO_DIR)/results/*/metrics.csv, summary.json, baselines.csv"

demo-checkpoint: setup
	rm -rf $(CKPT_DIR)
	$(PY) -m datasets.real_scenes --out $(CKPT_DIR)/data --train 72 --test 6 --size 256 320 --seed 1 \
		--colour_variation
	$(PY) -m segmask.segment --dataset_dir $(CKPT_DIR)/data --mode superpixel --no_progress
	OMP_NUM_THREADS=2 $(PY) train_phase1.py @$(RECIPE)/phase1.args --dataset_dir $(CKPT_DIR)/data \
		--logdir $(CKPT_DIR)/phase1
	OMP_NUM_THREADS=2 $(PY) train_phase2.py @$(RECIPE)/phase2.args --dataset_dir $(CKPT_DIR)/data \
		--logdir $(CKPT_DIR)/phase2 --resume $(CKPT_DIR)/phase1/last.pth
	$(PY) -m datasets.real_scenes --out $(CKPT_DIR)/data_wide --train 72 --test 0 --size 256 320 --seed 2 \
		--colour_variation --spacing 2 3 4
	cp -r $(CKPT_DIR)/data/Test/. $(CKPT_DIR)/data_wide/Test/
	$(PY) -m segmask.segment --dataset_dir $(CKPT_DIR)/data_wide --mode superpixel --no_progress
	OMP_NUM_THREADS=2 $(PY) train_phase2.py @$(RECIPE)/phase2.args --epochs 36 --dataset_dir $(CKPT_DIR)/data_wide \
		--logdir $(CKPT_DIR)/phase2_wide --resume $(CKPT_DIR)/phase2/last.pth
	OMP_NUM_THREADS=2 $(PY) train_phase2.py @$(RECIPE)/phase2.args --epochs 44 --dataset_dir $(CKPT_DIR)/data_wide \
		--logdir $(CKPT_DIR)/phase2_wide2 --resume $(CKPT_DIR)/phase2_wide/last.pth
	$(PY) -m models.checkpoint export $(CKPT_DIR)/phase2_wide2/last.pth pretrain_model/demo_smnet.pth --overwrite

# The demo checkpoint (CHECKPOINT=… for another) against the baselines on held-out sets cut from the
# held-out radiance maps, benchmark-like and harder (evaluation/held_out.py lists them; the table
# is in pretrain_model/README.md): a few minutes.
CHECK_DIR ?= demo_checkpoint_check
CHECKPOINT ?= pretrain_model/demo_smnet.pth
demo-checkpoint-check: setup
	$(PY) -m evaluation.held_out --pretrained_model $(CHECKPOINT) --out $(CHECK_DIR)

clean-demo:
	rm -rf $(DEMO_DIR)
