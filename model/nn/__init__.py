"""The CTVIS network in plain PyTorch: backbones, pixel decoder, masked-attention decoder, heads.

``build.build_segmenter`` turns a ``ModelConfig`` into a ``segmenter.Segmenter``; ``build.PRESETS``
names the released configurations. Imports nothing of video I/O, official-checkpoint conversion
or export (an import-linter contract checks it).
"""
