"""Cost transform: cost_usd from token counts and a configured price table; model-name aliases."""
