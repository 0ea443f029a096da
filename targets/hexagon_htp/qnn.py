"""The one door from edgec to Qualcomm's QNN HTP compiler and simulator.

This is the only module in edgec that imports ``onnxruntime_qnn``. It wraps ONNX Runtime's QNN
execution provider (a plugin EP shipped with the real ``libQnnHtp.so`` graph compiler and HTP
simulator) in a few typed calls:

- :func:`compile_context` turns a QDQ ONNX model into a QNN HTP context binary
  (``<name>_ctx.onnx`` holding ``EPContext`` nodes plus ``<name>_ctx_qnn.bin``), atomically;
- :func:`run_context` executes such a model on the HTP simulator, optionally with per-op cycle
  profiles (:func:`parse_profile_csv`);
- :func:`count_contexts` and :func:`context_placement` tell which nodes the EP took.

Facts this module is built on (observed with onnxruntime 1.32, onnxruntime-qnn 2.7.0, QAIRT
2.51.0; see also ``/work/shared/QNN_NOTES.md``):

- Compiles run in a fresh child process. QNN numbers graph tensors with a process-wide counter,
  so a second build in the same process yields a different (equivalent) ``.bin``; a child per
  build makes the bytes a function of the input and options only. The child also gives us the
  native log text and survives a QNN abort.
- The model is handed to ORT as bytes, never as a path: ORT names each partition
  ``QNNExecutionProvider_QNNExecutionProvider_<hash>_<i>_<j>`` and hashes the *model path* when
  there is one, which would put the temp-dir name into both output files. From bytes, the hash
  covers tensor names only.
- ``htp_arch`` values outside :data:`SUPPORTED_ARCHS` are silently replaced by a default, and a
  ``soc_model`` silently overrides ``htp_arch`` (the ``.bin`` is built for the SoC's arch while
  the ONNX metadata still names the requested arch), so both are validated here.
- ORT writes the context files even when session creation then fails (e.g. an unsupported node
  with CPU fallback disabled), so outputs are built in a temp dir and moved into place only on
  success.
"""

from __future__ import annotations

import atexit
import collections
import csv
import dataclasses
import functools
import hashlib
import io
import json
import mmap
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_qnn
from onnx.external_data_helper import uses_external_data

from compiler.errors import EmitError, FinalizeError, ModelLoadError, TargetError

__all__ = [
    "EP_NAME",
    "SUPPORTED_ARCHS",
    "DEFAULT_SOC",
    "SOC_MODELS",
    "ContextArtifacts",
    "Placement",
    "ProfileEvent",
    "OpCycles",
    "Profile",
    "RunResult",
    "validate_arch",
    "resolve_soc_model",
    "versions",
    "ensure_registered",
    "compile_context",
    "prestart",
    "release_prestarted",
    "count_contexts",
    "context_placement",
    "run_context",
    "parse_profile_csv",
    "clear_sessions",
    "QnnOp",
    "qnn_graph_ops",
]

EP_NAME = "QNNExecutionProvider"

SUPPORTED_ARCHS: tuple[str, ...] = ("68", "69", "73", "75", "79", "81")

# The SoC the EP builds for when only ``htp_arch`` is given (read back from the SoC id in the
# header of context binaries built by QAIRT 2.51.0). Needed because fp16 precision requires a
# soc_model.
DEFAULT_SOC: dict[str, int] = {"68": 30, "69": 36, "73": 43, "75": 57, "79": 69, "81": 87}

# QNN soc_model id -> (chip name, HTP arch). Each arch was checked by building a context with
# only this soc_model set and reading the arch back from the binary (QAIRT 2.51.0); names come
# from the EP's own name parser (SC8380XP, SM7675, SC8480XP) or ExecuTorch's QNN SoC table.
SOC_MODELS: dict[int, tuple[str, str]] = {
    30: ("SM8350", "68"),
    39: ("SA8295", "68"),
    36: ("SM8450", "69"),
    42: ("SM8475", "69"),
    53: ("SXR2230P", "69"),
    43: ("SM8550", "73"),
    45: ("SXR1230P", "73"),
    46: ("SSG2115P", "73"),
    58: ("SSG2125P", "73"),
    60: ("SC8380XP", "73"),
    68: ("SM8635", "73"),
    70: ("SM7675", "73"),
    57: ("SM8650", "75"),
    69: ("SM8750", "79"),
    87: ("SM8850", "81"),
    88: ("SC8480XP", "81"),
}

_EPCONTEXT = "EPContext"
_MS_DOMAIN = "com.microsoft"
_COMPAT_KEY = f"ep_compatibility_info.{EP_NAME}"
_MAX_SESSIONS = 8
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_QNN_ERROR = re.compile(r"\b(QNN_[A-Z0-9_]*ERROR[A-Z0-9_]*)\b")
_QNN_CODE = re.compile(r"Code:\s*(\d+)")
_UNSUPPORTED = re.compile(r"\{ name: (?P<name>[^,]*), type: (?P<op>[^ }]*) \}")
_VALIDATE_FAILED = re.compile(
    r"backendValidateOpConfig\(\) failed for node `(?P<node>[^`]*)` of type `(?P<op>[^`]*)`"
    r" with error code (?P<code>\d+)"
)
_OP_ROW = re.compile(r"^(?P<name>.*?)[: ]?OpId_(?P<id>\d+) \(cycles\)$")
_PROFILE_HEADER = (
    "Msg Timestamp",
    "Message",
    "Time",
    "Unit of Measurement",
    "Timing Source",
    "Event Level",
    "Event Identifier",
)
_EXECUTE_CYCLES = "Accelerator (execute) time (cycles)"


