"""The summary of a call with many scans: its rows, the CSV, merging shards, the index page.

One row per scan (:data:`COLUMNS`: the scan, its output name, status ok /
failed / skipped and the one-line error, the header decisions, placement,
brain volume and the species it fits, warnings, Dice and HD95 against a truth,
seconds, the QC figure, the output folder, the shard). ``rodent_gbp.batch``
writes them after every scan; :func:`merge_summaries` puts shards' summaries
back together; :func:`index_html` is a static page of every scan's QC figure,
numbers and warnings. Pure functions, no JAX.
"""

from __future__ import annotations

import csv
import glob
import html
import os
import pathlib
import re
from typing import Any, Iterable, Mapping, Sequence

from rodent_gbp import fileio
from rodent_gbp.errors import UsageError

STATUSES = ("ok", "failed", "skipped")
#: The summary's columns, in order.
COLUMNS = ("index", "scan", "name", "status", "error", "slice_axis", "plane", "voxel_scale",
           "placement", "brain_mm3", "species_fit", "warnings", "truth", "dice", "hd95_mm",
           "wall_s", "qc", "out_dir", "shard")
_WARNING_SEP = " | "


# --- the summary ------------------------------------------------------------------------


def summary_row(index: int, scan: pathlib.Path | str, name: str, status: str, *,
                out_dir: pathlib.Path | str, error: str = "",
                report: Mapping[str, Any] | None = None,
                shard: tuple[int, int] | None = None) -> dict[str, Any]:
  """One scan's row of the summary (:data:`COLUMNS`), from its report where it has one."""
  if status not in STATUSES:
    raise ValueError(f"status {status!r} is not one of {STATUSES}")
  row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
  row |= {"index": index, "scan": str(scan), "name": name, "status": status, "error": error,
          "out_dir": str(pathlib.Path(out_dir).absolute()),
          "shard": "" if shard is None else f"{shard[0]}/{shard[1]}"}
  if report:
    volume = report.get("brain_volume") or {}
    truth = report.get("truth") or {}
    fits = volume.get("fits")
    row |= {"slice_axis": report.get("slice_axis", {}).get("axis", ""),
            "plane": report.get("slice_axis", {}).get("plane", ""),
            "voxel_scale": report.get("voxel_scale", {}).get("factor", ""),
            "placement": report.get("placement", ""),
            "brain_mm3": _round(volume.get("mm3"), 1),
            "species_fit": "" if fits is None else (" or ".join(fits) or "none"),
            "warnings": _WARNING_SEP.join(report.get("warnings") or []),
            "truth": truth.get("path", ""), "dice": _round(truth.get("dice"), 4),
            "hd95_mm": _round(truth.get("hd95_mm"), 3),
            "wall_s": _round(report.get("wall_seconds"), 2),
            "qc": (report.get("outputs") or {}).get("qc", "")}
  return row


def _round(x, digits: int):
  return "" if x is None or x == "" else round(float(x), digits)


def write_summary(path: pathlib.Path, rows: Sequence[Mapping[str, Any]]) -> None:
  """The rows as CSV with :data:`COLUMNS`, atomically (a header alone for no rows)."""
  with fileio.atomic_path(path) as tmp:
    with open(tmp, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=COLUMNS)
      writer.writeheader()
      for r in rows:
        writer.writerow({k: r.get(k, "") for k in COLUMNS})


def read_summary(path: pathlib.Path) -> list[dict[str, str]]:
  """A summary's rows (text values).

  Raises:
    UsageError: missing, or not a summary (other columns).
  """
  path = pathlib.Path(path)
  try:
    with open(path, newline="") as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      columns = tuple(reader.fieldnames or ())
  except FileNotFoundError:
    raise UsageError(f"{path}: --merge_summaries: file not found") from None
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise UsageError(f"{path}: --merge_summaries: not readable ({e})") from None
  if columns != COLUMNS:
    raise UsageError(f"{path}: --merge_summaries: not a summary of rodent-gbp-segment "
                     f"(columns {', '.join(columns) or 'none'})")
  return rows


def expand_summaries(entries: Sequence[str]) -> list[pathlib.Path]:
  """The files of ``--merge_summaries``: paths, or glob patterns (``out/summary_shard*``)."""
  paths: list[pathlib.Path] = []
  for entry in entries:
    if glob.has_magic(entry):
      found = sorted(glob.glob(entry))
      if not found:
        raise UsageError(f"--merge_summaries {entry}: matches no file")
      paths += map(pathlib.Path, found)
    else:
      paths.append(pathlib.Path(entry))
  if not paths:
    raise UsageError("--merge_summaries: give the shards' summary files (comma-separated "
                     "paths or glob patterns)")
  return paths


def shard_of_file(path: pathlib.Path | str) -> str | None:
  """``"K/N"`` of a shard's summary file name (``summary_shard<K>of<N>.csv``), or None."""
  match = re.search(r"_shard(\d+)of(\d+)\.csv$", str(path))
  return f"{match[1]}/{match[2]}" if match else None


