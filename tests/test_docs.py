"""The documentation is self-contained and current: every relative link resolves inside the repository,
docs/api.md covers the public API with the code's own signatures, and the README keeps its two commands and
makes no speed claims."""
import ast
import inspect
import pathlib
import re

import pytest

import fastattn
import fastattn.models
import fastattn.nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINKED = [ROOT / "README.md", ROOT / "benchmarks" / "NOTES.md", ROOT / "csrc" / "README.md", *DOCS]
API = (ROOT / "docs" / "api.md").read_text()
README = (ROOT / "README.md").read_text()

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: pathlib.Path) -> set:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", path.read_text(), flags=re.M)}


def test_docs_exist():
    names = {p.name for p in DOCS}
    assert {"api.md", "benchmarks.md", "install.md"} <= names, names


@pytest.mark.parametrize("doc", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repo(doc):
    links = _LINK.findall(doc.read_text())
    bad = []
    for target in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, frag = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{target}: outside the repository")
        elif not dest.exists():
            bad.append(f"{target}: {dest.relative_to(ROOT)} does not exist")
        elif frag and dest.suffix == ".md" and frag not in _anchors(dest):
            bad.append(f"{target}: no heading #{frag} in {dest.relative_to(ROOT)}")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(bad)


def test_no_reference_to_the_folder_beside_the_repo():
    """A clone has no shared folder beside it: nothing in the repository may point there."""
    needle = "../" + "shared"
    hits = []
    for p in ROOT.rglob("*"):
        if any(part in (".git", ".venv", "build", "node_modules") for part in p.relative_to(ROOT).parts):
            continue
        if p.is_file() and p.suffix in (".md", ".py", ".sh", ".toml", ".txt", ".cfg", ".ini", ".cpp", ".cu", ".h"):
            if needle in p.read_text(errors="replace"):
                hits.append(str(p.relative_to(ROOT)))
    assert not hits, hits


# ---------------------------------------------------------------------------------------------------------------
# docs/api.md against the code
# ---------------------------------------------------------------------------------------------------------------
def _public_names():
    names = [f"fastattn.{n}" for n in fastattn.__all__]
    names += [f"fastattn.nn.{n}" for n in fastattn.nn.__all__]
    names += [f"fastattn.models.{n}" for n in fastattn.models.__all__]
    return names


@pytest.mark.parametrize("qualname", _public_names())
def test_api_doc_mentions_every_public_name(qualname):
    short = qualname.rsplit(".", 1)[1]
    assert re.search(rf"\b{re.escape(short)}\b", API), f"docs/api.md does not mention {qualname}"


def _documented_signatures(dotted: str):
    """Every parenthesised argument list written after ``dotted`` in docs/api.md, parsed as a def's arguments."""
    found = []
    for m in re.finditer(re.escape(dotted) + r"\(", API):
        depth, i = 1, m.end()
        while depth and i < len(API):
            depth += {"(": 1, ")": -1}.get(API[i], 0)
            i += 1
        text = " ".join(API[m.end():i - 1].split())
        try:
            found.append((text, ast.parse(f"def f({text}): pass").body[0].args))
        except SyntaxError:
            continue
    return found


def _same(sig: inspect.Signature, args: ast.arguments) -> bool:
    want = []
    for p in sig.parameters.values():
        default = None if p.default is inspect.Parameter.empty else repr(p.default)
        want.append((p.name, p.kind == inspect.Parameter.KEYWORD_ONLY, default))
    got = []
    positional = args.posonlyargs + args.args
    pos_defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for a, d in zip(positional, pos_defaults):
        got.append((a.arg, False, None if d is None else repr(ast.literal_eval(d))))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        got.append((a.arg, True, None if d is None else repr(ast.literal_eval(d))))
    return want == got


def _callables():
    out = [(f"fastattn.{n}", getattr(fastattn, n)) for n in fastattn.__all__
           if callable(getattr(fastattn, n)) and not inspect.isclass(getattr(fastattn, n))]
    mha = fastattn.nn.MultiheadAttention
    init = inspect.signature(mha.__init__)
    out.append(("fastattn.nn.MultiheadAttention",
                init.replace(parameters=list(init.parameters.values())[1:])))
    out.append(("fastattn.nn.MultiheadAttention.from_torch", mha.from_torch))
    return out


@pytest.mark.parametrize("dotted, obj", _callables(), ids=lambda x: x if isinstance(x, str) else "")
def test_api_doc_signature_matches_the_code(dotted, obj):
    sig = obj if isinstance(obj, inspect.Signature) else inspect.signature(obj)
    documented = _documented_signatures(dotted)
    assert documented, f"docs/api.md has no signature for {dotted}(...)"
    assert any(_same(sig, args) for _, args in documented), (
        f"docs/api.md's signature of {dotted} differs from the code's {sig}: documented "
        + " | ".join(t for t, _ in documented))


def test_api_doc_names_every_environment_variable_the_package_reads():
    pkg = ROOT / "fastattn"
    names = set()
    for p in pkg.rglob("*.py"):
        names |= set(re.findall(r"environ(?:\.get)?\(?\[?\"(FASTATTN_[A-Z_]+|TRITON_INTERPRET)\"", p.read_text()))
    names.discard("FASTATTN_GIT_SHA")  # the benchmark's record of the commit on a machine without .git
    missing = sorted(n for n in names if n not in API)
    assert not missing, f"docs/api.md does not document {missing}"


# ---------------------------------------------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------------------------------------------
def test_readme_keeps_exactly_the_two_commands():
    section = README.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [line.split("#", 1)[0].strip() for b in blocks for line in b.splitlines() if line.strip()]
    assert commands == ["bash tools/bench.sh", "bash tools/test.sh"], commands


def test_readme_makes_no_speed_claims():
    claims = re.findall(r"\d[\d.,]*\s?(?:TFLOP/s|TFLOPS|GB/s|TB/s|µs|us\b|ms\b|×|x faster|tokens/s)", README)
    assert not claims, f"README states speed figures {claims}: measured ones belong in a results table"
