"""``yoloq sweep``: the paper's study (Tables I and II, Fig. 4) plus an equal-storage comparison, run over
many configurations, resumable and parallel (local processes or Ray).

Modules: :mod:`.plan` (configurations, presets, ``--bits``), :mod:`.store` (one atomic JSON per result),
:mod:`.runner` (unit of work, executors, driver), :mod:`.analysis` (loss, Fig. 4 ratio, pairs, Pareto),
:mod:`.report` (CSV, JSON, Markdown), :mod:`.plots` (PNGs), :mod:`.layers` (per-layer SQNR table),
:mod:`.paper` (the paper's published figures), :mod:`.study` (all of it in one call).
"""

from .plan import BASELINE, Config, parse_bits, plan


def __getattr__(name: str):
    """The study is loaded on first use: the command line reads the plan's names without loading torch."""
    if name in ("StudyResult", "run_study"):
        from . import study

        return getattr(study, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BASELINE", "Config", "parse_bits", "plan", "StudyResult", "run_study"]
