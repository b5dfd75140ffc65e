"""The CUDA half of the static kernel report (drn_kernels.aot): facts about the CUDA kernels (csrc/cuda)
read from their cubins, no GPU needed. Nothing here is used to run a kernel.

`cuda_records()` returns one record per kernel instance x arch:
    {"source": "cuda", "kernel": str, "arch": "sm_80"|"sm_90", "dtype": "fp16"|"bf16"|"fp32", "config": str,
     "registers": int, "spill_bytes": int, "shared_bytes": int, "tensor_core_instructions": int,
     "wgmma_instructions": int, "ldsm": int, "calls": int, "loop_exit_calls": int, "division_ops": int,
     "main_loop": main_loop_mix(...) or None}
from `cuobjdump --dump-resource-usage` (REG, SHARED, LOCAL) and `cuobjdump -sass` (HMMA + HGMMA, and HGMMA alone,
per function; kernel_facts and main_loop_mix).
spill_bytes is the per-thread local memory (register spills plus any stack frame), so 0 means neither.
shared_bytes is static shared memory plus, for the conv, the dynamic shared memory its launch asks for.

Where the cubins come from: the built extension (drn_kernels._build.extension.built_library()) when it exists and holds
device code; otherwise the kernel headers are compiled here with nvcc for sm_80 and sm_90a into cubins, cached
by source digest (so this works before, and independently of, the extension build). The instances compiled in
that case are the ones csrc/cuda/host_ops.cuh launches (_INSTANCES below; keep the two in step).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from . import config

_ROOT = Path(__file__).resolve().parents[2]
_CUDA_SRC = _ROOT / "csrc" / "cuda"
ARCHS = {"sm_80": "sm_80", "sm_90a": "sm_90", "sm_90": "sm_90"}  # cubin arch -> record arch
_NVCC_ARCHS = ("sm_80", "sm_90a")

_CONV_TILES = ("Tile64x64", "Tile128x128", "Tile128x64", "Tile64x128")
_INSTANCES = [  # launch_conv: the vector path with OutT == T takes any tile; the scalar gather and fp32 logits 64x64
    f"template __global__ void drn::conv_bn_act_kernel<{t}, {o}, {v}, drn::conv::{tile}>(drn::ConvParams);"
    for t in ("float", "drn::half_t", "drn::bf16_t") for o in dict.fromkeys((t, "float")) for v in ("true", "false")
    for tile in _CONV_TILES if tile == "Tile64x64" or (v == "true" and o == t)
] + [
    f"template __global__ void drn::class_head_pixel_kernel<{lab}>(const float*, {lab}*, float*, int, int, int, "
    f"int, int);" for lab in ("int64_t", "int32_t", "int16_t", "uint8_t")
] + [
    f"template __global__ void drn::localize_image_kernel<{t}>(const float*, const int64_t*, const float*, {t}*, "
    f"float*, int, int, int, float, int64_t);" for t in ("float", "drn::half_t", "drn::bf16_t")
]

_DTYPES = {"float": "fp32", "__half": "fp16", "__nv_bfloat16": "bf16"}
_TORCH_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]


def _cuda_home() -> Path | None:
    home, _ = config.find_cuda_home()
    return Path(home) if home and (Path(home) / "bin" / "nvcc").is_file() else None


def nvcc_path() -> str | None:
    home = _cuda_home()
    return str(home / "bin" / "nvcc") if home else None


def cuobjdump_path() -> str | None:
    """cuobjdump from the CUDA toolkit, or the copy triton ships (backends/nvidia/bin)."""
    home = _cuda_home()
    if home and (home / "bin" / "cuobjdump").is_file():
        return str(home / "bin" / "cuobjdump")
    try:
        import triton

        cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if cand.is_file():
            return str(cand)
    except ImportError:
        pass
    return shutil.which("cuobjdump")


def why_unavailable() -> str | None:
    if cuobjdump_path() is None:
        return "cuobjdump not found (CUDA toolkit or triton's backends/nvidia/bin)"
    if _extension_library() is None and nvcc_path() is None:
        return "neither a CUDA build of drn_kernels._C nor nvcc (set CUDA_HOME) is available"
    return None


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _extension_library() -> Path | None:
    """The _C library when it is already built (loaded in this process, or built in place by setup.py) and
    contains cubins for our archs. Never starts a build: a CUDA build of _C takes many minutes."""
    try:
        from . import extension as _extension

        path = _extension.built_library()
    except Exception:  # noqa: BLE001 — a broken extension means no cubins from it
        return None
    if not path or not Path(path).is_file() or cuobjdump_path() is None:
        return None
    listing = subprocess.run([cuobjdump_path(), "-lelf", str(path)], capture_output=True, text=True).stdout
    return Path(path) if any(a in listing for a in ARCHS) else None


def _digest() -> str:
    return config.sources_digest(_CUDA_SRC.glob("*.cuh"), prefix="\n".join(_INSTANCES))


def build_cubins(ptxas_verbose: bool = False) -> dict[str, Path]:
    """Compile the kernel headers for sm_80 and sm_90a with nvcc (no torch headers); {arch: cubin path}.

    With ptxas_verbose the -Xptxas=-v report is written next to each cubin (<arch>.ptxas.txt).
    """
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME)")
    from . import extension

    out = Path(extension.build_directory(False, name="drn_kernels_cuda_cubins")) / _digest()
    out.mkdir(parents=True, exist_ok=True)
    tu = out / "instances.cu"
    tu.write_text('#include "conv_bn_act_kernel.cuh"\n#include "class_head_kernel.cuh"\n' + "\n".join(_INSTANCES)
                  + "\n")
    cubins = {}
    for arch in _NVCC_ARCHS:
        cubin = out / f"{arch}.cubin"
        report = out / f"{arch}.ptxas.txt"
        if not cubin.is_file() or (ptxas_verbose and not report.is_file()):
            cmd = [nvcc, "-std=c++20", "-O3", "-cubin", f"-arch={arch}", f"-I{_CUDA_SRC}", *_TORCH_FLAGS,
                   "-Xptxas=-v", str(tu), "-o", str(cubin) + ".tmp"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
            report.write_text(proc.stderr)
            os.replace(str(cubin) + ".tmp", cubin)
        cubins[arch] = cubin
    return cubins


def _split_by_arch(text: str, arch: str | None) -> list[tuple[str, str]]:
    """[(arch, section text)] of a cuobjdump listing: one section per cubin embedded in a library; a lone cubin
    has no arch header, so its arch is given."""
    parts = re.split(r"^\s*arch = (sm_\w+)\s*$", text, flags=re.M)
    if len(parts) == 1:
        return [(arch, text)] if arch else []
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def _demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def _describe(demangled: str) -> tuple[str, str, str]:
    """(kernel, dtype, config) from e.g. 'void drn::conv_bn_act_kernel<__half, float, true,
    drn::ConvTile<64, 64, 2, 2, 3> >(drn::ConvParams)'."""
    m = re.search(r"drn::(\w+)<(.*)>\(", demangled)
    if not m:
        return demangled, "fp32", ""
    kernel, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
    if kernel == "conv_bn_act_kernel":
        dtype = _DTYPES.get(args[0], args[0])
        out = _DTYPES.get(args[1], args[1])
        load = "cp.async16" if args[2] == "true" else "scalar-gather"
        bm, bn, warps_m, warps_n, stages = conv_tile_params(m.group(2))
        bk = 16 if dtype == "fp32" else 32
        math = "ffma" if dtype == "fp32" else "mma.m16n8k16"
        return (kernel, dtype,
                f"BM{bm}_BN{bn}_BK{bk}_stages{stages}_warps{warps_m * warps_n} {math} {load} out={out}")
    if kernel == "class_head_pixel_kernel":
        label = {"long": "int64", "int": "int32", "short": "int16", "unsigned char": "uint8"}.get(args[0], args[0])
        return kernel, "fp32", f"threads256 labels={label}"
    if kernel == "localize_image_kernel":
        return kernel, _DTYPES.get(args[0], args[0]), "threads128 block-per-image"
    return kernel, _DTYPES.get(args[0], "fp32"), ",".join(args)


