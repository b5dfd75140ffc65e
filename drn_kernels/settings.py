"""Every DRN_* environment variable: the one table, one truthy rule, validated values.

Torch-free and import-free on purpose (only the standard library): setup.py loads drn_kernels/_build/config.py by
path, and that loads this file the same way, so an install-time build and the build on first use read
the same settings. Nothing else in the package reads a DRN_* variable.

Each read is fresh (the variable as it is now) and validated: a value outside the allowed ones raises ValueError
naming the variable and the values it accepts. The C++ CPU kernels never read the environment: the extension is
given cpu_options() once when it is loaded (drn_kernels._build.extension.push_cpu_options), and again by whoever
changes these variables later in the process (the tests do).

README.md's "Settings" table documents the same variables; tests/test_settings.py checks that both cover every
DRN_ name the sources read.
"""
from __future__ import annotations

import os
import warnings
from typing import NamedTuple, Optional

TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")


class Setting(NamedTuple):
    name: str
    kind: str                       # "flag", "choice", "path", "url"
    choices: tuple = ()             # allowed values of a "choice" ("" = unset = the default)
    default: object = None
    doc: str = ""
    user: bool = True               # False: for tests, benchmarks and kernel work (docs/settings.md only)


TABLE: dict[str, Setting] = {s.name: s for s in (
    # ---- building the C++ extension (setup.py and the build on first use) ----
    Setting("DRN_BUILD_CUDA", "choice", ("auto", "0", "1"), "auto",
            "which kernels the C++ extension is built with: auto: the CUDA kernels too where a GPU is visible, torch "
            "is a CUDA build and a CUDA toolkit is found, else the CPU kernels only; 0: the CPU kernels only; 1: the "
            "CUDA kernels too, even without a GPU, and an error where they cannot be built (no CUDA torch or no "
            "toolkit)"),
    Setting("DRN_FORCE_CPU", "flag", doc="deprecated, goes in the next release: DRN_BUILD_CUDA=0", user=False),
    Setting("DRN_FORCE_CUDA", "flag", doc="deprecated, goes in the next release: DRN_BUILD_CUDA=1", user=False),
    Setting("DRN_NO_JIT_BUILD", "flag", doc="never build on first use: load an up-to-date cached build or none"),
    Setting("DRN_BUILD_DIR", "path", doc="folder of the build on first use (default: the torch extensions "
                                         "folder, $TORCH_EXTENSIONS_DIR)"),
    # ---- the cpu backend's convolution (passed to the C++ kernels when the extension loads) ----
    Setting("DRN_CPU_CONV", "choice", ("auto", "winograd", "direct", "aten"), "auto",
            "auto: a fused model's 3x3 stride-1 convs with >= 64 channels in and out choose Winograd (F(4x4) or "
            "F(2x2); bfloat16 with AVX512-BF16: F(2x2)) or oneDNN's direct convolution by timing, once per "
            "machine (DRN_CHOICE_CACHE), the public op takes Winograd for float32 ones (and bfloat16 ones "
            "without AVX512-BF16), oneDNN for the rest; "
            "winograd: Winograd for every 3x3 stride-1 conv it can compute (oneDNN for the rest); direct: oneDNN "
            "only, no Winograd; aten: ATen's convolution + a fused epilogue, no oneDNN, no Winograd"),
    Setting("DRN_WINOGRAD_TILE", "choice", ("4", "2"), "4",
            "output tile side of the Winograd convolution where it is not measured: F(4x4,3x3) or F(2x2,3x3) "
            "(bfloat16 with AVX512-BF16: always 2)", user=False),
    Setting("DRN_CPU_ISA", "choice", ("best", "baseline", "avx2", "avx512"), "best",
            "which build of the cpu backend's own kernels runs — Winograd transforms and GEMM (bfloat16 GEMM: "
            "avx512 only) — capped by what the CPU has; tests and benchmarks", user=False),
    Setting("DRN_CPU_PREFETCH", "choice", ("auto", "l1", "l2"), "auto",
            "how the cpu backend's GEMM walks the packed weights: l1: k blocks of 256 whose weight slice stays "
            "in L1, the next slice prefetched into L1; l2: k blocks of 512, the next slice prefetched into L2; "
            "auto: l1 where L1d is >= 48 KB, else l2 (docs/performance/cpu.md). The speed changes, never "
            "the answer; tests and benchmarks", user=False),
    Setting("DRN_CHOICE_CACHE", "path", doc="folder of the cpu backend's algorithm-choice cache files, one per "
                                            "machine signature (default: cpu_choices/ beside the build on first "
                                            "use); off: measure in every process, keep nothing"),
    # ---- model weights ----
    Setting("DRN_WEIGHTS_MIRROR", "url", doc="base URL tried before the official one for every checkpoint: "
                                             "<base>/<file name> (`drn weights` lists the names and hashes)"),
)}

