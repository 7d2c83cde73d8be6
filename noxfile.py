"""Sessions: ``tests`` (ruff, mypy, pytest on torch 2.14.1), ``matrix`` (the test suite on each other
torch release), ``precision`` (the half-precision pipelines), ``support_table``, ``sweep`` (the full
sweep), ``bench``, ``fuzz`` (500
property-based examples), ``build`` (the wheel and sdist, checked, and the wheel alone installed on
each Python version pyproject.toml claims: no torch, a working command line), and two runtimes that
need environments of their own, without torch: ``ort_without_deformconv`` (onnxruntime 1.24.4) and
``openvino``; ``toolchain`` puts exported models through the deployment tools users run next
(``TOOLCHAIN``; it installs Debian packages only when ``DCE_ALLOW_APT=1`` allows it).

Environments live outside the clone (``$DCE_NOX_ENVDIR``, by default
``~/.cache/deform_conv2d_onnx_exporter/nox``) and are reused: each holds a full torch, several GB,
which is also why linting runs in the test environment rather than in one of its own.

Every full test run writes what it ran to ``tools/matrix-results/last-run/<torch>.json`` (not
tracked by git); ``nox -s support_table`` checks README's support table and the tracked
``tools/matrix-results/<torch>.json`` against them, and ``nox -s support_table -- --write`` updates both.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from dataclasses import dataclass
from typing import Optional

import nox

nox.options.envdir = os.environ.get(
    "DCE_NOX_ENVDIR", os.path.expanduser("~/.cache/deform_conv2d_onnx_exporter/nox")
)
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]
# pip's and npm's download caches beside the environments, not in the user's home: the test
# command writes nothing outside the clone and this folder (and its caches are reused the same way).
_CACHES = os.path.join(os.path.dirname(os.path.abspath(nox.options.envdir)), "download-caches")
os.environ.setdefault("PIP_CACHE_DIR", os.path.join(_CACHES, "pip"))
os.environ.setdefault("npm_config_cache", os.path.join(_CACHES, "npm"))

RESULTS = os.path.join("tools", "matrix-results", "last-run")


@dataclass(frozen=True)
class Stack:
    """One torch / torchvision pair and the versions of everything exported or run with it."""

    torch: str
    torchvision: str
    numpy: str
    onnx: str
    onnxruntime: str
    onnxscript: str
    #: onnxscript >= 0.3 uses the package onnx-ir (pinned there). onnxscript 0.5.4 with the onnx-ir
    #: 1.1 its requirements allow fails the dynamo export of any model on torch 2.9.1.
    onnx_ir: Optional[str] = None

    def pins(self) -> list[str]:
        pins = [
            f"torch=={self.torch}",
            f"torchvision=={self.torchvision}",
            f"numpy=={self.numpy}",
            f"onnx=={self.onnx}",
            f"onnxruntime=={self.onnxruntime}",
            f"onnxscript=={self.onnxscript}",
        ]
        return pins + ([f"onnx-ir=={self.onnx_ir}"] if self.onnx_ir else [])


#: The one place the tested versions are written down, oldest torch first. Each pair has Python
#: 3.11 wheels. The ONNX packages on the oldest torch are pyproject's lower bounds (onnxscript
#: 0.1.0 cannot convert the dynamo exporter's opset on torch 2.6, and onnx's reference evaluator
#: needs fixes before 1.23: see tests/test_edge_cases.py); numpy 1 before torch 2.6; from torch
#: 2.6 on, an onnxruntime that runs native DeformConv without crashing on NaN offsets (>= 1.26).
#: ``DEV`` is the ``tests`` session's pair (installed from this machine's local files); every other
#: one is ``matrix(<torch>)``. torch 1.13.1 is not here: torchvision 0.14.1, its pair, has no
#: Python 3.11 wheel.
STACKS = [
    Stack("2.0.1", "0.15.2", numpy="1.26.4", onnx="1.17.0", onnxruntime="1.15.1", onnxscript="0.2.7"),
    Stack("2.2.2", "0.17.2", numpy="1.26.4", onnx="1.17.0", onnxruntime="1.26.0", onnxscript="0.2.7"),
    Stack("2.4.1", "0.19.1", numpy="1.26.4", onnx="1.18.0", onnxruntime="1.20.1", onnxscript="0.2.7"),
    Stack("2.6.0", "0.21.0", numpy="2.2.6", onnx="1.17.0", onnxruntime="1.26.0", onnxscript="0.2.7"),
    Stack(
        "2.9.1",
        "0.24.1",
        numpy="2.3.5",
        onnx="1.19.1",
        onnxruntime="1.28.0",
        onnxscript="0.7.2",
        onnx_ir="1.1.0",
    ),
    Stack(
        "2.14.1",
        "0.29.1",
        numpy="2.4.6",
        onnx="1.23.2",
        onnxruntime="1.32.0",
        onnxscript="0.7.2",
        onnx_ir="1.1.0",
    ),
    Stack(
        "2.15.0",
        "0.29.2",
        numpy="2.4.6",
        onnx="1.23.2",
        onnxruntime="1.32.0",
        onnxscript="0.7.2",
        onnx_ir="1.1.0",
    ),
]
DEV = next(stack for stack in STACKS if stack.torch == "2.14.1")
OTHERS = {stack.torch: stack for stack in STACKS if stack is not DEV}


def _install(session: nox.Session, stack: Stack, extra: str) -> None:
    # Everything pinned in one resolve, so that pip never picks another torch (a download of
    # several GB), and fails if pyproject's ranges exclude a tested version. No pip cache: the
    # environments are reused, and a cached copy of each torch would double the disk they take.
    session.install(*stack.pins(), "-e", f".[{extra}]", env={"PIP_NO_CACHE_DIR": "1"})


def _pytest(session: nox.Session, stack: Stack, started: float, *args: str) -> None:
    """Run pytest, then add the session's wall time and environment size to its results file.

    A run given a selection of tests (extra arguments) writes no results: they describe the suite.
    The results go to ``RESULTS``, outside what git tracks, so that running the tests changes no
    tracked file.
    """
    if session.posargs:
        session.run("python", "-m", "pytest", "-q", *args)
        return
    os.makedirs(RESULTS, exist_ok=True)
    results = os.path.join(RESULTS, f"{stack.torch}.json")
    fresh = results + ".new"
    if os.path.exists(fresh):
        os.remove(fresh)
    try:
        session.run("python", "-m", "pytest", "-q", f"--results-json={fresh}", *args)
    finally:
        if os.path.exists(fresh):
            _add_session_facts(session, fresh, started)
            os.replace(fresh, results)


def _add_session_facts(session: nox.Session, path: str, started: float) -> None:
    location = session.virtualenv.location
    size = subprocess.run(["du", "-sb", str(location)], capture_output=True, text=True, check=True)
    with open(path) as file:
        data = json.load(file)
    data["session"] = {
        "name": session.name,
        "wall_seconds": round(time.monotonic() - started),
        "env_bytes": int(size.stdout.split()[0]),
    }
    with open(path, "w") as file:
        json.dump(data, file, indent=1, sort_keys=True)
        file.write("\n")
    session.log(
        f"wall time {data['session']['wall_seconds']} s, environment "
        f"{data['session']['env_bytes'] / 1e9:.1f} GB ({location})"
    )


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """ruff (lint and format), mypy, then the test suite on the newest torch; extra arguments go to pytest."""
    started = time.monotonic()
    _install(session, DEV, "torch,test,dev")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    _pytest(session, DEV, started, "--durations=15", *session.posargs)


@nox.session(python="3.11")
@nox.parametrize("torch", list(OTHERS), ids=list(OTHERS))
def matrix(session: nox.Session, torch: str) -> None:
    """The test suite on another torch (``nox -s "matrix(2.0.1)"``; ``nox -s matrix`` runs them all).

    Tests of paths this torch lacks are deselected by the package's own version detection
    (tests/paths.py); extra arguments go to pytest.
    """
    started = time.monotonic()
    stack = OTHERS[torch]
    _install(session, stack, "torch,test")
    _pytest(session, stack, started, *session.posargs)


@nox.session(venv_backend="none")
def support_table(session: nox.Session) -> None:
    """Check README's support table and tools/matrix-results against the last runs (``-- --write``
    takes the last runs' results instead)."""
    write = "--write" in session.posargs
    session.run(sys.executable, "tools/support_table.py", "--write" if write else "--check")


