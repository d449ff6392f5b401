"""Import trace for the GPU rehearsal (tools/gpu_imports.py puts this folder first on PYTHONPATH,
so every Python process of the rehearsal loads it, torchrun's ranks included).

``LTSCALE_IMPORT_TRACE`` (a folder): each process writes ``<pid>.json`` there as it exits
normally — the distributions that own the modules it imported. Forked loader workers exit
without ``atexit``; the rehearsal loads data in-process."""

import os

if os.environ.get("LTSCALE_IMPORT_TRACE"):
    import atexit

    def _write_trace():
        import importlib.metadata as md
        import json
        import sys
        from pathlib import Path

        tops = md.packages_distributions()
        owners: dict = {}
        for name, module in list(sys.modules.items()):
            top = name.partition(".")[0]
            if top in sys.stdlib_module_names or top not in tops:
                continue
            dists = tops[top]
            parts = (getattr(module, "__file__", None) or "").split(os.sep)
            if "_vendor" in parts:  # a copy vendored by another package (setuptools)
                dists = tops.get(parts[parts.index("_vendor") - 1], dists)
            elif len(dists) > 1:  # a namespace shared by several (nvidia.*): the module's own
                dists = _owner_by_file(module, dists)  # none for the namespace itself
            for dist in dists:
                owners.setdefault(dist, set()).add(name)
        out = Path(os.environ["LTSCALE_IMPORT_TRACE"]) / f"{os.getpid()}.json"
        out.write_text(json.dumps({"argv": sys.argv,
                                   "dists": {d: sorted(m) for d, m in owners.items()}}))

    def _owner_by_file(module, dists):
        import importlib.metadata as md

        path = getattr(module, "__file__", None)
        if not path:
            return []
        return [d for d in dists
                if any(str(f.locate()) == path for f in md.distribution(d).files or []
                       if f.suffix == ".py")]

    atexit.register(_write_trace)
