"""Every wire key is spelled once, in shared_models/messages.py; every other module names its constant.

The wire keys are messages.py's module-level string constants: record names (``"metrics"``), the
coordinator's config keys (``"server-round"``) and the node's reply keys (``"num-examples"``). The rule,
read from the source with ``ast`` (nothing is imported, so it also runs on an old checkout):

1. A distinctive key (one with a hyphen, e.g. ``"update-clipped"``) is spelled by no other module of
   client/, server/, shared_models/ or simulations/, anywhere outside a docstring.
2. An ambiguous key is refused only where it names part of a Flower message. Ambiguous are the plain
   words (``"client"``, ``"confusion"``, ``"skipped"`` ...: also field names of metrics.jsonl and the
   report) and the keys that are also run-config keys (``"dp-delta"``, ``"data-dir"`` ...: spelled by the
   settings sections as run-config keys, which is their own vocabulary).
3. Where a literal names part of a message it is refused whatever it says, a wire key or not (so a new
   key cannot skip messages.py): the index, ``in`` test or ``.get`` key on a message's ``.content`` or on
   a legacy ``FitRes``/``EvaluateRes``'s ``.metrics``/``.config``, a literal key of a dict written straight
   into ``RecordDict``/``ConfigRecord``/``MetricRecord``/``ArrayRecord``, and the index or ``.get`` key
   on a record read from a message in the same function (a name assigned from one of those, a parameter
   annotated as a record, or a loop variable over such a parameter).
4. A key read from a node config (``context.node_config["data-path"]``, ``node_config.get(...)``) is the
   hospital's own vocabulary (``flower-supernode --node-config``), not the wire's: rule 1 does not apply
   there, even where a node-config key is spelled like a wire key (``"client-id"``).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("client", "server", "shared_models", "simulations")
MESSAGES = Path("shared_models/messages.py")
RECORD_TYPES = frozenset({"RecordDict", "ConfigRecord", "MetricRecord", "ArrayRecord"})
LEGACY_RECORDS = frozenset({"metrics", "config"})  # FitRes.metrics, FitIns.config: the legacy API's records


def wire_keys(root: Path) -> dict[str, str]:
    """messages.py's string constants: key -> constant name."""
    tree = ast.parse((root / MESSAGES).read_text(encoding="utf-8"))
    keys = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    keys[node.value.value] = target.id
    return keys


def run_config_keys(root: Path) -> set[str]:
    """The keys of pyproject.toml's [tool.flwr.app.config]."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    return set(config)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _is_message_part(node: ast.expr, records: set[str]) -> bool:
    """Whether ``node`` is a message's content, a legacy result's record, or a record read from a message."""
    if isinstance(node, ast.Attribute):
        own = isinstance(node.value, ast.Name) and node.value.id == "self"  # an object's own attribute
        return node.attr == "content" or (node.attr in LEGACY_RECORDS and not own)
    if isinstance(node, ast.Name):
        return node.id in records
    if isinstance(node, ast.Subscript):
        return _is_message_part(node.value, records)
    if isinstance(node, ast.Call):
        return _record_call(node)
    if isinstance(node, ast.IfExp):
        return _is_message_part(node.body, records) or _is_message_part(node.orelse, records)
    if isinstance(node, ast.BoolOp):
        return any(_is_message_part(v, records) for v in node.values)
    return False


def _record_call(node: ast.Call) -> bool:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name in RECORD_TYPES


def _record_names(func: ast.AST) -> set[str]:
    """Names bound in ``func`` to a message's record (assignment, annotated parameter, loop over those)."""
    records: set[str] = set()
    if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        for arg in [*func.args.args, *func.args.kwonlyargs]:
            if arg.annotation is not None and any(t in ast.unparse(arg.annotation) for t in RECORD_TYPES):
                records.add(arg.arg)
    for _ in range(3):  # a record read from a record read from a message
        for node in ast.walk(func):
            if isinstance(node, ast.Assign) and _is_message_part(node.value, records):
                records.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.iter, ast.Name) \
                    and node.iter.id in records and isinstance(node.target, ast.Name):
                records.add(node.target.id)
    return records


