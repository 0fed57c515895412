"""Safe loading everywhere: nothing in clado_cli/ unpickles (no pickle.load, torch.load only with
weights_only=True, numpy only with allow_pickle=False, yaml only through safe_load), and every
cached file is checked against its checksum when it is read.

The static part parses every module of clado_cli/ (import aliases resolved, so `import torch as
t; t.load(...)` is caught too) and greps the raw text as a backstop; the checker is itself tested
on bad snippets. The runtime part feeds malicious files to the loaders and checks that nothing
runs and a clado error comes back.
"""
from __future__ import annotations

import ast
import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from clado_cli.methods import kind_of

PACKAGE = Path(__file__).resolve().parents[1] / "clado_cli"

FORBIDDEN_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cPickle.load",
    "dill.load", "dill.loads", "joblib.load", "shelve.open", "marshal.load", "marshal.loads",
    "yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
    "yaml.full_load_all", "yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader",
    "pandas.read_pickle", "torch.jit.load", "numpy.lib.format.read_array",
}
FORBIDDEN_IMPORTS = {"pickle", "_pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}
NEEDS_KEYWORD = {"torch.load": ("weights_only", True), "numpy.load": ("allow_pickle", False)}


def _aliases(tree: ast.AST) -> Dict[str, str]:
    names: Dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    names.setdefault("np", "numpy")
    return names


def _dotted(node: ast.AST, aliases: Dict[str, str]) -> str:
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def unsafe_loading(source: str, where: str = "<snippet>") -> List[str]:
    """Every unsafe deserialization in one module's source, as 'where:line: what'."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for m in mods:
                if m.split(".")[0] in FORBIDDEN_IMPORTS:
                    found.append(f"{where}:{node.lineno}: imports {m}")
        elif isinstance(node, (ast.Attribute, ast.Name)):
            name = _dotted(node, aliases)
            if name in FORBIDDEN_CALLS:
                found.append(f"{where}:{node.lineno}: uses {name}")
        if isinstance(node, ast.Call):
            name = _dotted(node.func, aliases)
            if name in NEEDS_KEYWORD:
                key, value = NEEDS_KEYWORD[name]
                kw = {k.arg: k.value for k in node.keywords}
                if not (key in kw and isinstance(kw[key], ast.Constant) and kw[key].value is value):
                    found.append(f"{where}:{node.lineno}: {name} without {key}={value}")
    return found


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_the_checker_finds_unsafe_loading():
    bad = {
        "import pickle\npickle.load(f)": 2,
        "import torch\ntorch.load(p)": 1,
        "import torch as t\nt.load(p, weights_only=False)": 1,
        "from torch import load\nload(p)": 1,
        "import yaml\nyaml.load(s)": 1,
        "import yaml\nyaml.load(s, Loader=yaml.FullLoader)": 2,
        "from yaml import unsafe_load\nunsafe_load(s)": 1,
        "import numpy as np\nnp.load(p)": 1,
        "import numpy\nnumpy.load(p, allow_pickle=True)": 1,
        "import dill": 1,
    }
    for src, n in bad.items():
        assert len(unsafe_loading(src)) >= n, src
    good = ("import torch\ntorch.load(p, map_location='cpu', weights_only=True)\n"
            "import numpy as np\nnp.load(b, allow_pickle=False)\nimport yaml\nyaml.safe_load(s)\n")
    assert unsafe_loading(good) == []


def test_no_unsafe_loading_in_clado_cli():
    found = []
    for path in _modules():
        found += unsafe_loading(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert not found, "\n".join(found)


def test_grep_backstop():
    """The same rules as plain text, for anything the parse could miss (e.g. code in strings)."""
    patterns = [r"\bpickle\.loads?\(", r"\byaml\.(load|load_all|unsafe_load|full_load)\(", r"allow_pickle\s*=\s*True",
                r"weights_only\s*=\s*False", r"\bUnsafeLoader\b|\bFullLoader\b"]
    hits = []
    for path in _modules():
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(re.search(p, code) for p in patterns):
                hits.append(f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)
    # and every torch.load call passes weights_only=True (calls may span lines)
    for path in _modules():
        text = path.read_text()
        for m in re.finditer(r"\btorch\.load\(", text):
            depth, end = 1, m.end()
            while depth and end < len(text):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            call = text[m.start():end]
            assert re.search(r"weights_only\s*=\s*True", call), f"{path}: {call}"


def test_yaml_is_loaded_with_safe_load_only():
    uses = [p for p in _modules() if re.search(r"\byaml\.\w*load", p.read_text())]
    for p in uses:
        assert set(re.findall(r"\byaml\.(\w*load\w*)", p.read_text())) <= {"safe_load", "safe_load_all"}, p
    assert uses, "no YAML loading found at all: the test looks in the wrong place"


# -- runtime: malicious files are refused and nothing runs -------------------------------------------------------

class _Payload:
    """Unpickling this creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_weights_file_with_a_pickle_payload_is_refused_and_not_run(tmp_path):
    from clado_cli.errors import InputError
    from clado_cli.models import read_state_dict

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.zeros(1), "x": _Payload(marker)}, evil)
    with pytest.raises(InputError, match="needs pickle to load"):
        read_state_dict(str(evil))
    assert not marker.exists()
    raw = tmp_path / "raw.pth"  # a plain pickle, not even a torch zip file
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(InputError):
        read_state_dict(str(raw))
    assert not marker.exists()


