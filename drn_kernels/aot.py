"""Static resource report of the GPU kernels without a GPU: `python -m drn_kernels.aot [--json]`.

("aot": every kernel is compiled ahead of time for sm_80 and sm_90, only to read the artifacts; nothing compiled
here is used to run a kernel.)

Every Triton kernel x autotune config x dtype is compiled for sm_80 and sm_90 through triton.compile(ASTSource,
target=GPUTarget("cuda", 80|90, 32)), which needs no GPU. From each artifact we read
  registers / spill bytes  ptxas -v on the compiled PTX, with the flags triton itself passes to ptxas
  shared_bytes             metadata.shared (dynamic shared memory)
  tensor_core_instructions HMMA + HGMMA lines in the SASS (cuobjdump -sass of the cubin; both ship with triton)
  wgmma_instructions       HGMMA lines alone (sm_90 warpgroup MMA)
The CUDA extension's records come from drn_kernels._build.cuda_cubins.cuda_records(); they add, per kernel, ldmatrix
(LDSM), subroutine CALL and integer-division instruction counts and the main loop's instruction mix (non-MMA
instructions per HMMA), which the proof checks for the conv.

Kernels are compiled for the channels_last specialisation a fused model launches (unit channel stride) with
16-byte-aligned pointers, as triton's JIT would specialise them. TRITON_INTERPRET must be unset in this process
(the kernels must be real JITFunctions): the CLI clears it before importing them; tests run this in a subprocess.

Subsets for quick checks: --kernels, --dtypes, --arches, --max-configs (the test uses them).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Iterable, Optional

ARCHES = ("sm_80", "sm_90")
DTYPES = ("fp16", "bf16", "fp32")
SHARED_LIMITS = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}  # opt-in dynamic shared memory per block
KERNELS = ("conv_bn_act", "class_head", "upsample_argmax", "box")


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _ptxas_stats(ptx: str, capability: int) -> tuple[int, int]:
    """(registers, spill bytes = stores + loads) from ptxas -v, run with the options triton uses."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [_tool("ptxas"), "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(capability)}", src, "-o", os.path.join(tmp, "k.cubin")]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    if regs is None or stores is None or loads is None:
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    return int(regs.group(1)), int(stores.group(1)) + int(loads.group(1))


