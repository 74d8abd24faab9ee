"""Result rows and tables in the layout of the cleansing paper (VL, AL, then TA/AA per mode)."""

from __future__ import annotations

from typing import Any, Sequence

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
    for key in ("all", "fp-aw", "aw"):
        if key in results:
            row["zeroed"], row["delta"] = results[key]["zeroed"], results[key]["delta"]
            break
    row.update({f"seconds_{k}": v for k, v in seconds.items()})
    return row


def markdown_table(rows: Sequence[dict[str, Any]], phases: Sequence[str] | None = None, average: bool = True) -> str:
    """Paper-style table: VL | AL | <phase> TA | <phase> AA ... with an Avg row."""
    phases = phases or [k for k in PHASE_TITLES if any(f"{k}_ta" in r for r in rows)]
    head = ["VL", "AL"] + [f"{PHASE_TITLES[p]} {m}" for p in phases for m in ("TA", "AA")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(row: dict[str, Any]) -> list[str]:
        values = [row.get(f"{p}_{m}") for p in phases for m in ("ta", "aa")]
        return [str(row.get("vl", "")), str(row.get("al", ""))] + ["-" if v is None else f"{float(v):.1f}" for v in values]

    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    if average and len(rows) > 1:
        avg: dict[str, Any] = {"vl": "Avg", "al": ""}
        for p in phases:
            for m in ("ta", "aa"):
                vals = [float(r[f"{p}_{m}"]) for r in rows if r.get(f"{p}_{m}") not in (None, "")]
                if vals:
                    avg[f"{p}_{m}"] = sum(vals) / len(vals)
        lines.append("| " + " | ".join(cells(avg)) + " |")
    return "\n".join(lines) + "\n"
