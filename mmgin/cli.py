"""The launcher: flags → gin → the configured program → run.

    python launch.py --gin_file=gin/small_16k.gin --gin_param="Train.batch_size = 64"
    torchrun --standalone --nproc_per_node=8 launch.py --gin_file=gin/large_44k.gin

Config mistakes (unknown names, misspelt parameters, missing includes, include loops, required
values left unset, macros set but never used) stop the run before any work with a one-paragraph
message naming the file and line or the --gin_param, instead of a traceback (exit status 2).
Errors mmgin raises on purpose while building or running (a store, table, checkpoint, weights
file or media file that cannot be used, a full disk, a non-finite loss, an output directory
another run holds, a bad setting) are one `mmgin:` line too (exit status 1); `--traceback`
adds the traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import importlib.util  # noqa: F401  (gin 0.5 needs it loaded to report missing includes)
import linecache
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Sequence

import gin
from absl import app, flags, logging

import mmgin
from mmgin import config_record, dist
from mmgin.data.store import StoreError
from mmgin.data.tsv import TableError
from mmgin.eval.cache import CacheFormatError
from mmgin.eval.embedders import EmbeddingModelsUnavailable
from mmgin.io import DiskFullError
from mmgin.media.errors import MediaError
from mmgin.programs.base import Program, claimed
from mmgin.run_lock import OutputLockedError
from mmgin.train.checkpoint import CheckpointError
from mmgin.train.trainer import NonFiniteError
from mmgin.weights import WeightsError

REPO_ROOT = Path(__file__).resolve().parents[1]

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin file to parse; repeatable, later files win.")
flags.DEFINE_multi_string("gin_param", [], "Gin binding applied after all files; repeatable.")
flags.DEFINE_multi_string(
    "gin_search_path", [str(REPO_ROOT)], "Folders searched for --gin_file and include paths."
)
flags.DEFINE_bool("dry_run", False, "Parse, build the program as a real run would (network, "
                  "optimizer, loaders), print the operative config, exit; writes nothing.")
flags.DEFINE_bool("allow_dynamic_registration", False,
                  "Let --dry_run build a config that uses `from __gin__ import dynamic_registration` "
                  "(such a config can call any Python function while it is built).")
flags.DEFINE_bool("traceback", False, "Print the traceback of mmgin's own errors too, not only "
                  "their `mmgin:` line.")

# Errors mmgin raises on purpose, also where a library re-raises them (a DataLoader worker's).
DELIBERATE = (StoreError, TableError, CheckpointError, WeightsError, MediaError, DiskFullError,
              NonFiniteError, CacheFormatError, EmbeddingModelsUnavailable, OutputLockedError)
MMGIN_DIR = Path(mmgin.__file__).resolve().parent


class ConfigError(Exception):
    """A configuration mistake the user can fix; printed without a traceback."""


@gin.configurable
def launch(program=gin.REQUIRED, device: str = "auto"):
    """The launcher's root binding: `launch.program = @Train()` picks what runs.

    `device` is 'auto' (CUDA when present), 'cpu' or 'cuda'; it is read before the program is
    built, to join the process group on the right backend.
    """
    del device
    return program


def resolve_gin_file(name: str, search_path: Sequence[str]) -> Path:
    """A --gin_file relative to the working directory, else to each search-path entry."""
    candidates = [Path(name)] + [Path(root) / name for root in search_path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"--gin_file={name} not found (tried {tried}). Check the path.")


def _required_macros() -> list[str]:
    """Macros still set to %gin.REQUIRED after parsing (gin itself reports only the first)."""
    config = gin.config._CONFIG  # pylint: disable=protected-access
    return sorted(name for (name, selector), params in config.items()
                  if selector == "gin.macro" and str(params.get("value")) == "%gin.REQUIRED")


def _macros() -> tuple[set[str], set[str]]:
    """Macros the parsed config sets, and macros a binding or another macro refers to.

    Gin 0.5 keeps a macro as the binding (name, 'gin.macro') in its config and a `%NAME` as a
    reference to its `macro` configurable anywhere inside a bound value (lists, dicts, tuples).
    """
    config = gin.config._CONFIG  # pylint: disable=protected-access
    defined = {name for name, selector in config if selector == "gin.macro"}
    references = gin.config.iterate_references(config, to=gin.config.get_configurable(gin.config.macro))
    return defined, {reference.config_key[0] for reference in references}


def _refuse_unused_macros(record: config_record.ParsedConfig) -> None:
    """A macro nothing refers to is almost always misspelt (GT_CAHCE) and would be ignored."""
    defined, referenced = _macros()
    problems = []
    for name in sorted(defined - referenced):
        where = record.where_set(name)
        at = f" (set in {', '.join(where)})" if where else ""
        nearest = difflib.get_close_matches(name, sorted(referenced), n=1)
        hint = f"did you mean {nearest[0]}?" if nearest else f"nothing refers to %{name}; remove it"
        problems.append(f"macro {name} is set but never used{at}; {hint}")
    if problems:
        raise ConfigError(" ".join(problems))


def parse(files: Sequence[str], params: Sequence[str], search_path: Sequence[str]) -> None:
    """Parses files then params into gin's global config, turning mistakes into ConfigError."""
    import mmgin.programs  # noqa: F401  (registers every configurable before parsing)

    gin.clear_config()
    for root in search_path:
        gin.add_config_file_search_path(root)
    resolved = [resolve_gin_file(f, search_path) for f in files]
    record = config_record.ParsedConfig(resolved, list(params), [Path(p) for p in search_path])
    loop = record.include_loop()
    if loop:
        raise ConfigError(f"include loop: {' -> '.join(map(str, loop))}; remove one of these includes")
    for path in resolved:
        try:
            gin.parse_config_file(str(path))
        except (ValueError, KeyError, TypeError, OSError, SyntaxError, AttributeError) as e:
            raise ConfigError(f"in {path}: {e}") from None
    for param in params:
        try:
            gin.parse_config(param)
        except (ValueError, KeyError, TypeError, SyntaxError, AttributeError) as e:
            raise ConfigError(f"in --gin_param={param!r}: {e}") from None
    _refuse_unused_macros(record)
    missing = _required_macros()
    if missing:
        how = " ".join(f"--gin_param=\"{m} = ...\"" for m in missing)
        raise ConfigError(f"required values not set: {', '.join(missing)}. Set them with {how}")
    try:
        gin.finalize()
    except ValueError as e:
        raise ConfigError(_short(str(e))) from None
    config_record.set_current(record)