def merge_summaries(tables: Mapping[str, Sequence[Mapping[str, Any]]],
                    shards: Iterable[str] = ()) -> list[dict[str, Any]]:
  """The shards' rows as one summary: every shard of one split present, each scan
  (``index``) once, ordered by ``index`` (the full list's order).

  ``tables``: where each table came from (for messages) -> its rows. A shard is
  present when a row names it, or it is in ``shards`` (``"K/N"``: a shard
  whose summary has no row, named by its file, :func:`shard_of_file`).

  Raises:
    UsageError: a row twice (two summaries of one shard), summaries of different
      splits, or a shard missing.
  """
  splits = {str(row["shard"]) for rows in tables.values() for row in rows if row.get("shard")}
  splits |= set(shards)
  counts = {s.split("/")[1] for s in splits}
  if len(counts) > 1:
    raise UsageError(f"--merge_summaries: summaries of different splits ("
                     f"{', '.join(sorted(splits))}); merge the shards of one --shard K/N split")
  owner: dict[int, str] = {}
  merged = []
  for source, rows in tables.items():
    for row in rows:
      index = int(row["index"])
      if index in owner:
        raise UsageError(f"{source}: scan {row['scan']} (index {index}) is also in "
                         f"{owner[index]}; give each shard's summary once")
      owner[index] = source
      merged.append(dict(row))
  if counts:
    n = int(counts.pop())
    missing = [f"{k}/{n}" for k in range(n) if f"{k}/{n}" not in splits]
    if missing:
      raise UsageError(f"--merge_summaries: no summary of shard {', '.join(missing)} given "
                       "(every shard writes one, a shard without scans too)")
  return sorted(merged, key=lambda r: int(r["index"]))


# --- the index page ---------------------------------------------------------------------

_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#f0f0f0}.failed{background:#fde2e2}.skipped{background:#eef}
.warn{color:#a15c00}section{margin:2em 0;border-top:2px solid #ddd;padding-top:.5em}
img{max-width:100%;border:1px solid #ccc}h2{font-size:17px;margin:.3em 0}
.err{color:#b00020;font-family:monospace}.note{color:#555;font-family:monospace}"""


def _qc_link(row: Mapping[str, Any], page_dir: pathlib.Path) -> str | None:
  if not row.get("qc"):
    return None
  target = pathlib.Path(row.get("out_dir") or page_dir) / str(row["qc"])
  return pathlib.Path(os.path.relpath(target, page_dir)).as_posix()


def index_html(rows: Sequence[Mapping[str, Any]], page_dir: pathlib.Path, *,
               title: str = "rodent-gbp-segment") -> str:
  """A static page: a table of every scan (status, numbers, warnings, linked to its
  section) and a section per scan with its QC figure (linked relative to
  ``page_dir``, where the page is written), numbers and warnings or error."""
  esc = html.escape
  counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
  head = ["name", "status", "plane", "voxel_scale", "placement", "brain_mm3",
          "species_fit", "dice", "hd95_mm", "warnings"]
  out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
         f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>",
         f"<p>{len(rows)} scans: {counts['ok']} ok, {counts['failed']} failed, "
         f"{counts['skipped']} skipped.</p><table><tr>"
         + "".join(f"<th>{esc(h)}</th>" for h in head[:-1]) + "<th>warnings (count) or "
         "error</th></tr>"]
  for r in rows:
    cells = []
    for h in head:
      text = esc(str(r.get(h, "")))
      if h == "name":
        text = f"<a href='#scan-{esc(str(r['index']))}'>{text}</a>"
      if h == "warnings" and r.get("warnings"):
        text = f"<span class='warn'>{len(str(r['warnings']).split(_WARNING_SEP))}</span>"
      if h == "warnings" and r["status"] == "failed":
        error = str(r.get("error", ""))
        text = f"<span class='err'>{esc(error[:120] + ('...' if len(error) > 120 else ''))}</span>"
      cells.append(f"<td>{text}</td>")
    out.append(f"<tr class='{esc(str(r['status']))}'>{''.join(cells)}</tr>")
  out.append("</table>")
  for r in rows:
    out.append(f"<section id='scan-{esc(str(r['index']))}'><h2>{esc(str(r['name']))} "
               f"({esc(str(r['status']))})</h2><p>{esc(str(r['scan']))}</p>")
    if r.get("error"):
      kind = "err" if r["status"] == "failed" else "note"
      out.append(f"<p class='{kind}'>{esc(str(r['error']))}</p>")
    numbers = [f"{k} {r[k]}" for k in ("slice_axis", "plane", "voxel_scale", "placement",
                                       "brain_mm3", "species_fit", "dice", "hd95_mm",
                                       "wall_s") if r.get(k) not in (None, "")]
    if numbers:
      out.append(f"<p>{esc(', '.join(numbers))}</p>")
    for w in str(r.get("warnings") or "").split(_WARNING_SEP):
      if w:
        out.append(f"<p class='warn'>warning: {esc(w)}</p>")
    link = _qc_link(r, page_dir)
    if link:
      out.append(f"<a href='{esc(link)}'><img src='{esc(link)}' loading='lazy' "
                 f"alt='QC figure of {esc(str(r['name']))}'></a>")
    out.append("</section>")
  out.append("</body></html>\n")
  return "\n".join(out)


def write_index(path: pathlib.Path, rows: Sequence[Mapping[str, Any]], **kw) -> None:
  fileio.atomic_write_text(path, index_html(rows, pathlib.Path(path).parent, **kw))
