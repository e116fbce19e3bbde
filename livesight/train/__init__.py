"""Training LiveSight's own small VLM (`livesight train toy`): config (settings and flags), toy_model
(its architecture and saved form), frames (worlds rendered once on the device), layouts (the engine's
cache layouts as training sequences), batches (what a sample holds, made in worker processes), toy (the
loop, checkpoints, the command)."""
