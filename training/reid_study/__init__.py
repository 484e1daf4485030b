"""The re-id head study (the paper's Table 3 in miniature on a frozen segmenter).

A frozen segmenter runs once per ``reid``-preset video (:mod:`training.reid_study.cache`);
only the re-id embedding head is trained per contrastive recipe on the cached decoder queries
(:mod:`training.reid_study.heads`), and every head is scored by the shipped tracker on the
cached outputs (:mod:`training.reid_study.evaluate`). ``scripts/reid_study.py`` re-evaluates
the committed heads on freshly rendered videos; ``docs/experiments.md`` reports the study.
"""