def _install_without_torch(session: nox.Session, *runtimes: str) -> None:
    # The ONNX-file path needs no torch, and a plain install brings none: the environment stays
    # small (no torch, several GB) and quick to create. hypothesis: conftest.py registers its profiles.
    session.install("-e", ".", "pytest>=7", "hypothesis>=6", *runtimes)


#: The rewrite tests that import no torch, and pytest options for them: pyproject's warning
#: filters name torch's warning classes, which these environments cannot import.
TORCH_FREE_TESTS = ("tests/test_runtimes.py", "tests/test_rewrite.py", "tests/test_cli.py")
TORCH_FREE_OPTIONS = ("-q", "-o", "filterwarnings=ignore::DeprecationWarning")


@nox.session(python="3.11")
def ort_without_deformconv(session: nox.Session) -> None:
    """Rewritten models on onnxruntime 1.24.4, the last release without DeformConv."""
    _install_without_torch(session, "onnxruntime==1.24.4")
    session.run("python", "-m", "pytest", *TORCH_FREE_OPTIONS, *TORCH_FREE_TESTS, *session.posargs)


@nox.session(python="3.11")
def openvino(session: nox.Session) -> None:
    """Rewritten models on OpenVINO's CPU plugin (which has no DeformConv), in float32."""
    _install_without_torch(session, "openvino==2026.4.1", "onnxruntime")
    session.run("python", "-m", "pytest", *TORCH_FREE_OPTIONS, "tests/test_runtimes.py", *session.posargs)


