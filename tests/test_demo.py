"""The demo end to end on a tiny configuration (the --quick sizes are checked by hand, not
here): files written, result structure, the command line, and the no-matplotlib path."""

from __future__ import annotations

import builtins
import io
import json
import sys

import pytest
from bptt import __main__ as cli
from bptt import demo


def check_results(report, cfg):
    res = report["results"]
    assert len(res["full_bptt"]) == 2 * len(cfg.lengths) * cfg.seeds
    assert {(r["cell"], r["T"]) for r in res["full_bptt"]} == {
        (c, t) for c in ("rnn", "lstm") for t in cfg.lengths}
    assert len(res["tbptt"]) == (len(cfg.tbptt_windows) + 1) * cfg.seeds
    assert sorted({r["k2"] for r in res["tbptt"]}) == sorted(
        {*cfg.tbptt_windows, cfg.tbptt_len})
    assert len(res["clipping"]) == 2 * cfg.clip_seeds
    for r in res["full_bptt"]:
        assert len(r["dh_norm_after"]) == r["T"]
        assert r["curve"][0][0] == 0 and r["iterations"] <= r["max_iterations"]
        assert r["status"] in {"solved", "partly", "no", "diverged"}
        assert set(r["gradient_flow_after"]) >= {"ratio", "decades_per_100_steps"}
    for r in res["clipping"]:
        assert len(r["grad_norms"]) == r["iterations"] == len(r["losses"])
        assert isinstance(r["blew_up"], bool)
    assert [v["claim"][:2] for v in report["verdicts"]] == ["1.", "2.", "3.", "4."]
    assert all(isinstance(v["shown"], bool) for v in report["verdicts"])


def test_run_demo_tiny_writes_files(tmp_path):
    cfg = demo.DemoConfig.preset("tiny")
    out = io.StringIO()
    report = demo.run_demo(cfg, tmp_path / "out", stream=out, quiet=False)
    files = set(report["files"])
    assert {"results.json", "table.txt"} <= files
    has_mpl = demo.diagnostics.have_matplotlib()
    assert ("report.png" in files) == has_mpl
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["config"]["lengths"] == list(cfg.lengths)
    check_results(saved, cfg)
    text = out.getvalue()
    assert "held-out MSE" in text and "wall time" in text
    assert text.count("shown]") == 4
    table = (tmp_path / "out" / "table.txt").read_text()
    assert table.count("\n4 ") == 2 * cfg.clip_seeds


def test_command_line(tmp_path, capsys):
    rc = cli.main(["demo", "--tiny", "--out", str(tmp_path / "cli"), "--seed", "3",
                   "--no-plot"])
    assert rc == 0
    saved = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert saved["config"]["seed"] == 3
    assert {r["seed"] for r in saved["results"]["full_bptt"]} == {3}
    assert not (tmp_path / "cli" / "report.png").exists()
    assert "--no-plot" in capsys.readouterr().out


def test_presets_and_options():
    q = demo.DemoConfig.preset("quick")
    d = demo.DemoConfig.preset("default")
    f = demo.DemoConfig.preset("full")
    assert max(q.lengths) < max(d.lengths) <= max(f.lengths)
    assert d.lengths == (50, 100, 200)
    args = demo.build_parser().parse_args(["--quick", "--lengths", "10,20", "--seeds", "2"])
    cfg = demo.config_from_args(args)
    assert cfg.lengths == (10, 20) and cfg.seeds == 2 and cfg.rnn_iters == q.rnn_iters
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--lengths", "a,b"])
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--quick", "--full"])
    with pytest.raises(ValueError, match="preset"):
        demo.DemoConfig.preset("huge")


def test_without_matplotlib_still_writes_json(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    for mod in [k for k in sys.modules if k == "matplotlib" or k.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    out = io.StringIO()
    report = demo.run_demo(demo.DemoConfig.preset("tiny"), tmp_path, stream=out)
    assert "results.json" in report["files"] and "report.png" not in report["files"]
    assert "matplotlib is not installed" in out.getvalue()
    assert "bptt[plot]" in out.getvalue()


def test_progress_bar_output():
    s = io.StringIO()
    bar = demo.Progress(100, stream=s)
    bar.advance(50, "half")
    bar.close()
    text = s.getvalue()
    assert "50.0%" in text and "100.0%" in text and "half" in text
    q = io.StringIO()
    quiet = demo.Progress(10, stream=q, quiet=True)
    quiet.advance(10)
    quiet.close()
    assert q.getvalue() == ""
