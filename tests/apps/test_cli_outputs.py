"""The commands' outputs: never over an input, an existing output only with ``--overwrite``,
written atomically (a temporary file renamed when complete), the folders and titles named
after their command; and the announcement and overall progress of the long commands."""

from __future__ import annotations

import os

import numpy as np
import pytest

from energycrf import cli
from energycrf.apps import _command


@pytest.fixture
def image(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((24, 24)) * 255).astype(np.uint8)).save("img.png")
    return tmp_path / "img.png"


def _exit_status(argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return exit_info.value.code


def test_denoise_refuses_to_write_over_its_input(image, capsys):
    before = image.read_bytes()
    os.link(image, "same.png")  # another name for the same file
    for out in ("img.png", str(image), "./img.png", "same.png"):
        assert _exit_status(["denoise", "img.png", "-o", out, "--overwrite"]) == 2
        assert "--output: expected a file other than the input" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_denoise_refuses_an_existing_output_unless_overwrite(image, capsys):
    out = image.parent / "out.png"
    out.write_bytes(b"an earlier result")
    assert _exit_status(["denoise", "img.png", "-o", "out.png"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier result"
    assert cli.main(["denoise", "img.png", "-o", "out.png", "--overwrite"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_denoise_with_a_checkpoint_takes_its_model_and_sigma(image, capsys):
    from energycrf.apps.denoise import pretrained_dir

    ckpt = str(pretrained_dir(50, "foe"))
    assert cli.main(["denoise", "img.png", "-o", "a.png", "--checkpoint", ckpt]) == 0
    assert "sigma 50) -> a.png" in capsys.readouterr().out  # the checkpoint's, not the default 25
    assert cli.main(["denoise", "img.png", "-o", "b.png", "--checkpoint", ckpt, "--model", "foe", "--sigma", "50"]) == 0
    assert _exit_status(["denoise", "img.png", "-o", "c.png", "--checkpoint", ckpt, "--model", "latentcrf"]) == 2
    assert "--model: expected the checkpoint's model 'foe'" in capsys.readouterr().err


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(image, monkeypatch, capsys):
    from energycrf.apps import denoise_command

    out = image.parent / "out.npy"
    np.save(out, np.ones(3, np.float32))
    old = out.read_bytes()

    def half_written(path, array, alpha=None):  # writes part of the file, then the disk is full
        with open(path, "wb") as f:
            f.write(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(denoise_command, "write_image", half_written)
    assert _exit_status(["denoise", "img.png", "-o", "out.npy", "--overwrite"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == old
    assert sorted(p.name for p in image.parent.iterdir()) == ["img.png", "out.npy"]  # no temporary file left


def test_atomic_path(tmp_path):
    target = tmp_path / "sub" / "table.md"
    with _command.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".md" and tmp != target
        tmp.write_text("complete")
        assert not target.exists()  # nothing at the name until the block completes
    assert target.read_text() == "complete"
    with pytest.raises(RuntimeError), _command.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "complete" and os.listdir(target.parent) == ["table.md"]


def test_output_folders_are_checked_before_the_work(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "demo.png").write_text("x")
    with pytest.raises(_command.UsageError, match="--out: expected a folder without earlier results"):
        _command.check_output_dir(tmp_path / "out", "--out", ["demo.png", "summary.json"])
    assert _command.check_output_dir(tmp_path / "out", "--out", ["summary.json"]) == tmp_path / "out"
    assert _command.check_output_dir(tmp_path / "new" / "deeper", "--out", ["a"]) == tmp_path / "new" / "deeper"
    src = tmp_path / "out" / "demo.png"
    with pytest.raises(_command.UsageError, match="is the input"):
        _command.check_output_dir(tmp_path / "out", "--out", ["demo.png"], inputs=[src], overwrite=True)


def test_energy_demo_folder_title_and_border(tmp_path, monkeypatch, capsys):
    """Its own folder and title (not the LDM demo's), a second run refused, the border ring cut."""
    import matplotlib.figure

    from energycrf.apps import energy_demo
    from energycrf.apps.ldm import demo

    defaults = {}
    for module in (energy_demo, demo):
        parser = cli._Parser(prog="x")
        module.add_arguments(parser)
        defaults[module] = str(parser.parse_args([]).out)
    assert defaults[energy_demo] == "energycrf-energy-demo-out" and defaults[demo] == "energycrf-demo-out"

    seen = {}

    def record(fig, path, **kw):
        seen["title"] = fig._suptitle.get_text()
        seen["shapes"] = [im.get_array().shape for ax in fig.axes for im in ax.get_images()]
        seen["text"] = " ".join(t.get_text() for t in fig.texts)
        with open(path, "wb") as f:
            f.write(b"png")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    monkeypatch.chdir(tmp_path)
    argv = ["energy-demo", "--size", "24", "--max-iters", "5", "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("energycrf energy-demo: minimise unary + pairwise + field_of_experts on a 24x24 photograph")
    assert (tmp_path / "energycrf-energy-demo-out" / "demo.png").read_bytes() == b"png"
    assert seen["title"].startswith("energycrf energy-demo: skimage.data.camera()")
    b = energy_demo.KERNEL_SIZE // 2
    # clean, noisy, solution; unary and pairwise maps in full; the FoE and error maps without the border
    assert seen["shapes"] == [(24, 24)] * 5 + [(24 - 2 * b, 24 - 2 * b)] * 2
    assert "zero padding" in seen["text"]
    assert _exit_status(argv) == 2  # the second run: the folder holds the first one's files
    assert cli.main([*argv, "--overwrite"]) == 0


def test_compare_solvers_shows_progress_and_lists_skipped_methods(tmp_path, capsys):
    argv = ["compare-solvers", "--size", "12", "--max-iters", "3", "--methods", "mean_field,fft,lbfgs"]
    assert cli.main([*argv, "--out-dir", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("energycrf compare-solvers: 3 methods on skimage camera 12x12")
    assert "compare-solvers: 100%" in err and "left" in err  # the overall bar, by default
    assert "fft: skipped (fft minimises purely quadratic energies only" in out and "nan" not in out
    table = (tmp_path / "a" / "table.md").read_text()
    assert "| fft |" not in table and "fft: skipped (" in table and "nan" not in table
    assert "| mean_field |" in table and "| lbfgs |" in table
    assert cli.main([*argv, "--out-dir", str(tmp_path / "b"), "--no-progress"]) == 0
    assert "%|" not in capsys.readouterr().err


def test_announcements_count_in_the_singular(tmp_path, capsys):
    argv = ["compare-solvers", "--size", "8", "--max-iters", "2", "--methods", "lbfgs", "--no-progress",
            "--out-dir", str(tmp_path / "a")]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith("energycrf compare-solvers: 1 method on skimage camera 8x8")
    assert _command.plural(1, "row") == "1 row" and _command.plural(7, "row") == "7 rows"


def test_compare_each_matches_one_compare_solvers_call():
    """One method at a time, then the gaps against the best of all: the rows of one call."""
    import torch

    from energycrf.apps.compare_solvers import compare_each, default_energy, noisy_photograph
    from energycrf.solvers import compare_solvers

    x, _ = noisy_photograph("camera", 12)
    E = default_energy(1)
    methods = ["mean_field", "fft", "lbfgs"]
    one = compare_solvers(E, x, methods=methods, max_iters=5)
    each = compare_each(E, x, methods, _command.progress_bar(3, "t", enabled=False), max_iters=5)
    assert one.best_energy == pytest.approx(each.best_energy, rel=1e-12)
    assert set(each.skipped) == set(one.skipped) == {"fft"}
    for a, b in zip([r for r in one.rows if r.method != "fft"], each.rows, strict=True):
        assert (a.method, a.iterations, a.status, a.iterations_to_gap) == (b.method, b.iterations, b.status,
                                                                           b.iterations_to_gap)
        assert a.energy == pytest.approx(b.energy, rel=1e-12) and a.gap == pytest.approx(b.gap, rel=1e-6, abs=1e-15)
    torch.testing.assert_close(one.results["lbfgs"].y, each.results["lbfgs"].y)


@pytest.mark.parametrize("cores, load, default, threads", [
    (2, 0.1, 2, 2),      # a quiet 2-core machine: torch's default
    (2, 1.2, 2, 1),      # one core busy: one thread
    (2, 7.5, 2, 1),      # the busy machine of issue 23: one thread
    (16, 4.0, 16, 12),
    (16, 0.0, 8, 8),     # never more than torch's default (OMP_NUM_THREADS)
])
def test_threads_for_load(monkeypatch, cores, load, default, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert _command.threads_for_load(default)[0] == threads