def _message_keys(tree: ast.AST) -> set[int]:
    """ids of the string literals that name part of a message (rule 3)."""
    out: set[int] = set()
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    for scope in [tree, *scopes]:
        records = _record_names(scope) if scope is not tree else set()
        for node in ast.walk(scope):
            if isinstance(node, ast.Subscript) and _is_message_part(node.value, records):
                out.add(id(node.slice))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args \
                    and node.func.attr in ("get", "pop") and _is_message_part(node.func.value, records):
                out.add(id(node.args[0]))
            elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) \
                    and _is_message_part(node.comparators[-1], records):
                out.add(id(node.left))
            elif isinstance(node, ast.Call) and _record_call(node) and node.args and isinstance(node.args[0], ast.Dict):
                out.update(id(k) for k in node.args[0].keys if k is not None)
    return out


def _node_config_keys(tree: ast.AST) -> set[int]:
    """ids of the string literals that name a node-config key (rule 4)."""
    def is_node_config(node: ast.expr) -> bool:
        return isinstance(node, (ast.Name, ast.Attribute)) and ast.unparse(node).endswith("node_config")

    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and is_node_config(node.value):
            out.add(id(node.slice))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args \
                and node.func.attr == "get" and is_node_config(node.func.value):
            out.add(id(node.args[0]))
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) \
                and is_node_config(node.comparators[-1]):
            out.add(id(node.left))
    return out


def violations(root: Path) -> list[str]:
    """Every literal that should be a messages.py constant: ``path:line: 'key' (use messages.NAME)``."""
    keys = wire_keys(root)
    ambiguous = {k for k in keys if "-" not in k} | (set(keys) & run_config_keys(root))
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            if rel == MESSAGES:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docs, in_message, node_config = _docstrings(tree), _message_keys(tree), _node_config_keys(tree)
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docs:
                    continue
                key = node.value
                if id(node) in in_message or (key in keys and key not in ambiguous and id(node) not in node_config):
                    name = keys.get(key)
                    hint = f"use messages.{name}" if name else "name it in shared_models/messages.py"
                    found.append(f"{rel}:{node.lineno}: {key!r} ({hint})")
    return sorted(set(found))


def test_no_module_but_messages_spells_a_wire_key():
    found = violations(REPO_ROOT)
    assert not found, "wire keys spelled outside shared_models/messages.py:\n" + "\n".join(found)


def test_the_checker_finds_a_spelled_key_in_each_position(tmp_path):
    """The rule itself, on a small tree: each position of rule 1-3 is found, ordinary words are not."""
    (tmp_path / "shared_models").mkdir()
    (tmp_path / "client").mkdir()
    (tmp_path / MESSAGES).write_text('METRICS = "metrics"\nNUM_EXAMPLES = "num-examples"\nDP_DELTA = "dp-delta"\n')
    (tmp_path / "pyproject.toml").write_text('[tool.flwr.app.config]\ndp-delta = 1e-5\n')
    (tmp_path / "client" / "node.py").write_text(
        '"""Docstrings may say "num-examples"."""\n'
        'def reply(msg, fitres, settings):\n'
        '    m = msg.content["metrics"]\n'                       # 3: record name on .content
        '    n = m["rows"]\n'                                    # 4: any key on a record read from a message
        '    clipped = fitres.metrics.get("update-clipped")\n'   # 5: legacy metrics
        '    out = MetricRecord({"dp-delta": 1.0})\n'            # 6: key written into a record
        '    key = "num-examples"\n'                             # 7: distinctive key anywhere
        '    summary = {"metrics": 1, "dp-delta": settings.dp_delta}\n'  # 8: ordinary words: allowed
        '    rows = context.node_config.get("num-examples", 0)\n'  # 9: a node-config key: allowed
        '    return m, n, clipped, out, key, summary, rows\n')
    assert violations(tmp_path) == [
        "client/node.py:3: 'metrics' (use messages.METRICS)",
        "client/node.py:4: 'rows' (name it in shared_models/messages.py)",
        "client/node.py:5: 'update-clipped' (name it in shared_models/messages.py)",
        "client/node.py:6: 'dp-delta' (use messages.DP_DELTA)",
        "client/node.py:7: 'num-examples' (use messages.NUM_EXAMPLES)",
    ]