def conv_tile_params(template_args: str) -> tuple[int, int, int, int, int]:
    """(BM, BN, warps M, warps N, stages) of a conv_bn_act_kernel instance's demangled template arguments
    (`drn::ConvTile<128, 128, 2, 4, 4>`)."""
    m = re.search(r"ConvTile<(\d+), ?(\d+), ?(\d+), ?(\d+), ?(\d+)>", template_args)
    if not m:
        raise ValueError(f"no ConvTile in {template_args!r}")
    return tuple(int(v) for v in m.groups())


def conv_dynamic_shared_bytes(config: str) -> int:
    """Dynamic shared memory a conv_bn_act_kernel config launches with (ConvTile::kSharedBytes: stages x (BM + BN)
    rows of 64 bytes), from its config string; cuobjdump's SHARED counts only static shared memory."""
    m = re.match(r"BM(\d+)_BN(\d+)_BK\d+_stages(\d+)", config)
    return int(m.group(3)) * (int(m.group(1)) + int(m.group(2))) * 64


def records_from_binary(path: Path, arch: str | None = None) -> list[dict]:
    """Records for every kernel of a shared library with embedded cubins, or of one cubin built for `arch`."""
    tool = cuobjdump_path()
    if tool is None:
        raise RuntimeError("cuobjdump not found")
    usage = _run([tool, "--dump-resource-usage", str(path)])
    sass = _run([tool, "-sass", str(path)])
    resources: dict[tuple[str, str], dict] = {}
    for arch, section in _split_by_arch(usage, arch):
        for name, fields in re.findall(r"Function (\S+?):\s*\n\s*(REG:.*)", section):
            kv = dict(re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", fields))
            resources[(arch, name)] = kv
    tensor_core: dict[tuple[str, str], int] = {}
    wgmma: dict[tuple[str, str], int] = {}
    facts: dict[tuple[str, str], dict] = {}
    for arch, section in _split_by_arch(sass, arch):
        blocks = re.split(r"^\s*Function : (\S+)\s*$", section, flags=re.M)
        for i in range(1, len(blocks) - 1, 2):
            tensor_core[(arch, blocks[i])] = len(re.findall(r"\b(?:HMMA|HGMMA)\.", blocks[i + 1]))
            wgmma[(arch, blocks[i])] = len(re.findall(r"\bHGMMA\.", blocks[i + 1]))
            facts[(arch, blocks[i])] = {**kernel_facts(blocks[i + 1]), "main_loop": main_loop_mix(blocks[i + 1])}
    names = _demangle(sorted({n for _, n in resources}))
    records, seen = [], set()
    for (cubin_arch, name), kv in sorted(resources.items()):
        if cubin_arch not in ARCHS or not name.startswith("_ZN3drn"):
            continue
        kernel, dtype, variant = _describe(names[name])
        if (cubin_arch, name) in seen:  # a template instance launched from two .cu files is in two cubins
            continue
        seen.add((cubin_arch, name))
        records.append({
            "source": "cuda", "kernel": kernel, "arch": ARCHS[cubin_arch], "dtype": dtype, "config": variant,
            "registers": int(kv.get("REG", 0)),
            "spill_bytes": int(kv.get("LOCAL", 0)) + int(kv.get("STACK", 0)),
            "shared_bytes": int(kv.get("SHARED", 0)) + (conv_dynamic_shared_bytes(config)
                                                         if kernel == "conv_bn_act_kernel" else 0),
            "tensor_core_instructions": tensor_core.get((cubin_arch, name), 0),
            "wgmma_instructions": wgmma.get((cubin_arch, name), 0),
            **facts.get((cubin_arch, name), {"ldsm": 0, "calls": 0, "loop_exit_calls": 0, "division_ops": 0,
                                             "main_loop": None}),
        })
    return records


# Instruction lines of a SASS listing: (address, opcode) with any predicate guard skipped.
_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")
_SASS_BACK_BRANCH = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?BRA\s+0x([0-9a-f]+)")
_SASS_CALL = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?CALL\.[A-Z.]*\s+0x([0-9a-f]+)")
# Opcodes of an integer division's inline sequence (reciprocal estimate and the conversions around it).
_DIVISION_OPS = ("MUFU", "I2F", "F2I")


def call_counts(function_sass: str) -> tuple[int, int]:
    """(subroutine calls, loop-exit branches) among a kernel's CALL instructions. ptxas writes some loop exits as
    `@P CALL.REL.NOINC L; BRA head; L:` — a predicated jump past the loop's back branch, nothing is called and no
    RET exists for it; every other CALL (int64 division, printf, assert, ... : an out-of-line routine) counts as a
    subroutine call."""
    ops = dict((int(a, 16), op) for a, op in _SASS_LINE.findall(function_sass))
    calls = exits = 0
    for addr, target in ((int(a, 16), int(t, 16)) for a, t in _SASS_CALL.findall(function_sass)):
        if target == addr + 0x20 and ops.get(addr + 0x10, "").startswith("BRA"):
            exits += 1
        else:
            calls += 1
    return calls, exits


def kernel_facts(function_sass: str) -> dict:
    """Whole-kernel facts of one function's SASS: {"ldsm" (ldmatrix), "calls" (subroutine calls, call_counts),
    "loop_exit_calls", "division_ops" (MUFU/I2F/F2I anywhere: an integer division's inline sequence)}."""
    opcodes = [op for _, op in _SASS_LINE.findall(function_sass)]
    calls, exits = call_counts(function_sass)
    return {"ldsm": sum(op.startswith("LDSM") for op in opcodes), "calls": calls, "loop_exit_calls": exits,
            "division_ops": sum(op.startswith(_DIVISION_OPS) for op in opcodes)}


def main_loop_mix(function_sass: str) -> dict:
    """The instruction mix of a kernel's main loop, read from its SASS: the backward branch whose body holds the
    most tensor-core (then FFMA) instructions. {"instructions", "mma" (HMMA/HGMMA), "ffma", "non_mma_per_mma",
    "division_ops" (MUFU/I2F/F2I: an integer division's inline sequence), "ldsm", "calls" (subroutine calls
    anywhere in the kernel, call_counts)}; None without a backward branch."""
    lines = [(int(a, 16), op) for a, op in _SASS_LINE.findall(function_sass)]
    best = None
    for src, dst in ((int(a, 16), int(t, 16)) for a, t in _SASS_BACK_BRANCH.findall(function_sass)):
        if dst >= src:
            continue
        body = [op for a, op in lines if dst <= a <= src]
        key = (sum(op.startswith(("HMMA", "HGMMA")) for op in body), sum(op.startswith("FFMA") for op in body))
        if best is None or key > best[0]:
            best = (key, body)
    if best is None:
        return None
    (mma, ffma), body = best
    return {"instructions": len(body), "mma": mma, "ffma": ffma,
            "non_mma_per_mma": (len(body) - mma) / mma if mma else None,
            "division_ops": sum(op.startswith(_DIVISION_OPS) for op in body),
            "ldsm": sum(op.startswith("LDSM") for op in body),
            "calls": call_counts(function_sass)[0]}


def main_loop_mixes(path: Path, arch: str | None = None) -> dict[tuple[str, str, str, str], dict]:
    """{(record arch, kernel, dtype, config): main_loop_mix} for every drn kernel of a cubin or library."""
    tool = cuobjdump_path()
    if tool is None:
        raise RuntimeError("cuobjdump not found")
    out = {}
    for cubin_arch, section in _split_by_arch(_run([tool, "-sass", str(path)]), arch):
        blocks = re.split(r"^\s*Function : (\S+)\s*$", section, flags=re.M)
        names = _demangle([blocks[i] for i in range(1, len(blocks) - 1, 2)])
        for i in range(1, len(blocks) - 1, 2):
            if cubin_arch not in ARCHS or not blocks[i].startswith("_ZN3drn"):
                continue
            mix = main_loop_mix(blocks[i + 1])
            if mix is not None:
                out[(ARCHS[cubin_arch], *_describe(names[blocks[i]]))] = mix
    return out


def cuda_records() -> list[dict]:
    """Records for the CUDA kernels, from the built extension or (without one) from nvcc-built cubins."""
    lib = _extension_library()
    if lib is not None:
        return records_from_binary(lib)
    return [r for arch, cubin in build_cubins().items() for r in records_from_binary(cubin, arch)]


if __name__ == "__main__":  # python -m drn_kernels._build.cuda_cubins
    import json

    print(json.dumps(cuda_records(), indent=1))