def _tensor_core_counts(cubin: bytes) -> tuple[int, int]:
    """(HMMA + HGMMA, HGMMA) instruction lines in the cubin's SASS: tensor-core instructions, and of those the
    sm_90 warpgroup ones (wgmma)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        sass = subprocess.run([_tool("cuobjdump"), "-sass", path], check=True, capture_output=True,
                              text=True).stdout
    return len(re.findall(r"\b(?:HMMA|HGMMA)\.", sass)), len(re.findall(r"\bHGMMA\.", sass))


# ---- what to compile ----------------------------------------------------------------------------------------

_TL = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}
_ELT = {"fp16": 2, "bf16": 2, "fp32": 4}  # bytes per element
_CONV_ALWAYS_ALIGNED = ["K", "srn", "srp", "srq"]  # output channels (and so the residual's strides): multiples of 16


def _conv_variants(flat: bool):
    """(label, constexprs[, 16-aligned ints]) of conv_bn_act compiled per config: the int32 and int64 paths, and
    for fp32 both TF32 and exact dot; all with the full epilogue (residual + ReLU). FLAT (C < 32, not a multiple
    of 8) has its own config list. The vector path is compiled as a channels_last launch with C_VEC = 8 twice:
    with C and the strides multiples of 16 (what triton's JIT specialises for DRN's channel counts) and, int32
    only, with nothing known of them (C = 24 or 40: the kernel itself proves 8-element alignment)."""
    return lambda dtype: _conv_variant_list(dtype, flat)


def _conv_variant_list(dtype: str, flat: bool):
    precisions = ("tf32", "ieee") if dtype == "fp32" else ("tf32",)
    for prec in precisions:
        for int64 in (False, True):
            label = f"FLAT={int(flat)},INT64={int(int64)},DOT={prec}"
            yield label, dict(HAS_RES=True, RELU=True, FLAT=flat, USE_INT64=int64, DOT_PRECISION=prec,
                              DOT_IN_FP32=False, C_VEC=1 if flat else 8)
        if not flat:
            yield (f"FLAT=0,INT64=0,DOT={prec},C%16!=0",
                   dict(HAS_RES=True, RELU=True, FLAT=False, USE_INT64=False, DOT_PRECISION=prec, DOT_IN_FP32=False,
                        C_VEC=8), _CONV_ALWAYS_ALIGNED)


def _head_variants(dtype: str):
    import torch

    from .triton.common import precision_exact_fp32

    prec = precision_exact_fp32({"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
    for label, argmax, logits, partial in (("class_head", True, False, False), ("low_res_logits", False, True, False),
                                           ("localize", True, False, True)):
        yield f"MODE={label}", dict(ARGMAX=argmax, WRITE_LOGITS=logits, PARTIAL_SUMS=partial, USE_INT64=False,
                                    DOT_PRECISION=prec, DOT_IN_FP32=False)


def _specs(kernels: Optional[Iterable[str]]):
    """(kernel name, JITFunction, configs [(meta, num_warps, num_stages)], dtypes, variants(dtype), signature(dtype),
    aligned(flags) = the int arguments specialised as multiples of 16)."""
    from .triton import class_head as head_mod
    from .triton import conv_bn_act as conv_mod

    def cfgs(configs):
        return [(dict(c.kwargs), c.num_warps, c.num_stages) for c in configs]

    def conv_sig(dt):
        sig = {a: f"*{_TL[dt]}" for a in ("x_ptr", "w_ptr", "b_ptr", "res_ptr", "y_ptr")}
        sig.update({a: "i32" for a in ("M", "C", "H", "W", "K", "P", "Q", "R", "S", "sxn", "sxh", "sxw", "srn",
                                        "srp", "srq", "stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w",
                                        "M_BUCKET")})
        return sig, {"sxc": 1, "srk": 1, "sb": 1}

    def conv_aligned(flags):
        # DRN channel counts are multiples of 16 except the stems' C=3 (the FLAT variant), and triton's JIT
        # specialises such ints as divisible by 16: the same here, so channel-contiguous loads vectorise.
        return _CONV_ALWAYS_ALIGNED if flags["FLAT"] else _CONV_ALWAYS_ALIGNED + ["C", "sxn", "sxh", "sxw"]

    def head_sig(dt):
        sig = {"x_ptr": f"*{_TL[dt]}", "w_ptr": f"*{_TL[dt]}", "b_ptr": f"*{_TL[dt]}", "labels_ptr": "*i64",
               "probs_ptr": "*fp32", "logits_ptr": "*fp32", "partial_ptr": "*fp32"}
        sig.update({a: "i32" for a in ("HW", "W", "C", "K", "sxn", "sxh", "sxw", "swk", "PIX_BUCKET")})
        return sig, {"sxc": 1, "swc": 1, "sbk": 1}

    def head_aligned(flags):
        return ["C", "sxn", "sxh", "sxw", "swk"]  # feature channels (512 in DRNs) are multiples of 16

    def upsample_sig(dt):
        return {"logits_ptr": "*fp32", "labels_ptr": "*i64", "probs_ptr": "*fp32", "h": "i32", "w": "i32",
                "K": "i32", "PIX_BUCKET": "i32"}, {}

    def box_sig(dt):
        return {"labels_ptr": "*i64", "scores_ptr": "*fp32", "top1_ptr": "*i64", "boxes_ptr": "*fp32",
                "HW": "i32", "W": "i32", "threshold": "fp32", "stride": "i32"}, {}

    specs = []
    for flat in (False, True):
        for fp32 in (False, True):
            specs.append(("conv_bn_act", conv_mod.conv_bn_act_kernel, cfgs(conv_mod.config_list(flat, fp32)),
                          ("fp32",) if fp32 else ("fp16", "bf16"), _conv_variants(flat), conv_sig, conv_aligned))
    specs += [
        ("class_head", head_mod.class_head_kernel, cfgs(head_mod.HEAD_CONFIGS), ("fp16", "bf16"), _head_variants,
         head_sig, head_aligned),
        ("class_head", head_mod.class_head_kernel, cfgs(head_mod.HEAD_FP32_CONFIGS), ("fp32",), _head_variants,
         head_sig, head_aligned),
        ("upsample_argmax", head_mod.upsample_argmax_kernel, cfgs(head_mod.UPSAMPLE_CONFIGS), ("fp32",),
         lambda dt: [("", dict(USE_INT64=False))], upsample_sig, lambda flags: ["K"]),
        ("box", head_mod.box_kernel, [(dict(head_mod.BOX_CONFIG), 4, 1)], ("fp32",), lambda dt: [("", {})],
         box_sig, lambda flags: []),
    ]
    return [s for s in specs if kernels is None or s[0] in kernels]


def _compile_one(fn, signature: dict, constexprs: dict, aligned: list, capability: int, num_warps: int,
                 num_stages: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature)
    for name in constexprs:
        sig[name] = "constexpr"
    ordered = {a: sig[a] for a in fn.arg_names}  # the JITFunction's argument order
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if ordered[a].startswith("*") or a in aligned}
    src = ASTSource(fn=fn, signature=ordered, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def records(arches=ARCHES, dtypes=None, kernels=None, max_configs: Optional[int] = None) -> list[dict]:
    """One record per Triton kernel x config x dtype x arch (see the module docstring)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("drn_kernels.aot needs real JITFunctions: run it with TRITON_INTERPRET unset "
                           "(python -m drn_kernels.aot clears it itself)")
    from .triton.conv_bn_act import int64_allowed as conv_int64_allowed

    out = []
    for name, fn, configs, kernel_dtypes, variants, signature, aligned in _specs(kernels):
        for meta, num_warps, num_stages in configs[:max_configs]:
            for dt in kernel_dtypes:
                if dtypes is not None and dt not in dtypes:
                    continue
                sig, fixed = signature(dt)
                for label, flags, *aligned_ints in variants(dt):
                    if name == "conv_bn_act" and flags["USE_INT64"] and not conv_int64_allowed(meta, _ELT[dt]):
                        continue  # a tile the launcher never runs with int64 offsets
                    aligned_ints = aligned_ints[0] if aligned_ints else aligned(flags)
                    for arch in arches:
                        capability = int(arch.split("_")[1])
                        compiled = _compile_one(fn, sig, {**fixed, **flags, **meta}, aligned_ints, capability,
                                                num_warps, num_stages)
                        regs, spills = _ptxas_stats(compiled.asm["ptx"], capability)
                        tensor_core, wgmma = _tensor_core_counts(compiled.asm["cubin"])
                        config = ",".join([f"{k}={v}" for k, v in meta.items()]
                                          + [f"warps={num_warps}", f"stages={num_stages}"] + ([label] if label else []))
                        out.append({"source": "triton", "kernel": name, "arch": arch, "dtype": dt, "config": config,
                                    "registers": regs, "spill_bytes": spills,
                                    "shared_bytes": int(compiled.metadata.shared),
                                    "tensor_core_instructions": tensor_core, "wgmma_instructions": wgmma})
    return out