# --------------------------------------------------------------------------- targets & versions


def validate_arch(arch: str | int) -> str:
    """Return ``arch`` as a bare HTP arch string (``"75"``), or raise :class:`TargetError`.

    Accepts ``75``, ``"75"``, ``"v75"`` and ``"htp-v75"``. The EP itself accepts any value and
    silently builds for its default arch, so nothing else may pass.
    """
    text = str(arch).strip().lower()
    text = text.removeprefix("htp-").removeprefix("v")
    if isinstance(arch, bool) or text not in SUPPORTED_ARCHS:
        supported = ", ".join(f"v{a}" for a in SUPPORTED_ARCHS)
        raise TargetError(f"unsupported HTP arch {arch!r}: supported archs are {supported}")
    return text


def resolve_soc_model(soc_model: str | int | None, arch: str | int) -> int | None:
    """Return the numeric QNN SoC id for ``soc_model`` (an id or a chip name like ``SM8650``).

    Raises :class:`TargetError` for an unknown SoC, or one whose HTP arch is not ``arch``
    (the EP would silently build for the SoC's arch instead).
    """
    arch = validate_arch(arch)
    if soc_model is None:
        return None
    text = str(soc_model).strip().upper()
    soc: int | None = None
    if not isinstance(soc_model, bool) and text.isdigit():
        soc = int(text)
    else:
        soc = next((i for i, (chip, _) in SOC_MODELS.items() if chip == text), None)
    if soc is None or soc not in SOC_MODELS:
        known = ", ".join(f"{chip} ({i})" for i, (chip, _) in sorted(SOC_MODELS.items()))
        raise TargetError(f"unknown soc_model {soc_model!r}: known SoCs are {known}")
    chip, soc_arch = SOC_MODELS[soc]
    if soc_arch != arch:
        raise TargetError(
            f"soc_model {soc_model!r} ({chip}) has HTP arch v{soc_arch}, not v{arch}; "
            f"QNN would silently build for v{soc_arch}"
        )
    return soc


_BUILD_STRING = re.compile(r"v\d+\.\d+\.\d+\.\d+")


def _version_info(build: str) -> tuple[tuple[str, str], ...]:
    info: dict[str, str] = {
        "onnxruntime": str(ort.__version__),
        "onnxruntime_qnn": str(onnxruntime_qnn.__version__),
    }
    declared = str(getattr(onnxruntime_qnn.build_and_package_info, "qnn_version", ""))
    if build:
        # The library that runs is the authority; it is also what EPContext nodes record as
        # ``ep_sdk_version``.
        info["qairt"] = build.removeprefix("v").rsplit(".", 1)[0]
        info["qairt_build"] = build
    elif declared:
        info["qairt"] = declared
        info["qairt_build"] = ""
    else:
        info["qairt"] = info["qairt_build"] = "unknown"
    return tuple(info.items())


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    return _version_info(_qairt_build_from_library(Path(onnxruntime_qnn.get_qnn_htp_path())))


def versions(ep_sdk_version: str | None = None) -> dict[str, str]:
    """Versions of the QNN toolchain in this process (computed once, cached).

    Keys: ``onnxruntime``, ``onnxruntime_qnn``, ``qairt`` (e.g. ``"2.51.0"``) and
    ``qairt_build`` (e.g. ``"v2.51.0.260929181845"``, the same string the EP stores as
    ``ep_sdk_version`` in EPContext nodes). QAIRT is read from ``libQnnHtp.so`` itself, falling
    back to the wheel's ``build_and_package_info.qnn_version``.

    ``ep_sdk_version``: that string from a context this process just built
    (:attr:`ContextArtifacts.ep_sdk_version`); when it is one, it is the library's build and
    the scan of the 100 MB library is skipped.
    """
    if ep_sdk_version and _BUILD_STRING.fullmatch(ep_sdk_version):
        return dict(_version_info(ep_sdk_version))
    return dict(_versions())


def _qairt_build_from_library(lib: Path) -> str:
    try:
        with lib.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = data.find(b"hexnn_ver_v")
            if at < 0:
                return ""
            found = re.match(rb"hexnn_ver_(v\d+\.\d+\.\d+\.\d+)", data[at : at + 64])
    except (OSError, ValueError):
        return ""
    return found.group(1).decode() if found else ""


_register_lock = threading.Lock()
_registered = False


def ensure_registered() -> None:
    """Register the QNN plugin EP with ONNX Runtime once per process (thread-safe).

    ORT raises on a second registration under the same name, so this also tolerates a
    registration made by someone else in the same process.
    """
    global _registered
    if _registered:
        return
    with _register_lock:
        if _registered:
            return
        if not any(d.ep_name == EP_NAME for d in ort.get_ep_devices()):
            try:
                ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
            except Exception as exc:
                raise TargetError(f"cannot register the QNN execution provider: {exc}") from exc
        _registered = True


