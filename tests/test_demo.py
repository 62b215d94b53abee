"""The demo end to end on a tiny configuration (the --quick sizes are checked by hand, not
here): files written, result structure, the command line, and the no-matplotlib path."""

from __future__ import annotations

import io
import json

import pytest
from bptt import __main__ as cli
from bptt import demo


def check_results(report, cfg):
    res = report["results"]
    assert len(res["full_bptt"]) == 2 * len(cfg.lengths) * cfg.seeds
    assert {(r["cell"], r["T"]) for r in res["full_bptt"]} == {
        (c, t) for c in ("rnn", "lstm") for t in cfg.lengths}
    windows = {*cfg.tbptt_windows, cfg.tbptt_len}
    assert len(res["tbptt"]) == len(windows) * cfg.seeds
    assert sorted({r["k2"] for r in res["tbptt"]}) == sorted(windows)
    for r in res["tbptt"]:
        assert r["placement"] == cfg.tbptt_placement and r["init"] == cfg.tbptt_init
        assert r["test_mean_prediction_mse"] > 0
        assert r["markers_in_window"] in {"never", "sometimes", "always (both)"}
        assert 0 <= r["frac_episodes_both_markers_in_window"] <= 1
        assert (r["markers_in_window"] == "never") == (
            r["frac_episodes_any_marker_in_window"] == 0 and r["k2"] <= r["T"] - r["T"] // 2)
        assert r["best_test_mse"] <= r["curve"][-1][1] == r["final_test_mse"]
    assert report["baselines"]["experiment_3_placement"] == cfg.tbptt_placement
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


def tb_run(k, final, best=None, T=100):
    return {"k2": k, "T": T, "seed": 0, "final_test_mse": final,
            "best_test_mse": final if best is None else best, "updates": 10,
            "max_updates": 10, "markers_in_window": "never" if k <= T // 2 else "always (both)"}


def test_truncation_verdict_needs_both_halves():
    cfg = demo.DemoConfig()
    assert cfg.tbptt_placement == "hochreiter" and cfg.tbptt_init == "chrono"
    for preset in ("default", "quick", "full"):
        c = demo.DemoConfig.preset(preset)
        # at least two windows that never contain a marker, judged against the full one
        assert len([k for k in c.tbptt_windows if k <= c.tbptt_len - c.tbptt_len // 2]) >= 2
    v = demo.truncation_verdict
    ok = v([tb_run(10, 0.165), tb_run(25, 0.160), tb_run(100, 0.004)], cfg)
    assert ok["shown"] is True and "hochreiter" in ok["evidence"] and "NOT" not in ok["evidence"]
    # a short window that learnt something: not shown, whatever the full window did
    partly = v([tb_run(10, 0.165), tb_run(25, 0.09), tb_run(100, 0.004)], cfg)
    assert partly["shown"] is False and "NOT shown" in partly["evidence"]
    dipped = v([tb_run(10, 0.165, best=0.11), tb_run(100, 0.004)], cfg)
    assert dipped["shown"] is False
    # the full window did not solve it: not shown either
    stuck = v([tb_run(10, 0.165), tb_run(100, 0.15)], cfg)
    assert stuck["shown"] is False and "full window did not solve" in stuck["evidence"]
    # missing either kind of run: not shown
    assert v([tb_run(100, 0.004)], cfg)["shown"] is False
    assert v([tb_run(10, 0.165)], cfg)["shown"] is False
    # windows in between are reported but not judged
    mid = v([tb_run(10, 0.165), tb_run(75, 0.02), tb_run(100, 0.004)], cfg)
    assert mid["shown"] is True and "k=75" in mid["evidence"]


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
    assert cfg.tbptt_placement == "hochreiter"
    args = demo.build_parser().parse_args(["--tiny", "--tbptt-placement", "arjovsky"])
    assert demo.config_from_args(args).tbptt_placement == "arjovsky"
    args = demo.build_parser().parse_args(["--tiny", "--tbptt-init", "forget_bias"])
    assert demo.config_from_args(args).tbptt_init == "forget_bias"
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--tbptt-placement", "middle"])
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--lengths", "a,b"])
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--quick", "--full"])
    with pytest.raises(ValueError, match="preset"):
        demo.DemoConfig.preset("huge")


def test_without_matplotlib_still_writes_json(tmp_path, no_matplotlib):
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
