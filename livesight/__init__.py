"""LiveSight: a streaming video assistant with a bounded-memory VLM engine."""

__version__ = "0.1.0"
