"""Diffusion machinery shared by both methods: DDIM grids, inversion and sampling, CFG forms,
mutual self-attention."""
