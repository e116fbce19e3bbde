#!/usr/bin/env bash
# The wheels the GPU machine lacks (its image: Python 3.12, torch, no registry), downloaded here into two folders
# that git ignores, each carried by one device call (a call carries at most 64 MiB):
#   .whl/      transformers 5.23.0, decord, the test helpers, the HTTP API's stack (fastapi, pydantic, uvicorn), and
#              flash-linear-attention's kernels (fla-core, einops) for Qwen3.5's linear layers
#   .whl-ray/  Ray 2.60.0 with Serve's needs: the wheel (79 MB) less what Python serving never loads (the Java jars,
#              RLlib, Tune, Train, Data, LLM, the dashboard's web client), about 41 MB
#   bash scripts/device_wheels.sh
set -euo pipefail
get() {  # folder, then NAME==VERSION ...
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux2010_x86_64 -d "$dir" "$@"
}
grep -qx '/.whl-ray/' .git/info/exclude 2>/dev/null || echo '/.whl-ray/' >> .git/info/exclude
get .whl transformers==5.23.0 decord==0.6.0 hypothesis==6.170.17 sortedcontainers==2.4.0 attrs==26.1.0 \
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 opentelemetry-api==1.45.2 fla-core==0.6.0 einops==0.8.2
# grpcio-reflection 1.62: its generated code predates protobuf's version check, as Ray's own does
get .whl-ray jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 \
  grpcio-reflection==1.62.3
tmp=$(mktemp -d)
get "$tmp" ray==2.60.0
python3 - "$tmp"/ray-2.60.0-*.whl .whl-ray <<'PY'
import os, sys, zipfile
source, folder = sys.argv[1], sys.argv[2]
drop = ("ray/jars/", "ray/rllib/", "ray/tune/", "ray/train/", "ray/data/", "ray/llm/", "ray/dashboard/client/build/")
with zipfile.ZipFile(source) as zin, zipfile.ZipFile(os.path.join(folder, os.path.basename(source)), "w",
                                                     zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not item.filename.startswith(drop):
            zout.writestr(item, zin.read(item.filename))
PY
rm -r "$tmp"
du -sh .whl .whl-ray