def cuda_records() -> list[dict]:
    from ._build import cuda_cubins

    return list(cuda_cubins.cuda_records())


# Kernels that hold a GEMM and so must use tensor cores at 16-bit. The others are epilogues without one:
# Triton's upsample_argmax and box, CUDA's class_head_pixel_kernel (its low-res logits come from the CUDA
# conv_bn_act_kernel's GEMM) and localize_image_kernel (per-image means and box).
GEMM_KERNELS = {("triton", "conv_bn_act"), ("triton", "class_head"), ("cuda", "conv_bn_act_kernel")}


# CUDA kernels whose main loop must be free of subroutine calls and division, with ldmatrix fragment loads at 16 bit.
CUDA_MAIN_LOOP_KERNELS = {("cuda", "conv_bn_act_kernel")}


def problems(recs: list[dict]) -> list[str]:
    """What the static proof requires of every record; empty when all hold."""
    bad = []
    for r in recs:
        where = f"{r['source']}:{r['kernel']} {r['arch']} {r['dtype']} [{r['config']}]"
        if r["spill_bytes"] != 0:
            bad.append(f"{where}: {r['spill_bytes']} spill bytes")
        limit = SHARED_LIMITS.get(r["arch"])
        if limit is not None and r["shared_bytes"] > limit:
            bad.append(f"{where}: {r['shared_bytes']} shared bytes > {limit}")
        gemm = (r["source"], r["kernel"]) in GEMM_KERNELS
        if gemm and r["dtype"] in ("fp16", "bf16") and r["tensor_core_instructions"] == 0:
            bad.append(f"{where}: no HMMA/HGMMA in the SASS")
        if (r["source"], r["kernel"]) in CUDA_MAIN_LOOP_KERNELS:
            if r["dtype"] in ("fp16", "bf16") and r.get("ldsm", 0) == 0:
                bad.append(f"{where}: no LDSM (ldmatrix) in the SASS")
            if r.get("calls", 0) != 0:
                bad.append(f"{where}: {r['calls']} CALL to a subroutine")
            if r.get("division_ops", 0) != 0:
                bad.append(f"{where}: {r['division_ops']} integer-division instructions (MUFU/I2F/F2I)")
    return bad


