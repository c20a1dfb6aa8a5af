"""One package per feature; each exposes ``setup(bot)`` for ``load_extension``."""