#: Fails if torch was installed: a plain install must not pull it (several GB).
_NO_TORCH = (
    "import importlib.util, sys; sys.exit('torch is installed' if importlib.util.find_spec('torch') else 0)"
)


def _claimed_pythons() -> list[str]:
    """The Python versions pyproject.toml's classifiers claim ("3.9", ...), which ``build`` tests."""
    with open("pyproject.toml", "rb") as file:
        classifiers = tomllib.load(file)["project"]["classifiers"]
    prefix = "Programming Language :: Python :: "
    return [c[len(prefix) :] for c in classifiers if re.fullmatch(re.escape(prefix) + r"3\.\d+", c)]


def _interpreter(version: str) -> Optional[str]:
    """A ``python<version>`` that runs: on PATH, or else one that pyenv installed.

    pyenv's shims are on PATH for every version it has, but run only the versions it selects, so
    each candidate is tried.
    """
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = [shutil.which(f"python{version}")]
    found += sorted(glob.glob(os.path.join(pyenv, "versions", f"{version}.*", "bin", f"python{version}")))
    for python in filter(None, found):
        if subprocess.run([python, "--version"], capture_output=True).returncode == 0:
            return python
    return None


@nox.session(python="3.11", reuse_venv=False)
def build(session: nox.Session) -> None:
    """The release files: wheel and sdist built (``python -m build``) and checked (``twine check``,
    no tests in the sdist); then the wheel installed, as ``pip install deform_conv2d_onnx_exporter``
    will install it, in a new environment on each Python version pyproject.toml claims: no torch
    comes with it, ``--version``, ``info`` and ``decompose`` work, and ``demo`` and ``verify``
    (without onnxruntime) say in one line which extra they need."""
    versions = _claimed_pythons()
    interpreters = {version: _interpreter(version) for version in versions}
    missing = [version for version, python in interpreters.items() if python is None]
    if missing:
        session.error(
            f"build: no interpreter for Python {', '.join(missing)} (claimed in pyproject.toml's "
            "classifiers): put python3.X on PATH, or install it with pyenv"
        )
    session.install("build>=1.2", "twine>=6", "onnx>=1.17")
    tmp = session.create_tmp()
    dist = os.path.join(tmp, "dist")
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", dist)
    wheel, sdist = (glob.glob(os.path.join(dist, pattern))[0] for pattern in ("*.whl", "*.tar.gz"))
    session.run("twine", "check", "--strict", wheel, sdist)
    with tarfile.open(sdist) as archive:
        tests = [name for name in archive.getnames() if "/tests/" in name or name.endswith("noxfile.py")]
    if tests:
        session.error(f"build: the sdist ships tests it cannot run without the repository: {tests}")
    model = os.path.join(tmp, "dcn.onnx")
    session.run(
        "python",
        "-c",
        "import sys; sys.path.insert(0, 'tests'); import onnx, onnx_models; "
        f"onnx.save(onnx_models.build(onnx_models.NodeCase()), {model!r})",
    )
    for version, python in interpreters.items():
        session.log(f"Python {version}: {python}")
        venv = os.path.join(tmp, f"python{version}")
        session.run(str(python), "-m", "venv", "--clear", venv, external=True)
        bindir = os.path.join(venv, "bin")
        session.run(os.path.join(bindir, "python"), "-m", "pip", "install", "--quiet", wheel, external=True)
        _check_command_line(session, bindir, model, os.path.join(tmp, "out.onnx"))


