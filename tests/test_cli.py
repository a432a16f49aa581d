"""``python -m nfcourse``: train, write a checkpoint, evaluate it; errors without tracebacks."""

import subprocess
import sys

import pytest

from nfcourse.cli import main
from nfcourse.training.checkpoint import load_model
from nfcourse.data import score_on_moons

TRAIN = ["train", "--layers", "2", "--hidden", "16", "--steps", "40", "--batch-size", "128",
         "--eval-every", "20", "--quiet", "--threads", "1"]


def test_train_then_evaluate_round_trip(tmp_path, capsys):
    out = tmp_path / "moons.pt"
    assert main([*TRAIN, "--data", "moons", "--out", str(out)]) == 0
    assert "for 40 steps" in capsys.readouterr().out
    model, ckpt = load_model(out)
    assert ckpt["model_spec"]["data"] == "moons"
    assert ckpt["model_spec"]["kwargs"]["layers"] == 2
    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(score_on_moons(model.log_prob))
    # resuming a finished run changes nothing
    assert main([*TRAIN, "--data", "moons", "--out", str(out), "--resume"]) == 0
    again, _ = load_model(out)
    assert all((a == b).all() for a, b in zip(model.state_dict().values(),
                                              again.state_dict().values()))


def test_other_models_and_data_sets(tmp_path, capsys):
    out = tmp_path / "rings.pt"
    assert main([*TRAIN, "--data", "rings", "--model", "nice", "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--n", "2000"]) == 0
    assert "fresh rings points" in capsys.readouterr().out


def test_missing_and_corrupt_checkpoints_are_one_line_errors(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert main(["evaluate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "corrupt" in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["--data", "moonz"], ["--data", "moons", "--steps", "0"],
                                  ["--data", "moons", "--lr", "abc"], ["--data", "moons"]])
def test_bad_arguments_exit_with_usage(args, tmp_path, capsys):
    argv = ["train", *args] + (["--out", str(tmp_path / "x.pt")] if args != ["--data", "moons"]
                               else [])
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: nfcourse train" in capsys.readouterr().err


def test_module_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "nfcourse", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0
    assert "train" in res.stdout and "evaluate" in res.stdout
