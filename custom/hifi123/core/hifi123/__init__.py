"""HiFi-123: RGNV (reference-guided novel-view enhancement), the RGSD loss, the RGNV image loss
and what the RGNV-based guidances share."""