def _check_command_line(session: nox.Session, bindir: str, model: str, out: str) -> None:
    """The torch-free command line of the environment ``bindir``, on the DeformConv ``model``."""
    session.run(os.path.join(bindir, "python"), "-c", _NO_TORCH, external=True)
    command = os.path.join(bindir, "deform-conv2d-onnx")
    session.run(command, "--version", external=True)
    session.run(command, "info", model, external=True)
    session.run(command, "decompose", model, out, external=True)
    for arguments, extra in ((["demo"], "torch"), (["verify", out, "--reference", model], "ort")):
        output = session.run(command, *arguments, success_codes=[1], silent=True, external=True)
        expected = f"deform_conv2d_onnx_exporter[{extra}]"
        if not isinstance(output, str) or output.count("\n") != 1 or expected not in output:
            session.error(f"{arguments[0]}: expected one line naming {expected}, got {output!r}")
        session.log(output.strip())


@nox.session(python="3.11")
def sweep(session: nox.Session) -> None:
    """The cartesian configuration sweep (hundreds of exports per exporter; about an hour)."""
    _install(session, DEV, "torch,test")
    session.run("python", "-m", "pytest", "-q", "--full-sweep", "tests/test_sweep.py", *session.posargs)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The speed and memory benchmark (benchmarks/bench.py); extra arguments go to it."""
    _install(session, DEV, "torch,ort")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session(python="3.11")
def fuzz(session: nox.Session) -> None:
    """The property-based tests with random examples, 500 of decompose_model instead of CI's fixed 60,
    and 2,500 malformed models instead of 300."""
    _install(session, DEV, "torch,test")
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "--hypothesis-profile=fuzz",
        "tests/test_properties.py",
        "tests/test_malformed.py",
        *session.posargs,
    )


@nox.session(python="3.11")
def precision(session: nox.Session) -> None:
    """Every entry point's default export and every lowering in the half-precision pipelines
    (fp16 converters, OpenVINO f16 and its default precision) at 64x64 to 1024x1024, against the
    float64 floor (tests/precision); extra arguments go to pytest."""
    _install(session, DEV, "torch,test")
    pins = [pin for pin in TOOLCHAIN["python"] if pin.startswith(("openvino==", "onnxconverter-common=="))]
    session.install(*pins, *DEV.pins(), env={"PIP_NO_CACHE_DIR": "1"})
    session.run("python", "-m", "pytest", "-q", "--precision", "tests/precision", *session.posargs)


#: The deployment tools of the ``toolchain`` session, the one place their versions are written down.
#: "python": installed beside the newest torch stack. "onnx2tf": a venv of its own on Python 3.12
#: (onnx2tf 2.x requires it), because onnx2tf pins exact onnx, onnxruntime, numpy and protobuf
#: releases; every package in it is pinned here, as pip resolved onnx2tf 2.6.9 (pytest among its
#: requirements), so that the venv is the same on every machine. No TensorFlow: onnx2tf 2.x writes
#: the .tflite file itself (its default backend, ``flatbuffer_direct``), and LiteRT
#: (``ai-edge-litert``) runs it. "npm": onnxruntime-web, the
#: browser driver (puppeteer 24: 25 needs node 22) and transformers.js (which brings its own
#: onnxruntime-node and onnxruntime-web releases), in a folder outside the clone. "apt": Debian's
#: browser the web runtime runs in, and node, installed only with ``DCE_ALLOW_APT=1``.
TOOLCHAIN = {
    "python": [
        "onnxsim==0.8.1",
        "onnxslim==0.1.98",
        "onnxconverter-common==1.16.0",
        "openvino==2026.4.1",
        "tract==0.23.9",
        "pnnx==20261020",
        "ncnn==1.0.20261020",
        "apache-tvm==0.27.0.post1",
        # TVM's runtime, which apache-tvm requires by a lower bound only
        "apache-tvm-ffi==0.1.15.post2",
        "mnn==3.6.1",
    ],
    "onnx2tf": [
        "onnx2tf==2.6.9",
        "ai-edge-litert==2.1.2",
        "backports.strenum==1.2.8",
        "flatbuffers==25.12.19",
        "h5py==3.14.0",
        "iniconfig==2.3.1",
        "markdown-it-py==4.3.0",
        "mdurl==0.1.2",
        "ml_dtypes==0.5.4",
        "mpmath==1.3.0",
        "numpy==2.2.6",
        "onnx==1.20.1",
        "onnx-ir==1.1.0",
        "onnxoptimizer==0.4.2",
        "onnxruntime==1.26.0",
        "onnxscript==0.6.2",
        "onnxsim==0.6.5",
        "opencv-python==4.13.0.92",
        "packaging==26.4",
        "pluggy==1.7.0",
        "protobuf==7.35.1",
        "psutil==5.9.5",
        "Pygments==2.21.0",
        "pytest==9.0.2",
        "rich==15.0.0",
        "setuptools==81.0.0",
        "sne4onnx==2.0.1",
        "sng4onnx==2.0.1",
        "sympy==1.14.0",
        "tqdm==4.67.1",
        "typing_extensions==4.16.0",
    ],
    "npm": ["onnxruntime-web@1.30.0", "puppeteer-core@24.43.1", "@huggingface/transformers@4.3.2"],
    "apt": ["chromium", "nodejs", "npm"],
}


def _toolchain_folder(session: nox.Session) -> str:
    """The folder, beside the nox environments, that holds the npm packages and onnx2tf's venv."""
    folder = os.path.join(nox.options.envdir, "toolchain-tools")
    os.makedirs(folder, exist_ok=True)
    return folder


