"""Tiny settings of scripts/train_denoisers_full.py runs, shared by the tests of the script."""

from __future__ import annotations

TINY = {
    "staged": ["num_stages=2", "num_filters=3", "kernel_size=3", "num_knots=9", "greedy_steps=4", "joint_steps=4",
               "batch_size=2", "patch_size=20", "margin=3", "pad=4", "checkpoint_every=2", "validate_every=4",
               "val_crop=24"],
    "foe": ["num_filters=3", "kernel_size=3", "num_iterations=300", "gtol=1e-5", "steps=4", "batch_size=2",
            "patch_size=16", "margin=2", "pad=4", "checkpoint_every=2", "validate_every=2", "val_crop=24"],
}


def run_tiny(mod, model, run_dir, *extra):
    """``mod.main`` on a tiny run of ``model`` at sigma 25 in ``run_dir`` (validated on camera's crop)."""
    argv = ["--model", model, "--sigma", "25", "--run-dir", str(run_dir), "--val-images", "camera", "--no-progress",
            "--log-every", "1"]
    for item in TINY[model]:
        argv += ["--set", item]
    assert mod.main(argv + list(extra)) == 0
