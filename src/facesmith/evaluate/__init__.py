"""Evaluating face models: realism, attribute faithfulness, diversity and memorization, in one report.

Modules: `features` (the MobileNetV2 feature space), `realism` (FD, KID), `diversity` (pairwise distance,
precision/recall), `memorization` (nearest training faces, calibrated near-copy audit), `attributes` (the
`attributes train` and `attributes predict` stages; the classifier itself is `facesmith.attributes`),
`faithfulness` (prompt expectations and their score), `uncertainty` (Wilson and bootstrap intervals), `faceset` (reading real faces), `evaluation` (the
`facesmith evaluate` stage) and `report` (report.md and its PNGs).
"""
