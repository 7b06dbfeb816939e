"""The CUDA target: pip CUDA toolkit (toolkit), schedule rules per kernel family (rules/), the Relax build
(pipeline) and the artifact with the cubin inside (artifact)."""
