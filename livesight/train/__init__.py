"""Training LiveSight's own small VLM (`livesight train toy`): toy_model (its architecture and saved
form), frames (rendered worlds on the device), layouts (the engine's token layouts as training
sequences), toy (the loop, checkpoints, the command)."""