def test_a_config_with_a_python_tag_is_refused_and_not_run(tmp_path):
    from clado_cli.config import load_config
    from clado_cli.errors import ConfigError

    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"cache_dir: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(cfg)
    assert not marker.exists()


def _cache(tmp_path):
    from clado_cli.store.cache import Cache

    c = Cache.open(tmp_path / "cache", {"format": 1, "test": "safe-loading"})
    c.ensure()
    return c


def test_a_cache_file_with_a_pickled_array_is_refused_even_with_a_valid_checksum(tmp_path):
    from clado_cli.errors import CacheError
    from clado_cli.store.cache import sha256_bytes

    c = _cache(tmp_path)
    c.write_batch(kind_of("clado"), 0, {"Ltilde": np.eye(2)}, n=4)
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    np.savez(buf, Ltilde=np.array([_Payload(marker)], dtype=object), n=np.asarray(4))
    p = c.batch_path(kind_of("clado"), 0)
    p.write_bytes(buf.getvalue())
    side = json.loads(p.with_suffix(".json").read_text())
    side["sha256"] = sha256_bytes(buf.getvalue())  # a forged sidecar: the checksum matches
    p.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(CacheError, match="not a readable npz"):
        c.read_batch(kind_of("clado"), 0)
    assert not marker.exists()


# -- runtime: checksums on every load ------------------------------------------------------------------------------

def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def test_every_cache_reader_verifies_checksums(tmp_path):
    from clado_cli.errors import CacheError
    from clado_cli.store.cache import Cache
    from clado_cli.store import merge_caches

    c = _cache(tmp_path)
    for k in range(3):
        c.write_batch(kind_of("clado"), k, {"Ltilde": np.full((3, 3), float(k))}, n=8)
    c.save_quant_state({"w": torch.arange(6.0)})
    assert c.verify() == []
    _flip(c.batch_path(kind_of("clado"), 1))
    _flip(c.root / "quant_state.safetensors")
    readers = {
        "read_batch": lambda: c.read_batch(kind_of("clado"), 1),
        "combine (all)": lambda: c.combine(kind_of("clado")),
        "combine (range)": lambda: c.combine(kind_of("clado"), [1, 2]),
        "load_quant_state": c.load_quant_state,
        "merge": lambda: merge_caches([c.root], tmp_path / "merged"),
        "from_dir + read": lambda: Cache.from_dir(c.root).read_batch(kind_of("clado"), 1),
    }
    for what, read in readers.items():
        with pytest.raises(CacheError, match="checksum"):
            read()
    assert len(c.verify()) == 2
    # the untouched batches still read (a bad file does not poison the rest)
    assert c.read_batch(kind_of("clado"), 0)[1] == 8


def test_pretrained_weights_in_the_torch_cache_are_checked_against_their_hash(tmp_path, monkeypatch):
    """torchvision checkpoints carry a sha256 prefix in their name; a damaged one is refused
    before torch ever reads it."""
    import torchvision.models as tvm

    from clado_cli.config import ModelConfig
    from clado_cli.errors import InputError
    from clado_cli.models import build_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = tvm.get_model_weights("resnet18").DEFAULT.url
    ckpt = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not the real resnet18 weights")
    with pytest.raises(InputError, match="fail their checksum"):
        build_model(ModelConfig(name="resnet18", weights="DEFAULT"))
