"""Helpers shared by every room: argument checks, model lookups, atomic files, normalizations."""
