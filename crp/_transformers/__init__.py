"""Transformers: AttnLRP rules on zennit, supported architectures, token and head concepts, adapters."""
