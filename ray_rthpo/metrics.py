"""Metric names, defined once and imported everywhere (training loop, Ray adapter, analysis)."""

from __future__ import annotations

EPOCH = "epoch"
STEP = "step"
TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
VAL_LOSS = "val/loss"
VAL_ACC = "val/acc"
TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
#: The sizes of the validation and test sets behind val/acc and test/acc (one example is 1/n of accuracy).
VAL_N = "val/n"
TEST_N = "test/n"
LR = "lr"
#: The tuned value of RT-HPO on a schedule: its scale s (the learning rate is s * phi(step)); for the
#: other methods (and RT-HPO without a schedule) the learning rate itself.
LR_SCALE = "lr_scale"
BETA = "beta"
MU = "mu"
HYPERGRAD = "hypergrad"
EPOCH_SECONDS = "time/epoch_s"
TOTAL_SECONDS = "time/total_s"
TRAIN_SECONDS = "time/train_s"
HYPER_SECONDS = "time/hyper_s"
EVAL_SECONDS = "time/eval_s"
DIVERGED = "diverged"
STATUS = "status"
DEVICE = "device"

#: The one metric every searcher optimises: validation accuracy, never test accuracy.
SELECTION_METRIC = VAL_ACC
SELECTION_MODE = "max"

#: Finite loss reported in place of a NaN/inf loss, so that searchers never see a non-finite value.
DIVERGED_LOSS_PENALTY = 1.0e6

STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
STATUS_DIVERGED = "diverged"
