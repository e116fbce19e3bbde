"""Model weights that ship in the package: toy-vlm (trained by `livesight train toy`)."""

import os

TOY_VLM_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy-vlm")