# The DRN_* names in the sources that are not environment variables: C++ macros and symbols.
NOT_SETTINGS = ("DRN_WITH_CUDA", "DRN_SIMT_HOST", "DRN_SIM_DIGEST", "DRN_SIM_DROP_MAINLOOP_SYNC", "DRN_MULTIVERSION",
                "DRN_STR", "DRN_STR_", "DRN_CAT", "DRN_CAT_", "DRN_TARGET_AVX512", "DRN_TARGET_AVX512_BF16",
                "DRN_TARGET_AVX2")


def _raw(name: str) -> str:
    return os.environ.get(name, "").strip()


def _setting(name: str) -> Setting:
    try:
        return TABLE[name]
    except KeyError:
        raise KeyError(f"{name} is not a drn_kernels setting (drn_kernels.settings.TABLE)") from None


def flag(name: str) -> bool:
    """A yes/no setting: 1/true/yes/on is yes; unset, empty, 0/false/no/off is no; anything else raises."""
    _setting(name)
    raw = _raw(name).lower()
    if raw in TRUE:
        return True
    if raw in FALSE:
        return False
    raise ValueError(f"{name} must be one of {', '.join(TRUE)} (yes) or {', '.join(FALSE[1:])} or unset (no), "
                     f"got {os.environ.get(name)!r}")


def choice(name: str) -> str:
    """A setting with a fixed set of values; unset or empty is the default."""
    s = _setting(name)
    raw = _raw(name).lower()
    if raw == "":
        return s.default
    if raw not in s.choices:
        raise ValueError(f"{name} must be one of {', '.join(s.choices)} (or unset), got {os.environ.get(name)!r}")
    return raw


def path(name: str) -> Optional[str]:
    _setting(name)
    return _raw(name) or None


def url(name: str) -> Optional[str]:
    """A base URL: http://, https:// or file:// (unset: None); a trailing / is dropped."""
    _setting(name)
    raw = _raw(name)
    if raw == "":
        return None
    if not raw.startswith(("http://", "https://", "file://")):
        raise ValueError(f"{name} must be a URL starting with http://, https:// or file:// (or unset), "
                         f"got {os.environ.get(name)!r}")
    return raw.rstrip("/")


def value(name: str):
    """The setting `name` as its kind reads it (flag: bool, choice: str, path/url: str|None)."""
    if name == "DRN_BUILD_CUDA":
        return build_cuda()  # the deprecated flags included
    kind = _setting(name).kind
    return {"flag": flag, "choice": choice, "path": path, "url": url}[kind](name)


# The build flags DRN_BUILD_CUDA replaced, and the value each one asks for; read for one more release.
DEPRECATED_BUILD_FLAGS = {"DRN_FORCE_CPU": "0", "DRN_FORCE_CUDA": "1"}


class DeprecatedSettingWarning(DeprecationWarning):
    """A deprecated DRN_* variable is set. Shown by default (a plain DeprecationWarning is not, outside __main__):
    whoever sets a variable is the user it is meant for."""


warnings.simplefilter("default", DeprecatedSettingWarning)
_warned: set = set()


