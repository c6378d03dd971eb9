"""The report: evaluate every model, draw every picture, write the tables and the page.

Report folder (``OUT``)::

    index.html                 the page (written last, atomically)
    report.json                settings, models, maps and every file of the report
    results.json|md, curves.png, curves.csv      evaluation (softloc.evaluation.protocol)
    tables/<metric>.csv        every table of the page
    tsne.png, tsne.csv         t-SNE of query descriptors, coloured by position
    gradcam/query_<k>.png, gradcam.csv           Grad-CAM rows, one figure per query
    movie.mp4                                    Grad-CAM over a query drive (a video)
    failures/failures_<model>.png, failures.csv  worst failures per model
    sweeps/sweep_<kind>.*      copies of the sweep outputs found
    maps/<name>/               maps built for training runs (cached between reports)
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from softloc.atomic import write_json, write_text
from softloc.collapse import marked_name, model_collapse_note
from softloc.data.places import PlaceTable
from softloc.evaluation.metrics import RECALL_TOP_N
from softloc.evaluation.protocol import (
    PRECISION_COVERAGE_PNG,
    metrics_by_condition,
    query_places,
    write_results,
)
from softloc.explain.failures import write_failures
from softloc.explain.gradcam import DEFAULT_THRESHOLD_M, gradcam_row, write_gradcam
from softloc.explain.movie import write_movie
from softloc.explain.queries import MapRetrieval, retrieve
from softloc.explain.tsne import write_tsne
from softloc.output_folders import claim_output_folder
from softloc.report import html
from softloc.report.collect import ReportRun, copy_sweeps, find_sweeps, resolve_runs
from softloc.report.tables import tables_from_results

logger = logging.getLogger(__name__)

INDEX = "index.html"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "table"


def curves_csv(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The curves of ``results`` as long CSV: model, condition, curve, threshold_m, value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "condition", "curve", "threshold_m", "value"])
    for model, by_condition in results.items():
        for condition, metrics in by_condition.items():
            curves = metrics.get("curves", {}) if isinstance(metrics, Mapping) else {}
            thresholds = curves.get("thresholds", [])
            for name, values in curves.items():
                if name == "thresholds":
                    continue
                for t, v in zip(thresholds, values, strict=False):
                    writer.writerow([model, condition, name, f"{t:g}", repr(float(v))])
    return buffer.getvalue()


def gradcam_queries(queries: PlaceTable, count: int) -> list[int]:
    """``count`` fixed queries: the middle query of each condition, then evenly spread ones."""
    if count < 1 or len(queries) == 0:
        return []
    middles = [int(rows[len(rows) // 2]) for rows in
               (np.flatnonzero(queries.condition == c) for c in queries.conditions())]
    spread = np.linspace(0, len(queries) - 1, count).round().astype(int).tolist()
    return list(dict.fromkeys(middles + spread))[:count]


def _write_gradcams(
    retrievals: Sequence[MapRetrieval], out: Path, count: int, threshold_m: float
) -> tuple[list[tuple[Path, str]], Path]:
    """Grad-CAM figures of ``count`` fixed queries (every model a row) and gradcam.csv."""
    queries = retrievals[0].queries
    figures = []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["figure", "model", "query", "condition", "retrieved", "distance_m",
                     f"within_{threshold_m:g}m", "descriptor_distance", "note"])
    for k, i in enumerate(gradcam_queries(queries, count), start=1):
        rows = [gradcam_row(r.name, r.the_map, r.model, queries.image_path(i), queries.xy[i])
                for r in retrievals]
        caption = (f"query {queries.path[i]} ({queries.condition[i]}, x={queries.xy[i, 0]:.0f}"
                   f" m, y={queries.xy[i, 1]:.0f} m)")
        path = write_gradcam(rows, out / "gradcam" / f"query_{k}.png", threshold_m, caption)
        figures.append((path, caption))
        for row in rows:
            writer.writerow([path.name, row.model, queries.path[i], queries.condition[i],
                             row.retrieved_path, f"{row.distance_m:.2f}",
                             int(row.distance_m <= threshold_m),
                             f"{row.descriptor_distance:.5f}", row.note])
    table = write_text(out / "gradcam" / "gradcam.csv", buffer.getvalue())
    return figures, table


def build_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    places: PlaceTable,
    out: str | os.PathLike[str],
    split: str = "test",
    sweep_dirs: Sequence[str | os.PathLike[str]] = (),
    results: Mapping[str, Mapping[str, Any]] | None = None,
    spacing: float = 0.0,
    seed: int = 0,
    tsne_points: int = 600,
    gradcam_count: int = 3,
    failure_count: int = 6,
    movie_frames: int = 12,
    threshold_m: float = DEFAULT_THRESHOLD_M,
    title: str = "softloc report",
    progress: bool = True,
) -> Path:
    """Write the report of ``run_dirs`` (see :mod:`softloc.report.collect`) into ``out``.

    Args:
        run_dirs: map folders, training run folders or demo folders.
        places: the dataset the maps' references and the queries come from.
        out: the report folder.
        split: the split whose queries are evaluated and drawn.
        sweep_dirs: folders holding ``sweep_<kind>.csv/.png/.json`` files; the RUN_DIRs are
            searched too.
        results: ``results[model][condition]`` already computed for these maps (by name);
            when None, every map is evaluated as :func:`evaluate_map` would, from the same
            query descriptors as the pictures (one extraction per model).
        spacing: reference spacing (m) of the maps built for training runs.
        seed: seed of the t-SNE.
        tsne_points, gradcam_count, failure_count: how many queries each picture shows.
        movie_frames: frames of the Grad-CAM movie over a query drive (``movie.mp4``, shown in
            a ``<video>`` element); 0 leaves the movie out.
        threshold_m: a retrieval within this distance counts as correct in the Grad-CAM panels.

    Returns:
        The path of ``index.html``.

    Raises:
        OutputFolderError: ``out`` holds something other than a report (checked first, with
            its writability, before any map is built or evaluated).
    """
    out = Path(out)
    claim_output_folder(out, "report", allow=("evaluation",))
    out.mkdir(parents=True, exist_ok=True)
    runs = resolve_runs(run_dirs, places, out, split=split, spacing=spacing, progress=progress)
    sweeps = find_sweeps([*sweep_dirs, *{r.source for r in runs}])
    files: list[str] = []

    # each model describes its queries once: the pictures and (when not given) the tables
    retrievals = [
        retrieve(r.map_dir, places, split, name=r.name, top_k=max(RECALL_TOP_N),
                 progress=progress)
        for r in runs
    ]
    if results is None:
        results = {
            r.name: metrics_by_condition(
                r.queries, r.the_map.places.xy, r.retrieved,
                conditions=query_places(places, r.the_map, split).conditions(),
                scores=r.scores,
            )
            for r in retrievals
        }
    missing = [r.name for r in runs if r.name not in results]
    if missing:
        raise ValueError(f"results lack the model(s) {missing}; pass results=None to evaluate")
    # a collapsed model is named so in every table: "triplet (collapsed at step 300)"
    results = {marked_name(r.name, r.map_dir): results[r.name] for r in runs}
    write_results(results, out, title=title)
    write_text(out / "curves.csv", curves_csv(results))
    files += ["results.json", "results.md", "curves.png", "curves.csv"]
    if (out / PRECISION_COVERAGE_PNG).is_file():
        files.append(PRECISION_COVERAGE_PNG)

    tables_body = []
    for table in tables_from_results(results):
        href = f"tables/{_slug(table.name)}.csv"
        write_text(out / href, table.csv_text())
        files.append(href)
        tables_body.append(html.table_html(table, href))

    tsne_png = write_tsne(retrievals, out, max_points=tsne_points, seed=seed)
    files += ["tsne.png", "tsne.csv"]
    gradcams, gradcam_table = _write_gradcams(retrievals, out, gradcam_count, threshold_m)
    files += [p.relative_to(out).as_posix() for p, _ in gradcams]
    files.append(gradcam_table.relative_to(out).as_posix())
    movie = write_movie(retrievals, out, max_frames=movie_frames, threshold_m=threshold_m,
                        progress=progress) if movie_frames else None
    if movie is not None:
        files.append(movie.name)
    failure_pngs = write_failures(retrievals, out / "failures", count=failure_count)
    files += [p.relative_to(out).as_posix() for p in failure_pngs] + ["failures/failures.csv"]
    sweep_copies = copy_sweeps(sweeps, out / "sweeps")
    files += sorted(p.relative_to(out).as_posix() for f in sweep_copies.values()
                    for p in f.values())

    sections = _sections(runs, out, tables_body, tsne_png, gradcams, failure_pngs,
                         sweep_copies, threshold_m, retrievals)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summary = {
        "title": title,
        "created": created,
        "data": str(places.root),
        "split": split,
        "seed": seed,
        "threshold_m": threshold_m,
        "models": [{"name": r.name, "source": str(r.source), "map": str(r.map_dir),
                    "map_built_by_report": r.built,
                    "collapse": model_collapse_note(r.map_dir)} for r in runs],
        "sweeps": {kind: sorted(p.name for p in f.values()) for kind, f in sweep_copies.items()},
        "files": files,
    }
    write_json(out / "report.json", summary)
    intro = (
        f"<p>{len(runs)} model(s) on split <b>{escape(split)}</b> of "
        f"<code>{escape(str(places.root))}</code>; made {escape(created)}. "
        f"Settings and every file: {html.link('report.json')}.</p>"
    )
    return write_text(out / INDEX, html.page(title, intro, sections))


def _sections(
    runs: Sequence[ReportRun],
    out: Path,
    tables_body: Sequence[str],
    tsne_png: Path,
    gradcams: Sequence[tuple[Path, str]],
    failure_pngs: Sequence[Path],
    sweeps: Mapping[str, Mapping[str, Path]],
    threshold_m: float,
    retrievals: Sequence[MapRetrieval],
) -> list[tuple[str, str, str]]:
    def rel(path: Path) -> str:
        return path.relative_to(out).as_posix()

    model_rows = "".join(
        f'<tr><td class="name">{escape(r.name)}</td><td class="name">{escape(str(r.source))}'
        f'</td><td class="name">{escape(str(r.map_dir))}</td>'
        f"<td>{len(q.the_map)}</td><td>{len(q.queries)}</td></tr>"
        for r, q in zip(runs, retrievals, strict=True)
    )
    models = (
        '<table><thead><tr><th class="name">model</th><th class="name">from</th>'
        '<th class="name">map</th><th>references</th><th>queries</th></tr></thead>'
        f"<tbody>{model_rows}</tbody></table>"
    )
    sections = [
        ("models", "Models", models),
        ("tables", "Results",
         '<p class="note">Top-N: share of queries whose best of the first N retrieved '
         "references lies within the threshold (m); the upper bound is the share with any "
         "reference that close. Best model per column in bold.</p>" + "".join(tables_body)),
        ("curves", "Accuracy curves",
         html.figure_html("curves.png", "top-1 accuracy against the distance threshold "
                          "(dashed: upper bound)", ["curves.csv", "results.json"])),
    ]
    if (out / PRECISION_COVERAGE_PNG).is_file():
        sections.append(
            ("confidence", "Confidence",
             html.figure_html(PRECISION_COVERAGE_PNG, "precision of the top-1 fixes within 10 m"
                              " against the share accepted, as the confidence threshold falls;"
                              " coverage_p95_10m in the tables is where a line crosses 95 %",
                              ["results.json"])))
    if sweeps:
        body = []
        for kind, files in sorted(sweeps.items()):
            body.append(f"<h3>sweep: {escape(kind)}</h3>")
            if ".png" in files:
                body.append(html.figure_html(rel(files[".png"]), f"sweep {kind}",
                                             [rel(p) for s, p in files.items() if s != ".png"]))
            if ".csv" in files:
                body.append(html.csv_preview_html(files[".csv"], rel(files[".csv"])))
            elif ".png" not in files:
                body.append(html.files_line([rel(p) for p in files.values()]))
        sections.append(("sweeps", "Sweeps", "".join(body)))
    sections.append(("tsne", "t-SNE of query descriptors", (
        '<p class="note">Each point is a query, coloured by where it was taken (the last panel '
        "is the colour key: the reference positions in the same colours). Smooth colour bands "
        "mean the descriptor encodes place; mixed-colour clusters mean it encodes something "
        "else (the condition).</p>"
        + html.figure_html(rel(tsne_png), "t-SNE, one panel per model", ["tsne.csv"]))))
    gradcam_body = [
        '<p class="note">Grad-CAM on the last convolutional layer of the gradient of the '
        "negative squared descriptor distance between the query and its top-1 reference: "
        "warm regions pull the two descriptors together. The distance between the two "
        f"cameras is green within {threshold_m:g} m, red beyond. One row per model.</p>"
    ]
    for path, caption in gradcams:
        gradcam_body.append(html.figure_html(rel(path), caption, ["gradcam/gradcam.csv"]))
    movies = sorted(out.glob("movie.*"))
    if movies:
        gradcam_body.append(html.video_html(
            rel(movies[0]), "Grad-CAM over a query drive, every model a row (the first query "
            "traversal in time order)"))
    sections.append(("gradcam", "Grad-CAM", "".join(gradcam_body)))
    failure_note = ('<p class="note">The queries whose top-1 reference is farthest away: '
                    "query, retrieved reference (its distance), true nearest reference.</p>")
    galleries = [html.figure_html(rel(path), path.stem.removeprefix("failures_"),
                                  ["failures/failures.csv"]) for path in failure_pngs]
    sections.append(("failures", "Worst failures", failure_note + html.gallery(galleries)))
    return sections