def _qnn_devices() -> list[Any]:
    ensure_registered()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise TargetError("the QNN execution provider is registered but offers no device")
    return devices


# --------------------------------------------------------------------------------- compilation


@dataclasses.dataclass(frozen=True)
class ContextArtifacts:
    """Files of one compiled context model, already in their final place.

    ``bins`` and ``bin_sha256`` are parallel; ``soc_model`` is the numeric QNN SoC id or None
    (then the EP's default SoC for ``arch``, :data:`DEFAULT_SOC`, was used).
    """

    ctx_onnx: Path
    bins: tuple[Path, ...]
    arch: str
    soc_model: int | None
    bin_sha256: tuple[str, ...]
    ep_sdk_version: str
    num_contexts: int


# Run in a child interpreter (see the module docstring for why). It imports nothing of edgec.
# It starts before it knows the build (so it can be started early, :func:`prestart`): it
# imports ORT and registers the EP, then reads one JSON line (the build) and the model bytes
# from stdin. The outcome goes to a JSON file, the log to stdout/stderr. An empty stdin (the
# parent released it, or died) ends it without building anything.
_CHILD_SCRIPT = r"""
import json, sys
boot = json.loads(sys.argv[1])
sys.path[:0] = boot["sys_path"]
import onnxruntime as ort
ort.set_default_logger_severity(boot["log_severity"])
ort.register_execution_provider_library(boot["ep_name"], boot["ep_library"])
devices = [d for d in ort.get_ep_devices() if d.ep_name == boot["ep_name"]]
line = sys.stdin.buffer.readline()
if not line.strip():
    sys.exit(0)
spec = json.loads(line)
so = ort.SessionOptions()
so.log_severity_level = boot["log_severity"]
for key, value in spec["config"].items():
    so.add_session_config_entry(key, value)
so.add_provider_for_devices(devices, spec["provider_options"])
data = sys.stdin.buffer.read()
try:
    ort.InferenceSession(data, so)
except Exception as exc:
    result = {"ok": False, "error": str(exc), "type": type(exc).__name__}
else:
    result = {"ok": True}
with open(spec["result_path"], "w", encoding="utf-8") as f:
    json.dump(result, f)
"""

_prestarted: subprocess.Popen[bytes] | None = None
_prestart_lock = threading.Lock()


