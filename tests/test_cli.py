"""The command line: demo output, one-line errors with exit status 2."""
import subprocess
import sys

from PIL import Image

from latentdiff.cli import main


def test_demo_writes_forward_noising_picture(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    img = Image.open(tmp_path / "d" / "forward_noising.png")
    assert img.width > img.height > 64
    assert "forward_noising.png" in capsys.readouterr().out


def test_demo_model_flag_generates_with_that_model(tmp_path, capsys, tiny_model_dir):
    assert main(["demo", "--out", str(tmp_path / "d"), "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("images match the prompt") == 4 and (tmp_path / "d" / "generated.png").is_file()


def test_demo_model_flag_names_a_missing_model(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--model", str(tmp_path / "nowhere")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


def test_user_error_is_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "latentdiff.cli", "demo", "--out", str(blocker / "sub")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and str(blocker / "sub") in proc.stderr


def test_bad_flag_exit_2():
    proc = subprocess.run([sys.executable, "-m", "latentdiff.cli", "demo", "--seed", "x"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_only_the_program_itself_freezes_the_collector(monkeypatch, tiny_model_dir):
    """`latentdiff generate` as a program moves the imports' objects out of the collector's reach before it
    loads the model (start-up); main(argv) called from someone's Python leaves their collector alone."""
    import gc

    from latentdiff.cli import build_parser
    from latentdiff.commands.generate import load_pipeline

    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(1))
    args = build_parser().parse_args(["generate", "a red circle"])
    args.allow_unsafe_pickle = False
    for own, expected in ((False, 0), (True, 1)):
        args.own_process = own
        load_pipeline(args, str(tiny_model_dir), "cpu")
        assert len(calls) == expected
