"""The report's HTML: inline CSS, no script, escaped text; one function per section and the page around them."""

from __future__ import annotations

import datetime
import html
import posixpath
from collections.abc import Sequence

from vitpose_batch.defaults import KEYPOINT_THRESHOLD
from vitpose_batch.review.evaluate import BOX_METRICS, METRICS
from vitpose_batch.review.report.plots import plot_keypoint_scores, plot_person_scores, plot_persons_per_image
from vitpose_batch.review.report.records import provenance_rows, run_seconds
from vitpose_batch.review.report.samples import Overlay
from vitpose_batch.review.report.stats import MAX_ERROR_KINDS, Stats

MAX_RUNS_SHOWN = 50  # the run table shows the latest; totals cover them all

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1160px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; border-bottom: 1px solid #eee;
text-align: left; vertical-align: top; } th { background: #f4f4f4; } td.n { text-align: right;
font-variant-numeric: tabular-nums; } .muted { color: #777; font-size: 12px; } .uri { font-family: monospace;
font-size: 11px; word-break: break-all; } .cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card b { display: block; font-size: 20px; } .plots img { max-width: 100%; margin: 6px 8px 6px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 12px; }
figure { margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 6px; background: #fafafa; }
figure img { display: block; max-width: 100%; max-height: 260px; margin: 0 auto; }
.lowest { border-top: 4px solid #cc3311; } .median { border-top: 4px solid #ddaa33; }
.highest { border-top: 4px solid #228833; } .missing { height: 120px; display: flex; align-items: center;
justify-content: center; color: #a33; font-size: 12px; text-align: center; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def table_html(header: Sequence[str], rows: Sequence[Sequence], numeric: Sequence[int] = ()) -> str:
    """A table; `numeric` columns right-aligned. Cells are escaped text unless wrapped in `Markup`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td{' class=n' if i in numeric else ''}>{cell if isinstance(cell, Markup) else esc(cell)}</td>"
        for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Markup(str):
    """HTML that is already safe (built here from escaped parts)."""


def when(timestamp) -> str:
    if not isinstance(timestamp, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if not seconds:
        return "-"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h {minutes:02d}m {secs:04.1f}s" if hours else f"{minutes}m {secs:04.1f}s" if minutes \
        else f"{secs:.1f}s"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def section_provenance(job: dict | None, stats: Stats) -> str:
    return f'<h2 id="provenance">Provenance</h2>{table_html(["setting", "value"], provenance_rows(job, stats))}'


def section_runs(runs: Sequence[dict], speed: dict) -> str:
    if not runs:
        return '<h2 id="runs">Runs and throughput</h2><p class="muted">No run records (_runs/) found.</p>'
    shown = runs[-MAX_RUNS_SHOWN:]
    rows = [(r.get("run_id", "?"), r.get("status", "?"), r.get("version", "?"), when(r.get("started")),
             duration(run_seconds(r)), f"{int(r.get('images') or 0):,}", f"{int(r.get('persons') or 0):,}",
             f"{int(r.get('errors') or 0):,}",
             rate((r.get("images") or 0) / s) if (s := run_seconds(r)) else "-") for r in shown]
    note = f"<p class=muted>The latest {len(shown)} of {len(runs)} runs.</p>" if len(shown) < len(runs) else ""
    return (f'<h2 id="runs">Runs and throughput</h2>'
            f'<div class="cards"><div class="card"><b>{rate(speed["images_per_s"])}</b>images/s</div>'
            f'<div class="card"><b>{rate(speed["persons_per_s"])}</b>persons/s</div>'
            f'<div class="card"><b>{duration(speed["seconds"])}</b>run time</div>'
            f'<div class="card"><b>{speed["runs"]}</b>runs</div></div>'
            f'<p class="muted">Throughput: images and persons the {speed["timed_runs"]} finished runs wrote, over '
            f'the sum of their run times (runs killed or still running have no end time).</p>'
            + table_html(["run", "status", "version", "started", "time", "images", "persons", "errors", "images/s"],
                         rows, numeric=(5, 6, 7, 8)) + note)


def section_counts(stats: Stats) -> str:
    cards = [(f"{stats.images:,}", "images (rows)"), (f"{stats.persons:,}", "persons"),
             (f"{stats.errors:,}", f"error rows ({share(stats.errors, stats.images)})"),
             (f"{stats.empty_images:,}", "images without a person"), (f"{stats.parts:,}", "part files")]
    html_cards = "".join(f'<div class="card"><b>{esc(v)}</b>{esc(label)}</div>' for v, label in cards)
    kinds = sorted(stats.error_kinds.items(), key=lambda item: (-item[1].count, item[0]))
    rows = [(kind, f"{entry.count:,}", Markup("<br>".join(f'<span class="uri">{esc(u)}</span>'
                                                          for u in entry.examples))) for kind, entry in kinds]
    if stats.other_errors:
        rows.append((f"(other kinds, beyond the first {MAX_ERROR_KINDS})", f"{stats.other_errors:,}", ""))
    errors = (table_html(["error kind", "rows", "examples"], rows, numeric=(1,)) if rows
              else "<p>No error rows.</p>")
    return (f'<h2 id="counts">Counts</h2><div class="cards">{html_cards}</div>'
            f'<h3 id="errors">Error kinds</h3><p class="muted">Error messages grouped by the text before their '
            f'first ":", numbers as N.</p>{errors}')


def section_videos(stats: Stats) -> str:
    """The videos' counts (videos, frames, tracks, and per video / per track averages); "" for images only."""
    tally = stats.video
    if not tally.videos:
        return ""
    videos, frames, tracks = tally.videos, tally.frames, tally.tracks
    cards = [(f"{videos:,}", "videos"), (f"{frames:,}", "frames (rows)"), (f"{tracks:,}", "tracks"),
             (f"{frames / videos:,.1f}", "frames per video"), (f"{tracks / videos:,.1f}", "tracks per video")]
    html_cards = "".join(f'<div class="card"><b>{esc(v)}</b>{esc(label)}</div>' for v, label in cards)
    return (f'<h2 id="videos">Videos</h2><div class="cards">{html_cards}</div>'
            f'<p class="muted">Each sampled frame of a video is one row ({frames:,} of the {stats.images:,} rows); '
            f'a track is one person followed through a video (distinct video and track id).</p>')


def section_distributions(stats: Stats) -> str:
    plots = [plot_person_scores(stats.person_scores), plot_persons_per_image(stats.persons_per_image)]
    if stats.keypoint_scores is not None:
        plots.append(plot_keypoint_scores(stats.keypoint_scores, stats.keypoint_names))
    notes = []
    if stats.scores_outside:
        notes.append(f"{stats.scores_outside:,} person scores outside [0, 1] are counted in the end bins "
                     "(non-finite ones are left out).")
    if stats.keypoints_skipped:
        notes.append(f"{stats.keypoints_skipped:,} persons with another keypoint count are left out of the "
                     "keypoint plot.")
    images = "".join(f'<img alt="plot" src="{uri}">' for uri in plots)
    note = "".join(f'<p class="muted">{esc(n)}</p>' for n in notes)
    return f'<h2 id="distributions">Distributions</h2><div class="plots">{images}</div>{note}'


def section_low_confidence(stats: Stats) -> str:
    rows = [(f"score < {t:g}", f"{n:,}", share(n, stats.persons)) for t, n in stats.below.items()]
    return ('<h2 id="low-confidence">Low-confidence persons</h2>'
            + table_html(["persons", "count", f"share of {stats.persons:,}"], rows, numeric=(1, 2)))


def section_samples(overlays: Sequence[Overlay]) -> str:
    if not overlays:
        return '<h2 id="samples">Samples</h2><p>No persons to show.</p>'
    cells = []
    for overlay in overlays:
        s = overlay.sample
        picture = (f'<img alt="{esc(s.group)} person" src="{overlay.data_uri}">' if overlay.data_uri
                   else f'<div class="missing">cannot draw: {esc(overlay.problem)}</div>')
        problem = f'<br><span class="muted">{esc(overlay.problem)}</span>' if overlay.data_uri and overlay.problem \
            else ""
        cells.append(f'<figure class="{esc(s.group)}">{picture}<figcaption><b>{esc(s.group)}</b> · score '
                     f'{s.score:.3f}<br><span class="uri">{esc(s.image_uri)}</span>{problem}</figcaption></figure>')
    return (f'<h2 id="samples">Samples</h2><p class="muted">The lowest-, median- and highest-scored persons, '
            f'lowest first, each on its image decoded as annotate decoded it; keypoints scored above '
            f'{KEYPOINT_THRESHOLD:g} are drawn.</p><div class="grid">{"".join(cells)}</div>')


def section_accuracy(metrics: dict | None, ground_truth: str | None) -> str:
    if metrics is None:
        return ('<h2 id="accuracy">Accuracy</h2><p class="muted">No ground truth given '
                '(--ground-truth COCO_JSON adds the AP table).</p>')
    parts = [f'<h2 id="accuracy">Accuracy</h2><p>Against <span class="uri">{esc(ground_truth)}</span>, '
             f'{esc(metrics["protocol"])} protocol.</p>',
             "<h3>Keypoints</h3>" + table_html(METRICS, [[f"{metrics[m]:.3f}" for m in METRICS]],
                                               numeric=range(len(METRICS)))]
    if "detector_box" in metrics:
        parts.append(f"<h3>Person boxes ({esc(metrics['detector'])})</h3>"
                     + table_html(BOX_METRICS, [[f"{metrics['detector_box'][m]:.3f}" for m in BOX_METRICS]],
                                  numeric=range(len(BOX_METRICS))))
    parts.append(f'<p class="muted">{metrics["predictions"]:,} predictions on {metrics["images_with_predictions"]:,} '
                 f'of {metrics["ground_truth_images"]:,} ground-truth images; '
                 f'{metrics["predictions_for_unknown_images"]:,} for images not in the ground truth (left out).</p>')
    return "".join(parts)


def page(predictions: str, sections: Sequence[str]) -> str:
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>vitpose-batch report: {esc(posixpath.basename(predictions.rstrip('/')) or predictions)}</title>"
            f"<style>{CSS}</style></head><body><h1>vitpose-batch report</h1>"
            f'<p class="muted"><span class="uri">{esc(predictions)}</span> · made {made}</p>'
            + "".join(sections) + "</body></html>\n")