def _pinned(folder: str, pins: list[str]) -> bool:
    """Whether ``folder`` was installed with exactly ``pins`` (its ``pins.txt``, written by ``_stamp``)."""
    stamp = os.path.join(folder, "pins.txt")
    if not os.path.exists(stamp):
        return False
    with open(stamp) as file:
        return file.read() == "\n".join(pins)


def _stamp(folder: str, pins: list[str]) -> None:
    with open(os.path.join(folder, "pins.txt"), "w") as file:
        file.write("\n".join(pins))


#: The Python version of onnx2tf's venv: onnx2tf 2.x requires 3.12 or newer.
ONNX2TF_PYTHON = "3.12"


def _install_onnx2tf(session: nox.Session, folder: str) -> str:
    """onnx2tf's own venv (created once, rebuilt when the pins change); returns its python."""
    venv = os.path.join(folder, "onnx2tf")
    python = os.path.join(venv, "bin", "python")
    if not _pinned(venv, TOOLCHAIN["onnx2tf"]):
        interpreter = _interpreter(ONNX2TF_PYTHON)
        if interpreter is None:
            session.error(
                f"toolchain: onnx2tf's venv needs Python {ONNX2TF_PYTHON} (onnx2tf 2.x requires it): "
                f"put python{ONNX2TF_PYTHON} on PATH, or install it with pyenv"
            )
        session.run_install(interpreter, "-m", "venv", "--clear", venv, external=True)
        session.run_install(
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            *TOOLCHAIN["onnx2tf"],
            external=True,
            env={"PIP_NO_CACHE_DIR": "1"},
        )
        _stamp(venv, TOOLCHAIN["onnx2tf"])
    return python


