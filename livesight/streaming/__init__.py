"""The model adapter, the Session engine loop, chunking, events and configuration."""