def _non_mma_per_mma(r: dict) -> str:
    mix = r.get("main_loop")
    return "" if not mix or mix.get("non_mma_per_mma") is None else f"{mix['non_mma_per_mma']:.2f}"


def _table(recs: list[dict]) -> str:
    cols = ("source", "kernel", "arch", "dtype", "registers", "spill_bytes", "shared_bytes",
            "tensor_core_instructions", "wgmma_instructions", "ldsm", "calls", "division_ops", "non_mma_per_mma",
            "config")
    rows = [[_non_mma_per_mma(r) if c == "non_mma_per_mma" else str(r.get(c, "")) for c in cols] for r in recs]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main(argv=None, prog: str = "python -m drn_kernels.aot") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the records as one JSON list on stdout")
    parser.add_argument("--arches", nargs="+", default=list(ARCHES), choices=ARCHES)
    parser.add_argument("--dtypes", nargs="+", default=None, choices=DTYPES)
    parser.add_argument("--kernels", nargs="+", default=None, choices=KERNELS)
    parser.add_argument("--max-configs", type=int, default=None, help="only the first N configs of each kernel")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA extension's records")
    parser.add_argument("--no-triton", action="store_true", help="only the CUDA extension's records")
    args = parser.parse_args(argv)
    recs = [] if args.no_triton else records(tuple(args.arches), args.dtypes, args.kernels, args.max_configs)
    if not args.no_cuda:
        recs += cuda_records()
    bad = problems(recs)
    if args.json:
        print(json.dumps(recs))
    else:
        print(_table(recs))
        print(f"\n{len(recs)} records; " + ("all hold: 0 spills, tensor cores, shared memory within limits; the "
                                            "CUDA conv: ldmatrix, no CALL, no integer division"
                                           if not bad else f"{len(bad)} problems:"))
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # before any kernel module (and so triton's JIT) is imported
    sys.exit(main())
