"""scripts/stage_times.py: a stage's time from its log, through stops, restarts and slowed intervals."""
import json
from pathlib import Path

import pytest
from conftest import load_script


def _module():
    return load_script("scripts/stage_times.py")


def _log(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": s, "loss": 0.1, "time": t}) + "\n" for s, t in rows))


def test_a_stopped_and_resumed_stage_counts_its_steps_once(tmp_path):
    # 2 s a step (50 s per 25 steps); stopped after step 100, resumed a day later from the checkpoint at 75
    # (steps 75-100 done twice), with one interval slowed 10x by another job
    first = [(25 * i, 1000.0 + 50 * i) for i in range(1, 5)]
    again = [(100, 90000.0), (125, 90050.0), (150, 90550.0), (175, 90600.0), (200, 90650.0)]
    _log(tmp_path / "run" / "unet" / "log.jsonl", first + again)
    row = _module().stage_time(tmp_path / "run" / "unet" / "log.jsonl", gap=600)
    assert row["from_step"] == 0 and row["steps"] == 200 and row["starts"] == 2
    assert row["steps_per_s"] == pytest.approx(0.5)
    assert row["seconds"] == pytest.approx(400.0)  # 200 steps at 2 s, not the 1,150 s logged
    assert row["logged_seconds"] == pytest.approx(3 * 50 + 50 + 500 + 50 + 50)


def test_a_warm_restart_counts_from_its_first_step(tmp_path):
    _log(tmp_path / "long" / "unet" / "log.jsonl", [(8000 + 25 * i, 10.0 * i) for i in range(1, 41)])
    row = _module().stage_time(tmp_path / "long" / "unet" / "log.jsonl", gap=600)
    assert row["from_step"] == 8000 and row["steps"] == 1000 and row["seconds"] == pytest.approx(400.0)


def test_cli_prints_each_stage_and_refuses_a_folder_without_logs(tmp_path, capsys):
    _log(tmp_path / "run" / "vae" / "log.jsonl", [(25 * i, 5.0 * i) for i in range(1, 9)])
    _log(tmp_path / "run" / "unet" / "log.jsonl", [(25 * i, 20.0 * i) for i in range(1, 9)])
    out = tmp_path / "times.json"
    assert _module().main([str(tmp_path / "run"), "--json", str(out)]) == 0
    stages = [r["stage"] for r in json.loads(out.read_text())]
    assert stages == ["vae", "unet"]
    assert "unet" in capsys.readouterr().out
    assert _module().main([str(tmp_path / "empty")]) == 2
    assert "no stage logs" in capsys.readouterr().err


def test_a_line_that_is_not_a_log_line_is_named(tmp_path):
    log = tmp_path / "run" / "unet" / "log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text('{"step": 25, "time": 1.0}\nnot json\n')
    with pytest.raises(SystemExit, match="log.jsonl:2"):
        _module().stage_time(log, gap=600)
