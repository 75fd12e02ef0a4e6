"""Pure-torch algorithms (trees, verification, gating, calibration, budget). Never imports vLLM."""