def _install_npm(session: nox.Session, folder: str) -> str:
    """``TOOLCHAIN["npm"]`` under ``folder/node`` (reinstalled when the pins change)."""
    node = os.path.join(folder, "node")
    if not _pinned(node, TOOLCHAIN["npm"]):
        os.makedirs(node, exist_ok=True)
        # puppeteer-core downloads no browser: it drives Debian's chromium. --ignore-scripts:
        # onnxruntime-node's install script downloads CUDA libraries from api.nuget.org (and fails
        # where that host is out of reach); the tests run its CPU binary, which the package holds.
        session.run_install(
            "npm",
            "install",
            "--prefix",
            node,
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            *TOOLCHAIN["npm"],
            external=True,
        )
        _stamp(node, TOOLCHAIN["npm"])
    return node


#: Set to 1 to let ``toolchain`` install ``TOOLCHAIN["apt"]`` system-wide (``.ci/run`` does in CI).
ALLOW_APT = "DCE_ALLOW_APT"


def _install_apt(session: nox.Session) -> None:
    """Debian's chromium and npm, which the session needs: there already, or installed on request.

    The only step of the test command that changes the machine outside the clone and the nox
    cache, so it runs only when ``DCE_ALLOW_APT=1`` asks for it, and before anything else.
    """
    if os.path.exists("/usr/bin/chromium") and shutil.which("npm"):
        return
    install = f"apt-get install {' '.join(TOOLCHAIN['apt'])}"
    if os.environ.get(ALLOW_APT) != "1":
        session.error(
            "toolchain: needs Debian's chromium (/usr/bin/chromium) and npm: run "
            f"`{install}` as root, or set {ALLOW_APT}=1 to let this session run it"
        )
    if os.geteuid() != 0:
        session.error(f"toolchain: {ALLOW_APT}=1 needs root to run `{install}`")
    session.run_install("apt-get", "update", "-qq", external=True)
    session.run_install(
        "apt-get",
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        *TOOLCHAIN["apt"],
        external=True,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )


@nox.session(python="3.11")
def toolchain(session: nox.Session) -> None:
    """Exported DCN models through the deployment tools of ``TOOLCHAIN`` (tests/toolchain).

    Prints the tool x variant table and writes it to ``toolchain-tools/table.md`` beside the nox
    environments; extra arguments go to pytest.
    """
    _install_apt(session)  # first: a missing system package stops the session before its downloads
    _install(session, DEV, "torch,test")
    session.install(*TOOLCHAIN["python"], *DEV.pins(), env={"PIP_NO_CACHE_DIR": "1"})
    folder = _toolchain_folder(session)
    env = {
        "DCE_ONNX2TF_PYTHON": _install_onnx2tf(session, folder),
        "DCE_NODE_MODULES": os.path.join(_install_npm(session, folder), "node_modules"),
        "DCE_TOOLCHAIN_TABLE": os.path.join(folder, "table.md"),
    }
    session.run("python", "-m", "pytest", "-q", "--toolchain", "tests/toolchain", *session.posargs, env=env)
