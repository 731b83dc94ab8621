"""The conditional-attribution engine: argument coercion, concepts and masks, probes, backward passes."""