def build_cuda() -> str:
    """DRN_BUILD_CUDA: "auto", "0" or "1" (the table says what each builds). The deprecated DRN_FORCE_CPU=1 still
    reads as 0 (before DRN_BUILD_CUDA, as it did) and DRN_FORCE_CUDA=1 as 1, with one DeprecatedSettingWarning per
    variable and process naming DRN_BUILD_CUDA; asking for 0 and 1 at once raises ValueError naming both."""
    mode = choice("DRN_BUILD_CUDA")
    asked = {}
    for old, new in DEPRECATED_BUILD_FLAGS.items():
        if _raw(old) == "":
            continue
        if old not in _warned:
            _warned.add(old)
            warnings.warn(f"{old} is deprecated and goes in the next release: set DRN_BUILD_CUDA={new} instead",
                          DeprecatedSettingWarning, stacklevel=2)
        if flag(old):
            asked[old] = new
    if "DRN_FORCE_CPU" in asked:
        if "DRN_FORCE_CUDA" in asked:
            raise ValueError("DRN_FORCE_CPU=1 and DRN_FORCE_CUDA=1 ask for opposite builds: set DRN_BUILD_CUDA "
                             "(auto, 0 or 1) alone")
        return "0"
    if "DRN_FORCE_CUDA" in asked:
        if mode == "0":
            raise ValueError("DRN_FORCE_CUDA=1 and DRN_BUILD_CUDA=0 ask for opposite builds: set DRN_BUILD_CUDA "
                             "alone")
        return "1"
    return mode


def check_all() -> dict:
    """Every setting read and validated: {name: value}; raises on the first bad one."""
    return {name: value(name) for name in TABLE}


# A test hook, not a setting: True fills the Winograd output with NaN before the kernel writes it, so an element the
# kernel leaves unwritten shows. The tests set it (and push the options); nothing in the package does.
_poison_outputs = False


class CpuOptions(NamedTuple):
    """What the C++ CPU kernels are told (drn_kernels._C.set_cpu_options takes the integer codes)."""
    conv: str            # DRN_CPU_CONV
    winograd_tile: int   # DRN_WINOGRAD_TILE
    isa: str             # DRN_CPU_ISA
    poison: bool         # _poison_outputs (a test hook, not a setting)
    prefetch: str        # DRN_CPU_PREFETCH

    def codes(self) -> tuple[int, int, int, bool, int]:
        """(conv, tile, isa, poison, prefetch) as csrc/cpu/cpu_options.h numbers them."""
        conv = TABLE["DRN_CPU_CONV"].choices.index(self.conv)
        isa = TABLE["DRN_CPU_ISA"].choices.index(self.isa) - 1   # -1 = best, 0 baseline, 1 avx2, 2 avx512
        prefetch = TABLE["DRN_CPU_PREFETCH"].choices.index(self.prefetch)  # 0 auto, 1 l1, 2 l2
        return conv, self.winograd_tile, isa, self.poison, prefetch


def cpu_options() -> CpuOptions:
    return CpuOptions(choice("DRN_CPU_CONV"), int(choice("DRN_WINOGRAD_TILE")), choice("DRN_CPU_ISA"),
                      _poison_outputs, choice("DRN_CPU_PREFETCH"))


def markdown_table(user: bool | None = None) -> str:
    """A table of settings made from TABLE: the user settings (user=True: the README's), the others (False:
    docs/settings.md's), or all (None)."""
    rows = ["| Variable | Values | Meaning |", "|---|---|---|"]
    for s in TABLE.values():
        if user is not None and s.user != user:
            continue
        values = {"flag": "1/true/yes/on; unset, 0/false/no/off",
                  "path": "a path; unset", "url": "a base URL (http, https, file); unset"}.get(s.kind)
        values = values or " \\| ".join(f"`{c}`" + (" (default)" if c == s.default else "") for c in s.choices)
        rows.append(f"| `{s.name}` | {values} | {s.doc} |")
    return "\n".join(rows)


def _replace_table(text: str, table: str, nth: int = 0) -> str:
    """`text` with its nth markdown table headed like markdown_table's replaced by `table`."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("| Variable | Values | Meaning |")]
    start = starts[nth]
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[start:end] = table.split("\n")
    return "\n".join(lines)


def write_docs(root: str) -> None:
    """Regenerate the settings tables in root/README.md (user settings) and root/docs/settings.md (user, then
    the others)."""
    readme, page = os.path.join(root, "README.md"), os.path.join(root, "docs", "settings.md")
    with open(readme) as f:
        text = _replace_table(f.read(), markdown_table(user=True))
    with open(readme, "w") as f:
        f.write(text)
    with open(page) as f:
        text = _replace_table(_replace_table(f.read(), markdown_table(user=True)), markdown_table(user=False), 1)
    with open(page, "w") as f:
        f.write(text)


if __name__ == "__main__":  # python -m drn_kernels.settings [--write]: print (or write into the docs) the tables
    import sys

    if sys.argv[1:] == ["--write"]:
        write_docs(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    else:
        print(markdown_table(user=True), markdown_table(user=False), sep="\n\n")
