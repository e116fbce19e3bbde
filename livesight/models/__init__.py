"""The model families LiveSight serves, one file each, behind one adapter interface (text.TextAdapter):
loader.py turns a spec into a loaded model, registry.py picks its family's adapter."""
