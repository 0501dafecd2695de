"""Shapes World: the built-in compositional world (scenes, rendering, captions, suites, the exact scorer).

The suite names and the held-out seed live here, free of imports, so that building the CLI's parser loads
none of the world's modules."""

SUITES = ("counting", "binding", "spatial", "detailed")
HELD_OUT_SEED = 2024
