"""The self-contained demo: tiny model, synthetic tasks, exact-match report."""

from jaxtune.demo.assets import DemoAssets, asset_paths, prepare
from jaxtune.demo.evaluate import exact_match, report_after, report_before, report_preferences

__all__ = ["DemoAssets", "asset_paths", "prepare", "exact_match", "report_before", "report_after", "report_preferences"]