def _short(message: str) -> str:
    """Gin appends the whole config to some messages; keep the part that says what is wrong."""
    head = message.split(" in config string:")[0]
    return head.replace("/gin.macro", " (macro: define it or pass --gin_param)")


def refuse_dynamic_registration() -> None:
    """A dry run checks a config before trusting it: one that may call any function is refused."""
    for statement in gin.config._IMPORTS:  # pylint: disable=protected-access
        if statement.module == "__gin__.dynamic_registration":
            place = statement.location
            where = f"{place.filename}:{place.line_num}" if place.filename else "a --gin_param"
            raise ConfigError(
                f"{where} enables `from __gin__ import dynamic_registration`, with which a gin file "
                "can call any Python function, also while --dry_run builds it. Pass "
                "--allow_dynamic_registration if you trust every file and parameter given"
            )


def _configured_device() -> str:
    try:
        return gin.query_parameter("launch.device")
    except ValueError:
        return "auto"


def build():
    """Constructs the configured program and builds it (`Program.build`: everything the run
    would build before its first step, the output directory untouched); missing required
    parameters become ConfigError."""
    try:
        program = launch()
        if isinstance(program, Program):
            program.build()
        return program
    except RuntimeError as e:
        if "Required bindings" in str(e) or "not provided in config" in str(e):
            raise ConfigError(str(e).split("\n")[0]) from None
        raise


def run(files: Sequence[str], params: Sequence[str], search_path: Sequence[str], dry_run: bool,
        allow_dynamic_registration: bool = False) -> int:
    """Parses, builds and runs the program; a dry run builds it as a real run would, prints its
    operative config and writes nothing anywhere (it may point at a live run's directory)."""
    parse(files, params, search_path)
    if dry_run and not allow_dynamic_registration:
        refuse_dynamic_registration()
    with dist.session(_configured_device()):
        program = build()
        if dry_run:
            if dist.is_main():
                print(gin.operative_config_str())
            return 0
        with claimed(program):
            program.run()
    return 0


def _raised_by_mmgin(error: BaseException) -> bool:
    """True when a `raise` statement in mmgin's code raised ``error`` (a bad setting, a missing
    input): the innermost frame of its traceback is that statement."""
    frame = error.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    file = Path(frame.tb_frame.f_code.co_filename).resolve()
    line = linecache.getline(str(file), frame.tb_lineno).strip()
    return MMGIN_DIR in file.parents and line.startswith("raise ")


_IN_CALL = re.compile(r"\n  In call to configurable '([^']+)' \(.*?\)(?: in scope '([^']+)')?")


def short_message(error: BaseException) -> str:
    """The error's own message, gin's "In call to configurable" lines condensed to the chain of
    configurables it passed through (outermost first)."""
    text = str(error)
    calls = [f"{scope}/{name}" if scope else name for name, scope in _IN_CALL.findall(text)]
    head = _IN_CALL.split(text, maxsplit=1)[0].rstrip()
    return f"{head} (in {' > '.join(reversed(calls))})" if calls else head


def _report(error: BaseException, prefix: str) -> None:
    if FLAGS.traceback:
        traceback.print_exception(error, file=sys.stderr)
    rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"mmgin: {rank}{prefix}{short_message(error)}", file=sys.stderr)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.gin_file and not FLAGS.gin_param:
        raise app.UsageError("give at least one --gin_file (see README.md)")
    logging.set_verbosity(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    try:
        code = run(FLAGS.gin_file, FLAGS.gin_param, FLAGS.gin_search_path, FLAGS.dry_run,
                   FLAGS.allow_dynamic_registration)
    except ConfigError as e:
        _report(e, "config error: ")
        sys.exit(2)
    except Exception as e:  # noqa: BLE001  (mmgin's own errors: one line; bugs: re-raised)
        if not (isinstance(e, DELIBERATE) or _raised_by_mmgin(e)):
            raise
        _report(e, "")
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: checkpoints and extraction progress stay; no traceback
        print("mmgin: interrupted; run the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)


def console_main() -> None:
    app.run(main)
