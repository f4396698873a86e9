"""The stage pipeline: supernet -> bn_recalibration -> evaluate (-> export)."""

from __future__ import annotations

STAGES = ("supernet", "bn_recalibration", "evaluate")
