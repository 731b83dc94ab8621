"""Model graph tracing, the attribution graph of concepts, and its plot."""
