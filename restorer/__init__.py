"""GPU and tensor state through the chunk store: snapshot, and restore pipelined.

``snapshot(module_or_state_dict, "NAME:TAG", store=...)``, ``restore("NAME:TAG",
device=...)`` and ``load_into(module, "NAME:TAG")``. torch is an optional dependency and
slow to import, so it is loaded only when one of these is first used.
"""

__all__ = ["load_into", "restore", "snapshot"]


def __getattr__(name: str):
    if name in __all__:
        from . import snapshots as _impl

        return getattr(_impl, name)
    raise AttributeError(name)