def _spawn_child() -> subprocess.Popen[bytes]:
    sys_path = list(
        dict.fromkeys(
            str(Path(m.__file__ or "").resolve().parents[1]) for m in (ort, onnxruntime_qnn)
        )
    )
    boot = {
        "sys_path": sys_path,
        "log_severity": 2,  # warnings and errors: enough to name unsupported nodes
        "ep_name": EP_NAME,
        "ep_library": onnxruntime_qnn.get_library_path(),
    }
    return subprocess.Popen(
        [sys.executable, "-I", "-c", _CHILD_SCRIPT, json.dumps(boot)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def prestart() -> None:
    """Start the child interpreter of the next compile now, so that its start-up (Python,
    ONNX Runtime, the EP's registration: a few hundred ms) overlaps the caller's own work.

    Idempotent. The next :func:`compile_context` or :func:`qnn_graph_ops` builds in it (each
    child still builds exactly one model, so the bytes do not change); one left unused exits
    at :func:`release_prestarted`, at interpreter exit, or when this process dies."""
    global _prestarted
    with _prestart_lock:
        if _prestarted is not None and _prestarted.poll() is None:
            return
        try:
            _prestarted = _spawn_child()
        except OSError:
            _prestarted = None  # the compile will start its own child and report the error


def release_prestarted() -> None:
    """Let an unused prestarted child (:func:`prestart`) exit."""
    global _prestarted
    with _prestart_lock:
        proc, _prestarted = _prestarted, None
    if proc is not None:
        try:
            proc.communicate(b"", timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


atexit.register(release_prestarted)


def _take_child() -> subprocess.Popen[bytes]:
    """The prestarted child if there is a live one, else a new child."""
    global _prestarted
    with _prestart_lock:
        proc, _prestarted = _prestarted, None
    if proc is not None and proc.poll() is None:
        return proc
    if proc is not None:
        proc.communicate()  # it died before its build (it said why on stdout): start anew
    return _spawn_child()


def _check_optimization_level(optimization_level: int) -> None:
    if isinstance(optimization_level, bool) or optimization_level not in (0, 1, 2, 3):
        raise TargetError(f"optimization_level must be 0, 1, 2 or 3, not {optimization_level!r}")


def _serialized(qdq_model: onnx.ModelProto | str | os.PathLike[str]) -> tuple[bytes, str]:
    """The model's bytes and its label for messages."""
    model, label = _load_model(qdq_model)
    try:
        return model.SerializeToString(), label
    except ValueError as exc:  # protobuf refuses messages over 2 GiB
        raise EmitError(f"{label} is too large to compile as one HTP context: {exc}") from exc


def _base_provider_options(arch: str, optimization_level: int) -> dict[str, str]:
    """The QNN EP options every HTP build here shares."""
    return {
        "backend_path": onnxruntime_qnn.get_qnn_htp_path(),
        "htp_arch": arch,
        "htp_graph_finalization_optimization_mode": str(optimization_level),
        # With CPU fallback allowed the EP would by default push the graph-input Quantize and
        # graph-output Dequantize out to the CPU; keep them in so both modes build one graph.
        "offload_graph_io_quantization": "0",
    }


def compile_context(
    qdq_model: onnx.ModelProto | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    arch: str | int,
    name: str = "model",
    soc_model: str | int | None = None,
    optimization_level: int = 3,
    fp16_precision: bool = False,
    vtcm_mb: int | None = None,
    allow_cpu_fallback: bool = False,
) -> ContextArtifacts:
    """Compile a QDQ ONNX model into a QNN HTP context binary with the QNN EP.

    Writes ``out_dir/<name>_ctx.onnx`` (EPContext nodes referring to the binary by relative
    file name) and ``out_dir/<name>_ctx_qnn.bin``, replacing existing files of those names.
    Everything is built in a temp dir inside ``out_dir`` and moved in with ``os.replace`` (bins
    first, the ONNX last), so a failed compile leaves ``out_dir`` as it was. The same input and
    options give byte-identical files.

    Args:
        qdq_model: the model, or a path to it (external data is resolved beside it).
        out_dir: destination directory (created if missing).
        arch: HTP arch, one of :data:`SUPPORTED_ARCHS` (``"v75"`` accepted).
        name: stem of the output files.
        soc_model: QNN SoC id or chip name; must belong to ``arch``.
        optimization_level: ``htp_graph_finalization_optimization_mode``, 0-3 (3 = most
            optimized, slowest to build).
        fp16_precision: run float ops in fp16 (the EP requires a SoC; :data:`DEFAULT_SOC`
            of ``arch`` is used when ``soc_model`` is None).
        vtcm_mb: VTCM budget in MB, or None for the SoC default.
        allow_cpu_fallback: leave nodes the HTP does not take as ordinary ONNX nodes between
            several EPContext nodes, instead of failing.

    Raises:
        TargetError: bad arch, SoC or option.
        ModelLoadError: the model file cannot be read.
        FinalizeError: QNN refused to finalize the graph (``qnn_error`` holds the QNN error
            name, ``log`` the EP log).
        EmitError: any other failure, e.g. a node the HTP does not take while
            ``allow_cpu_fallback`` is False (the message lists those nodes).
    """
    arch = validate_arch(arch)
    soc = resolve_soc_model(soc_model, arch)
    if fp16_precision and soc is None:
        soc = DEFAULT_SOC[arch]
    _check_optimization_level(optimization_level)
    if vtcm_mb is not None and (
        isinstance(vtcm_mb, bool) or not isinstance(vtcm_mb, int) or vtcm_mb <= 0
    ):
        raise TargetError(f"vtcm_mb must be a positive integer, not {vtcm_mb!r}")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise EmitError(f"context name {name!r} must be a plain file stem")

    data, label = _serialized(qdq_model)
    provider_options = _base_provider_options(arch, optimization_level)
    if soc is not None:
        provider_options["soc_model"] = str(soc)
    if fp16_precision:
        provider_options["enable_htp_fp16_precision"] = "1"
    if vtcm_mb is not None:
        provider_options["vtcm_mb"] = str(vtcm_mb)

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{name}.qnn-build-", dir=out))
    except OSError as exc:
        raise EmitError(f"cannot create output directory {out}: {exc}") from exc
    try:
        ctx_name = f"{name}_ctx.onnx"
        ctx_tmp = build / ctx_name
        config = {
            "ep.context_enable": "1",
            "ep.context_file_path": str(ctx_tmp),
            "ep.context_embed_mode": "0",
            "session.disable_cpu_ep_fallback": "0" if allow_cpu_fallback else "1",
        }
        _compile_in_child(data, label, arch, build, provider_options, config)
        if not ctx_tmp.is_file():
            raise EmitError(f"QNN EP reported success for {label} but wrote no {ctx_name}")
        ctx = onnx.load(str(ctx_tmp), load_external_data=False)
        contexts = _epcontext_nodes(ctx)
        if not contexts:
            raise EmitError(f"QNN EP took no node of {label}: the context model has no EPContext")
        bin_names = _bin_names(ctx, build, label)
        # ORT emits opset imports from a hash map; sort them so the bytes never depend on it.
        imports = sorted(ctx.opset_import, key=lambda o: (o.domain, o.version))
        del ctx.opset_import[:]
        ctx.opset_import.extend(imports)
        onnx.save(ctx, str(ctx_tmp))
        shas = tuple(_sha256(build / b) for b in bin_names)
        for b in bin_names:
            os.replace(build / b, out / b)
        os.replace(ctx_tmp, out / ctx_name)
    except OSError as exc:
        raise EmitError(f"writing the QNN context for {label} into {out} failed: {exc}") from exc
    finally:
        shutil.rmtree(build, ignore_errors=True)

    sdk = next((_attr(n, "ep_sdk_version") for n in contexts if _attr(n, "ep_sdk_version")), "")
    return ContextArtifacts(
        ctx_onnx=out / ctx_name,
        bins=tuple(out / b for b in bin_names),
        arch=arch,
        soc_model=soc,
        bin_sha256=shas,
        ep_sdk_version=str(sdk),
        num_contexts=len(contexts),
    )


#: QNN tensor data types (``QnnTypes.h``) -> short names
_QNN_DTYPES: dict[int, str] = {
    0x0008: "int8", 0x0016: "int16", 0x0032: "int32", 0x0064: "int64",
    0x0108: "uint8", 0x0116: "uint16", 0x0132: "uint32", 0x0164: "uint64",
    0x0216: "float16", 0x0232: "float32",
    0x0304: "sfixed4", 0x0308: "sfixed8", 0x0316: "sfixed16", 0x0332: "sfixed32",
    0x0404: "ufixed4", 0x0408: "ufixed8", 0x0416: "ufixed16", 0x0432: "ufixed32",
    0x0508: "bool8",
}


@dataclasses.dataclass(frozen=True)
class QnnOp:
    """One op of the QNN graph the EP built: QNN op type (``FullyConnected``, ``Convert``,
    ``Dequantize``...), node name, the data types of its input and output tensors
    (``ufixed8``, ``ufixed16``, ``sfixed32``, ``float32``...), and whether it computes in float:
    a float tensor other than a graph input or output (a graph input's ``Quantize`` and a graph
    output's ``Dequantize`` are the integer graph's edges, not float compute)."""

    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    is_float: bool


def qnn_graph_ops(
    qdq_model: onnx.ModelProto | str | os.PathLike[str],
    *,
    arch: str | int,
    optimization_level: int = 3,
    allow_cpu_fallback: bool = False,
) -> tuple[QnnOp, ...]:
    """The ops of the QNN HTP graph(s) the EP builds from ``qdq_model`` (compiled through the
    EP's ``dump_json_qnn_graph``; nodes it refuses stay on the CPU when
    ``allow_cpu_fallback``, else they are an error), in the dump's order.

    This is how to see what the HTP really runs: a node the EP cannot fold into an integer
    unit still compiles, as a float op between standalone ``Dequantize``/``Quantize`` ops, and
    costs 10-100x the simulator cycles. Raises like :func:`compile_context`."""
    arch = validate_arch(arch)
    _check_optimization_level(optimization_level)
    data, label = _serialized(qdq_model)
    with tempfile.TemporaryDirectory(prefix="edgec-qnn-json-") as tmp:
        build = Path(tmp)
        dump = build / "json"
        dump.mkdir()
        options = {**_base_provider_options(arch, optimization_level),
                   "dump_json_qnn_graph": "1", "json_qnn_graph_dir": str(dump)}
        _compile_in_child(data, label, arch, build, options,
                          {"session.disable_cpu_ep_fallback": "0" if allow_cpu_fallback else "1"})
        ops: list[QnnOp] = []
        for f in sorted(dump.glob("*.json")):
            if f.name.endswith("_tensor_log.json"):
                continue
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise EmitError(f"QNN graph dump {f.name} of {label} is unreadable: {exc}"
                                ) from exc
            graph = doc.get("graph", doc)
            tensors = graph.get("tensors", {})

            def dtype(t: str, tensors: dict[str, Any] = tensors) -> str:
                code = tensors.get(t, {}).get("data_type")
                return _QNN_DTYPES.get(int(code), str(code)) if code is not None else "?"

            def inner_float(t: str, tensors: dict[str, Any] = tensors) -> bool:
                info = tensors.get(t, {})
                # tensor type 0 = APP_WRITE (graph input), 1 = APP_READ (graph output)
                return dtype(t) == "float32" and info.get("type") not in (0, 1)

            for node_name, node in graph.get("nodes", {}).items():
                names = [*node.get("input_names", []), *node.get("output_names", [])]
                ops.append(QnnOp(
                    op=str(node.get("type", "")), name=str(node_name),
                    inputs=tuple(dtype(t) for t in node.get("input_names", [])),
                    outputs=tuple(dtype(t) for t in node.get("output_names", [])),
                    is_float=any(inner_float(t) for t in names)))
    if not ops:
        raise EmitError(f"the QNN EP dumped no graph for {label}")
    return tuple(ops)


def _load_model(model: onnx.ModelProto | str | os.PathLike[str]) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        label = f"in-memory model {model.graph.name!r}"
        # The EP gets bytes without a base directory, so external references cannot resolve.
        tensors = [*model.graph.initializer]
        tensors += [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
        if any(uses_external_data(t) for t in tensors):
            raise EmitError(f"{label} refers to external data; load it or pass the file path")
        return model, label
    path = Path(model)
    try:
        return onnx.load(str(path)), str(path)
    except Exception as exc:  # onnx raises several unrelated types for unreadable files
        raise ModelLoadError(f"cannot read ONNX model {path}: {exc}") from exc


def _compile_in_child(
    data: bytes,
    label: str,
    arch: str,
    build: Path,
    provider_options: dict[str, str],
    config: dict[str, str],
) -> None:
    result_path = build / "result.json"
    spec = {
        "provider_options": provider_options,
        "config": config,
        "result_path": str(result_path),
    }
    try:
        proc = _take_child()
        stdout, _ = proc.communicate(json.dumps(spec).encode() + b"\n" + data)
    except OSError as exc:
        raise EmitError(f"cannot start the QNN compile of {label}: {exc}") from exc
    log = _ANSI.sub("", stdout.decode("utf-8", "replace"))
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = None
    if result is not None and result.get("ok"):
        return  # the files are complete once the session exists; exit status is teardown
    if result is None:
        rc = proc.returncode
        how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        tail = " | ".join(log.strip().splitlines()[-5:])
        raise EmitError(f"QNN compile of {label} for v{arch} died ({how}): {tail}")
    _raise_compile_error(label, arch, str(result.get("error", "")), log)


def _raise_compile_error(label: str, arch: str, error: str, log: str) -> None:
    error = error.strip()
    qnn_error, code = _qnn_error(error) or _qnn_error(log) or ("", "")
    if "Failed to finalize QNN graph" in error or "Failed to finalize QNN graph" in log:
        raise FinalizeError(
            f"QNN HTP v{arch} could not finalize {label}: {qnn_error or 'unknown error'}"
            + (f" (code {code})" if code else ""),
            qnn_error=qnn_error,
            log=f"{log.rstrip()}\n{error}\n",
        )
    unsupported = list(
        dict.fromkeys(f"{m['name']} ({m['op']})" for m in _UNSUPPORTED.finditer(log))
    )
    rejected = list(
        dict.fromkeys(
            f"{m['node']} ({m['op']}, QNN error {m['code']})"
            for m in _VALIDATE_FAILED.finditer(log)
        )
    )
    parts = [f"QNN EP failed to compile {label} for v{arch}"]
    if unsupported:
        parts.append(f"nodes QNN HTP does not take: {', '.join(unsupported)}")
    if rejected:
        parts.append(f"rejected by HTP op validation: {', '.join(rejected)}")
    if qnn_error:
        parts.append(qnn_error + (f" (code {code})" if code else ""))
    parts.append(f"ORT said: {error.splitlines()[0] if error else 'nothing'}")
    raise EmitError("; ".join(parts))


def _qnn_error(text: str) -> tuple[str, str] | None:
    found = _QNN_ERROR.search(text)
    if found is None:
        return None
    code = _QNN_CODE.search(text, found.end())
    return found.group(1), code.group(1) if code else ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------- reading ctx models


def _as_model(ctx_model: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    if isinstance(ctx_model, onnx.ModelProto):
        return ctx_model
    try:
        return onnx.load(str(ctx_model), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types for unreadable files
        raise ModelLoadError(f"cannot read context model {ctx_model}: {exc}") from exc


def _is_epcontext(node: onnx.NodeProto) -> bool:
    return node.op_type == _EPCONTEXT and node.domain == _MS_DOMAIN


def _epcontext_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if _is_epcontext(n)]


def _attr(node: onnx.NodeProto, name: str) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return None


def _bin_names(model: onnx.ModelProto, folder: Path, label: str) -> list[str]:
    """File names of the external context binaries a ctx model refers to, checked to exist."""
    names: list[str] = []
    for node in _epcontext_nodes(model):
        ref = _attr(node, "ep_cache_context")
        if _attr(node, "embed_mode") != 0 or not ref:
            continue  # embedded binary, or a non-main node sharing its main node's binary
        if Path(ref).name != ref or not (folder / ref).is_file():
            raise EmitError(f"context model for {label} refers to a missing binary {ref!r}")
        if ref not in names:
            names.append(ref)
    return names


def count_contexts(ctx_model: onnx.ModelProto | str | os.PathLike[str]) -> int:
    """Number of ``EPContext`` nodes (QNN graphs) in a context model."""
    return len(_epcontext_nodes(_as_model(ctx_model)))


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the nodes of an original model ended up after a compile.

    Nodes are named by their ONNX name, or ``"<op_type>(<first output>)"`` when nameless.
    ``on_htp`` also holds nodes ORT's graph optimizations removed before partitioning (they
    are not outside either); ``created`` are nodes ORT made (e.g. duplicated DequantizeLinear)
    that stayed outside.
    """

    contexts: tuple[str, ...]
    on_htp: tuple[str, ...]
    outside: tuple[str, ...]
    created: tuple[str, ...]


def context_placement(
    ctx_model: onnx.ModelProto | str | os.PathLike[str],
    original: onnx.ModelProto | str | os.PathLike[str],
) -> Placement:
    """Which nodes of ``original`` went into EPContext nodes and which stayed ordinary nodes.

    Matching is by node name (ORT keeps the names of nodes it leaves outside, but renames the
    tensors at context boundaries after their producer nodes), and by output tensor name for
    nameless nodes. Only meaningful for a compile with ``allow_cpu_fallback=True`` (otherwise
    everything is inside or the compile failed).
    """
    ctx = _as_model(ctx_model)
    orig = _as_model(original)
    left = [n for n in ctx.graph.node if not _is_epcontext(n)]
    left_names = {n.name for n in left if n.name}
    left_outputs = {o for n in left for o in n.output if o}
    original_names = {n.name for n in orig.graph.node if n.name}
    original_outputs = {o for n in orig.graph.node for o in n.output if o}

    def label(node: onnx.NodeProto) -> str:
        return node.name or f"{node.op_type}({next(iter(node.output), '')})"

    on_htp: list[str] = []
    outside: list[str] = []
    for node in orig.graph.node:
        stayed = (
            node.name in left_names if node.name else bool(left_outputs.intersection(node.output))
        )
        (outside if stayed else on_htp).append(label(node))
    created = [
        label(n)
        for n in left
        if n.name not in original_names and not original_outputs.intersection(n.output)
    ]
    return Placement(
        contexts=tuple(n.name for n in _epcontext_nodes(ctx)),
        on_htp=tuple(on_htp),
        outside=tuple(outside),
        created=tuple(created),
    )


def _context_arch(model: onnx.ModelProto) -> str | None:
    # ``v2:<backend id>:<qairt>:<htp lib>:<arch>:<soc>:...`` as written by the 2.7.0 EP.
    for prop in model.metadata_props:
        if prop.key == _COMPAT_KEY:
            fields = prop.value.split(":")
            return fields[4] if len(fields) > 4 else None
    return None


# --------------------------------------------------------------------------- running & profiles


@dataclasses.dataclass(frozen=True)
class ProfileEvent:
    """One row of the QNN profile CSV: Message, Time, Unit, Event Level, Event Identifier."""

    kind: str
    value: int
    unit: str
    level: str
    identifier: str


@dataclasses.dataclass(frozen=True)
class OpCycles:
    """Simulated cycles of one QNN op in one graph execution.

    ``name`` is the QNN node name (the ONNX node name, or an EP-made one such as
    ``conv_token_1`` or ``x_QuantizeLinear``); the graph's I/O rows are named ``Input`` and
    ``Output``. ``graph`` indexes the QNN graphs in execution order.
    """

    graph: int
    name: str
    op_id: int | None
    cycles: int


@dataclasses.dataclass(frozen=True)
class Profile:
    """A parsed QNN ``profiling_level=detailed`` CSV for one inference.

    ``total_cycles`` sums the ``Accelerator (execute) time (cycles)`` row of every QNN graph
    executed (``graph_cycles`` keeps them apart).
    """

    total_cycles: int
    graph_cycles: tuple[int, ...]
    ops: tuple[OpCycles, ...]
    events: tuple[ProfileEvent, ...]


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Outputs of one simulator run by output name, plus the profile when one was asked for."""

    outputs: dict[str, np.ndarray]
    profile: Profile | None = None


def parse_profile_csv(text: str) -> Profile:
    """Parse the CSV the QNN EP writes with ``profiling_level=detailed``.

    The file has the header ``Msg Timestamp,Message,Time,Unit of Measurement,Timing Source,
    Event Level,Event Identifier``; per QNN graph execution a ``ROOT`` row
    ``Accelerator (execute) time (cycles)`` is followed by ``NODE``/``SUB-EVENT`` rows such as
    ``conv_token_1:OpId_24 (cycles)``. Identifiers are the last column and are not quoted, so
    extra commas belong to them. Raises :class:`EmitError` if the header is missing.
    """
    rows = list(csv.reader(io.StringIO(text)))
    header_at = next(
        (i for i, r in enumerate(rows) if tuple(c.strip() for c in r[:7]) == _PROFILE_HEADER),
        None,
    )
    if header_at is None:
        raise EmitError("QNN profile has no 'Msg Timestamp,Message,Time,...' header")
    events: list[ProfileEvent] = []
    graph_cycles: list[int] = []
    ops: list[OpCycles] = []
    for row in rows[header_at + 1 :]:
        if len(row) < 7 or tuple(c.strip() for c in row[:7]) == _PROFILE_HEADER:
            continue
        try:
            value = int(float(row[2]))
        except ValueError:
            continue
        ident = ",".join(row[6:]).strip()
        event = ProfileEvent(row[1].strip(), value, row[3].strip(), row[5].strip(), ident)
        events.append(event)
        if event.identifier == _EXECUTE_CYCLES and event.unit == "CYCLES":
            graph_cycles.append(event.value)
        elif event.kind == "NODE" and event.unit == "CYCLES" and graph_cycles:
            found = _OP_ROW.match(ident)
            name = found["name"] if found else ident.removesuffix(" (cycles)")
            op_id = int(found["id"]) if found else None
            ops.append(OpCycles(len(graph_cycles) - 1, name, op_id, event.value))
    return Profile(sum(graph_cycles), tuple(graph_cycles), tuple(ops), tuple(events))


@dataclasses.dataclass
class _Session:
    session: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    lock: threading.Lock
    profile_dir: tempfile.TemporaryDirectory[str] | None = None
    warmed: bool = False

    @property
    def profile_path(self) -> Path | None:
        return Path(self.profile_dir.name) / "profile.csv" if self.profile_dir else None

    def close(self) -> None:
        with self.lock:  # wait for a run in flight
            self.session = None  # release the QNN context before deleting its profile folder
            if self.profile_dir is not None:
                self.profile_dir.cleanup()


_sessions: collections.OrderedDict[tuple[Any, ...], _Session] = collections.OrderedDict()
_sessions_lock = threading.Lock()


def clear_sessions() -> None:
    """Drop every cached simulator session (and its profiling temp dir)."""
    with _sessions_lock:
        while _sessions:
            _sessions.popitem(last=False)[1].close()


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def _session_for(path: Path, model: onnx.ModelProto, profile: bool) -> _Session:
    bins = _bin_names(model, path.parent, str(path))
    # A rebuilt context at the same path must not hit a stale session.
    key = (profile, _file_key(path), *(_file_key(path.parent / b) for b in bins))
    with _sessions_lock:
        cached = _sessions.get(key)
        if cached is not None:
            _sessions.move_to_end(key)
            return cached
        entry = _open_session(path, model, profile)
        _sessions[key] = entry
        while len(_sessions) > _MAX_SESSIONS:
            _sessions.popitem(last=False)[1].close()
        return entry


def _open_session(path: Path, model: onnx.ModelProto, profile: bool) -> _Session:
    devices = _qnn_devices()
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the EP warns about Windows-only features on every session
    if all(_is_epcontext(n) for n in model.graph.node):
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options = {"backend_path": onnxruntime_qnn.get_qnn_htp_path()}
    profile_dir = None
    if profile:
        profile_dir = tempfile.TemporaryDirectory(prefix="edgec-qnn-profile-")
        options["profiling_level"] = "detailed"
        options["profiling_file_path"] = str(Path(profile_dir.name) / "profile.csv")
    so.add_provider_for_devices(devices, options)
    try:
        session = ort.InferenceSession(str(path), so)
    except Exception as exc:
        if profile_dir is not None:
            profile_dir.cleanup()
        found = _qnn_error(str(exc))
        suffix = f" [{found[0]}]" if found else ""
        raise EmitError(f"QNN HTP simulator cannot load {path}: {exc}{suffix}") from exc
    return _Session(
        session=session,
        input_names=tuple(i.name for i in session.get_inputs()),
        output_names=tuple(o.name for o in session.get_outputs()),
        lock=threading.Lock(),
        profile_dir=profile_dir,
    )


def run_context(
    ctx_onnx_path: str | os.PathLike[str],
    inputs: Mapping[str, np.ndarray],
    *,
    profile: bool = False,
    arch: str | int | None = None,
) -> RunResult:
    """Run a context model (EPContext nodes, plus any CPU nodes) on the HTP simulator.

    The context carries its own arch; when ``arch`` is given it is checked against the one the
    model records (:class:`TargetError` on mismatch). Sessions are cached per file (and
    reopened when the files change); nothing is written beside the model. With ``profile=True``
    the run is profiled at ``detailed`` level into a private temp file and
    :attr:`RunResult.profile` holds its parse. A new profiling session first executes the inputs
    once and discards that run's rows: the first execution of a session costs up to several
    times the steady-state cycles. Steady-state totals vary by about +-5% from run to run.

    Raises :class:`EmitError` when the simulator cannot load or run the model or the inputs do
    not match its inputs.
    """
    path = Path(ctx_onnx_path).resolve()
    if not path.is_file():
        raise EmitError(f"context model {path} does not exist")
    model = _as_model(path)
    if arch is not None:
        want = validate_arch(arch)
        have = _context_arch(model)
        if have is not None and have != want:
            raise TargetError(f"{path} was built for HTP v{have}, not v{want}")
    while True:
        entry = _session_for(path, model, profile)
        missing = [n for n in entry.input_names if n not in inputs]
        extra = [n for n in inputs if n not in entry.input_names]
        if missing or extra:
            raise EmitError(
                f"inputs for {path} do not match: expected {list(entry.input_names)}, "
                f"missing {missing}, unexpected {extra}"
            )
        feeds = {n: np.ascontiguousarray(inputs[n]) for n in entry.input_names}
        with entry.lock:  # profiled runs append to one file; keep each run's rows together
            if entry.session is None:
                continue  # evicted from the cache by another thread meanwhile: reopen
            values, parsed = _run_locked(entry, feeds, path)
        return RunResult(outputs=dict(zip(entry.output_names, values)), profile=parsed)


def _run_locked(
    entry: _Session, feeds: dict[str, np.ndarray], path: Path
) -> tuple[list[np.ndarray], Profile | None]:
    csv_path = entry.profile_path
    try:
        if csv_path is not None and not entry.warmed:
            # A session's first execution pays for powering up and caching: several times
            # the steady-state cycles on small graphs. Profiles report the steady state.
            entry.session.run(list(entry.output_names), feeds)
            entry.warmed = True
        start = csv_path.stat().st_size if csv_path and csv_path.exists() else 0
        values = entry.session.run(list(entry.output_names), feeds)
    except Exception as exc:
        found = _qnn_error(str(exc))
        suffix = f" [{found[0]}]" if found else ""
        raise EmitError(f"QNN HTP simulator failed to run {path}: {exc}{suffix}") from exc
    parsed = _read_profile(csv_path, start, path) if csv_path is not None else None
    return list(values), parsed


def _read_profile(csv_path: Path, start: int, model_path: Path) -> Profile:
    try:
        with csv_path.open("rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        raise EmitError(f"QNN wrote no profile for {model_path}: {exc}") from exc
    # The header is written once per file; later runs only append rows.
    parsed = parse_profile_csv(",".join(_PROFILE_HEADER) + "\n" + text)
    if not parsed.graph_cycles:
        raise EmitError(f"QNN profile for {model_path} has no '{_EXECUTE_CYCLES}' row")
    return parsed
