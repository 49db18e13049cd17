"""``medseg models``: every registered variant, where its weights are (or should be), size and prompts."""

from __future__ import annotations

import argparse
import json

from models.registry import list_specs


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "models",
        help="list the model variants, their weights files, input sizes and prompt types",
        description="List every model variant: whether its weights are present in the weights folder "
        "($MEDSEG_WEIGHTS or <project>/weights) or the file name it expects there, the model input size "
        "and the prompt types it takes ('auto' = no prompt needed).",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    return p


def describe() -> list[dict]:
    rows = []
    for spec in list_specs():
        path = spec.default_checkpoint
        rows.append(
            {
                "name": spec.name,
                "weights": "present" if spec.available() else "missing",
                "file": str(path),
                "input_size": spec.input_size,
                "prompt_types": list(spec.prompt_types),
                "sha256_pinned": spec.sha256 is not None,
                "description": spec.description,
                "source": spec.source,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    rows = describe()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = f"present: {r['file']}" if r["weights"] == "present" else f"missing: expects {r['file']}"
        source = f"; from {r['source']}" if r["source"] and r["weights"] == "missing" else ""
        print(
            f"{r['name']:<{width}}  {r['input_size']:>4}px  prompts: {','.join(r['prompt_types']):<15}  {state}\n"
            f"{'':<{width}}  {r['description']}{source}"
        )
    return 0
