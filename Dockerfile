# LiveSight's web UI on a GPU.
#   docker build -t livesight .
#   docker run --gpus all -p 7860:7860 -v /path/to/models:/models:ro livesight \
#       --model /models/Qwen2.5-VL-7B-Instruct
# With no arguments it serves `livesight web --host 0.0.0.0` with tiny-random (random weights).
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv libglib2.0-0 libgomp1 \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY docker/constraints.txt ./
COPY pyproject.toml README.md ./
COPY livesight ./livesight
RUN pip install --upgrade pip && pip install -c constraints.txt .

RUN useradd --create-home livesight && mkdir -p /models && chown livesight /models
USER livesight
EXPOSE 7860
ENTRYPOINT ["livesight", "web", "--host", "0.0.0.0"]
