#!/usr/bin/env bash
# Installs matplotlib for benches/loadgen/plot_series.py (used by compare.sh
# and soak.sh to draw the per-second latency series). Does nothing if a
# recent enough matplotlib is already importable.
set -euo pipefail

PYTHON=${PYTHON:-python3}

if "$PYTHON" - <<'PY' 2>/dev/null
import sys
import matplotlib
major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
sys.exit(0 if (major, minor) >= (3, 8) else 1)
PY
then
    echo "matplotlib already installed: $("$PYTHON" -c 'import matplotlib; print(matplotlib.__version__)')"
    exit 0
fi

"$PYTHON" -m pip install --quiet 'matplotlib>=3.8'
echo "installed: matplotlib $("$PYTHON" -c 'import matplotlib; print(matplotlib.__version__)')"
