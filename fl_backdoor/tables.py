"""Result rows and tables in the layout of the cleansing paper (VL, AL, then TA/AA per mode)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import ExperimentConfig

# results key -> column title, in the paper's order (AW only is Table VI's mode)
PHASE_TITLES = {"training": "Training", "fp": "FP", "fp-aw": "FP+AW", "ft": "FT", "all": "All", "aw": "AW"}


def result_row(cfg: ExperimentConfig, results: dict[str, dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    """One flat row: VL, AL, TA/AA in percent per phase, neurons pruned, weights zeroed, phase seconds."""
    row: dict[str, Any] = {"vl": cfg.victim_label if cfg.attack_mode == "victim" else "all",
                           "al": cfg.attack_label}
    for key in PHASE_TITLES:
        if "ta" in results.get(key, {}):
            row[f"{key}_ta"] = round(100.0 * results[key]["ta"], 2)
            row[f"{key}_aa"] = round(100.0 * results[key]["aa"], 2)
    if "fp" in results:
        row["pruned"] = results["fp"]["pruned"]
    if "ft" in results:
        row["ft_rounds"], row["ft_kept_round"] = results["ft"]["rounds"], results["ft"].get("kept_round", "")
    for key in ("all", "fp-aw", "aw"):
        if key in results:
            row["zeroed"], row["delta"] = results[key]["zeroed"], results[key]["delta"]
            break
    row.update({f"seconds_{k}": v for k, v in seconds.items()})
    return row


def markdown_table(rows: Sequence[dict[str, Any]], phases: Sequence[str] | None = None, average: bool = True) -> str:
    """Paper-style table: VL | AL | <phase> TA | <phase> AA ... with an Avg row."""
    phases = phases or [k for k in PHASE_TITLES if any(f"{k}_ta" in r for r in rows)]
    columns = [Column("VL", "vl"), Column("AL", "al")]
    columns += [Column(f"{PHASE_TITLES[p]} {m.upper()}", f"{p}_{m}") for p in phases for m in ("ta", "aa")]
    return markdown_columns(rows, columns, average=average)


@dataclass(frozen=True)
class Column:
    """A table column: title, row key, and how numbers are written ('.1f', or 'd' for counts)."""

    title: str
    key: str
    fmt: str = ".1f"


def markdown_columns(rows: Sequence[dict[str, Any]], columns: Sequence[Column], labels: int = 2,
                     average: bool = True) -> str:
    """A markdown table of the given columns; the first ``labels`` columns name the row, the others are
    numbers ('-' when missing), averaged in an Avg row when there is more than one row."""
    lines = ["| " + " | ".join(c.title for c in columns) + " |", "|" + "---|" * len(columns)]

    def number(value: Any, fmt: str) -> str:
        if value is None or value == "":
            return "-"
        return f"{float(value):.0f}" if fmt == "d" else f"{float(value):{fmt}}"

    def cells(row: dict[str, Any]) -> list[str]:
        return ([str(row.get(c.key, "")) for c in columns[:labels]]
                + [number(row.get(c.key), c.fmt) for c in columns[labels:]])

    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    if average and len(rows) > 1:
        avg: dict[str, Any] = {c.key: "" for c in columns[:labels]}
        if labels:
            avg[columns[0].key] = "Avg"
        for c in columns[labels:]:
            values = [float(r[c.key]) for r in rows if r.get(c.key) not in (None, "")]
            if values:
                avg[c.key] = sum(values) / len(values)
        lines.append("| " + " | ".join(cells(avg)) + " |")
    return "\n".join(lines) + "\n"
