#!/usr/bin/env bash
# Screenshot (docs/img/dvc_plots_offline.png, dvc_plots_overlay.png) of `dvc plots show` rendered with the
# offline template, in a reproduced repository (this one after `./tasks.sh repro`, or a copy of it).
# The network is cut off (--proxy-server to a closed port): every plot must render from local files.
#
#   scripts/dvc_plots_screenshot.sh [repo_dir] [out_dir]
set -euo pipefail
REPO=$(cd "${1:-.}" && pwd) OUT=$(mkdir -p "${2:-docs/img}" && cd "${2:-docs/img}" && pwd)
PY=${PYTHON:-$PWD/.venv/bin/python}
(cd "$REPO" && "$(dirname "$PY")/dvc" plots show --html-template pipeline/vega/offline.html >/dev/null)
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --proxy-server=127.0.0.1:9 \
    --proxy-bypass-list='<-loopback>' --virtual-time-budget=20000 --window-size=1400,9000 \
    --screenshot=/tmp/dvc_plots_full.png "file://$REPO/dvc_plots/index.html" 2>/dev/null
"$PY" - "$OUT" <<'PY'
import sys
import numpy as np
from PIL import Image
out = sys.argv[1]
im = Image.open("/tmp/dvc_plots_full.png")
gray = np.asarray(im.convert("L"))
rows, cols = np.where(gray.min(axis=1) < 250)[0], np.where(gray.min(axis=0) < 250)[0]
bottom, right = int(rows.max()) + 12, int(cols.max()) + 12
page = im.crop((0, 0, right, bottom))
page.resize((900, round(900 * bottom / right)), Image.LANCZOS).save(f"{out}/dvc_plots_offline.png", optimize=True)
im.crop((0, bottom - 368, right, bottom)).save(f"{out}/dvc_plots_overlay.png", optimize=True)  # the last row
print(f"{out}/dvc_plots_offline.png ({right}x{bottom} page), {out}/dvc_plots_overlay.png")
PY
