"""The field plan's HTML report: every phase's gates from report.json, and PNG plots drawn with
matplotlib (a development dependency; `brain cycle` writes report.json without it).

Plots: the loss curves on the robot (LoRA) and in the cloud, mean |cross-track error| per track
before and after, loop lateness per phase, and the OTA state timelines.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def _phase(report: dict[str, Any], number: int) -> dict[str, Any]:
    return next((p for p in report["phases"] if p["number"] == number), {"data": {}})


def _loss(report: dict[str, Any], out: Path) -> str | None:
    robot, cloud = _phase(report, 4)["data"].get("loss"), _phase(report, 6)["data"].get("loss")
    if not robot and not cloud:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for series, label in ((robot, "robot (LoRA, etc/train/pi5-donkey.json)"),
                          (cloud, "cloud (brain-cloud, full fine-tune)")):
        if series:
            ax.plot([s for s, _ in series], [v for _, v in series], marker=".", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out / "loss.png")


def _cte(report: dict[str, Any], out: Path) -> str | None:
    """|cte| along the lap, seed against deployed, one panel per track (log scale: the seed
    off the road is metres, the deployed model centimetres). Gaps: stretches never reached."""
    ev = _phase(report, 9)["data"].get("eval")
    if not ev:
        return None
    tracks = list(ev["before"])
    fig, axes = plt.subplots(1, len(tracks), figsize=(3.6 * len(tracks), 3.2), squeeze=False,
                             sharey=True)
    for i, (ax, track) in enumerate(zip(axes[0], tracks, strict=True)):
        for key, label in (("before", "seed (before)"), ("after", "deployed (after)")):
            r = ev[key][track]
            along = r.get("cte_along_track") or []
            xs = [(k + 0.5) * 100 / max(len(along), 1) for k in range(len(along))]
            ys = [float("nan") if v is None else v * 100 for v in along]
            ax.plot(xs, ys, marker=".", label=f"{label}: mean {r['mean_abs_cte'] * 100:.3g} cm")
        ax.set_title(f"{track} ({'new' if i == 0 else 'kept'})", fontsize=10)
        ax.set_xlabel("position along the lap (%)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("mean |cross-track error| (cm)")
    return _save(fig, out / "cte.png")


def _lateness(report: dict[str, Any], out: Path) -> str | None:
    rows = [(f"{p['number']}. {p['title'][:30]}", p["data"]["lateness"])
            for p in report["phases"] if p.get("data", {}).get("lateness", {}).get("bins_us")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, lat in rows:
        edges = [float(k.lstrip(">=")) / 1e3 for k in lat["bins_us"]]
        counts = list(lat["bins_us"].values())
        ax.step(edges, counts, where="post",
                label=f"{name} (p99 {lat['p99_ms']} ms, {lat['ticks']} ticks)")
    ax.set_yscale("log")
    ax.set_xlabel("control loop lateness (ms)")
    ax.set_ylabel("ticks")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out / "lateness.png")


def _timeline(report: dict[str, Any], out: Path) -> str | None:
    series = [("good bundle", _phase(report, 8)["data"].get("timeline")),
              ("bad bundle", _phase(report, 9)["data"].get("bad_timeline"))]
    series = [(n, s) for n, s in series if s]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 2.4))
    for row, (_name, states) in enumerate(series):
        t0 = states[0]["t"]
        for i, st in enumerate(states):
            end = states[i + 1]["t"] if i + 1 < len(states) else st["t"] + 0.5
            ax.barh(row, end - st["t"], left=st["t"] - t0, height=0.5)
            ax.text(st["t"] - t0, row + 0.32, st["phase"], fontsize=8)
    ax.set_yticks(range(len(series)), [n for n, _ in series])
    ax.set_xlabel("seconds since upload")
    return _save(fig, out / "ota.png")


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def write_html(run_dir: Path, report: dict[str, Any] | None = None) -> Path:
    run_dir = Path(run_dir)
    report = report or json.loads((run_dir / "report.json").read_text())
    plots = [(title, fn(report, run_dir)) for title, fn in (
        ("Training loss", _loss), ("Cross-track error along the track, before and after", _cte),
        ("Control loop lateness per phase", _lateness), ("OTA state timeline", _timeline))]
    esc = html.escape
    rows = []
    for p in report["phases"]:
        verdict = "PASS" if p["passed"] else "FAIL"
        rows.append(f'<tr class="phase {verdict.lower()}"><th colspan="4">{p["number"]}. '
                    f'{esc(p["title"])} — {verdict} ({p["seconds"]:.0f} s)'
                    + (f' <span class="error">{esc(p["error"])}</span>' if p["error"] else "")
                    + "</th></tr>")
        for g in p["gates"]:
            rows.append(f'<tr class="gate {"pass" if g["passed"] else "fail"}">'
                        f'<td>{esc(g["name"])}</td><td>{esc(str(g["value"]))}</td>'
                        f'<td>{esc(str(g["limit"]))}</td>'
                        f'<td>{"pass" if g["passed"] else "FAIL"}</td></tr>')
    figures = "\n".join(f'<figure><img src="{esc(png)}" alt="{esc(title)}">'
                        f"<figcaption>{esc(title)}</figcaption></figure>"
                        for title, png in plots if png)
    verdict = "PASSED" if report["passed"] else "FAILED"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>brain field plan: {verdict}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d232a; }}
table {{ border-collapse: collapse; width: 100%; max-width: 1000px; }}
td, th {{ text-align: left; padding: .2rem .5rem; border-bottom: 1px solid #e3e6ea; }}
tr.phase th {{ background: #eef2f6; padding-top: .6rem; }}
tr.fail td, tr.phase.fail th, .error {{ color: #b42318; }}
figure {{ display: inline-block; margin: 1rem 1rem 0 0; }}
img {{ max-width: 770px; border: 1px solid #e3e6ea; }}
</style></head><body>
<h1 id="verdict" data-passed="{str(report['passed']).lower()}">brain field plan on the
simulator: {verdict}</h1>
<p>{len(report["phases"])} of 9 phases run in {report["seconds"]:.0f} s
({"short cycle" if report["short"] else "full cycle"}: {esc(json.dumps(report["sizes"]))}).</p>
<table id="gates"><thead><tr><th>gate</th><th>measured</th><th>limit</th><th>verdict</th></tr>
</thead><tbody>
{chr(10).join(rows)}
</tbody></table>
<section id="plots">{figures}</section>
</body></html>
"""
    path = run_dir / "report.html"
    path.write_text(page)
    return path
